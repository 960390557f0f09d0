"""NM whole-body instances → a :class:`~dicomnode.segmentation.scan.BoneScan`: the pixel loader.

The views are decided from the headers by :func:`dicomnode.segmentation.viewrules.decide_views` (no
pixel read); this module decodes the decided frames, applies Rescale Slope / Intercept (PS3.3
C.7.6.16.2.11) and turns each into the canonical orientation. The worker, `dicomnode segment` and
training all load scans through :func:`load_scan`; docs/dicom.md, "Views", has the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from os import PathLike

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.segmentation.scan import BoneScan, View, ViewError, ViewImage
from dicomnode.segmentation.viewrules import decide_views, frame_count

__all__ = ["UndecodablePixels", "ViewError", "frame_stack", "load_scan", "load_scan_files"]


class UndecodablePixels(ViewError):
    """Pixel Data (7FE0,0010) that cannot be decoded, as opposed to attributes that do not fit together."""


def load_scan_files(paths: Iterable[str | PathLike[str]]) -> BoneScan:
    """Read DICOM files and return their :class:`BoneScan` (see :func:`load_scan`)."""
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError) as exc:
            raise ViewError(f"{path}: not a readable DICOM file ({exc})") from exc
    return load_scan(datasets)


def load_scan(datasets: Sequence[Dataset]) -> BoneScan:
    """Turn the NM Image Storage instances of one study into a :class:`BoneScan`.

    Raises :class:`ViewError` for input that cannot be read: the header rules' refusals
    (:func:`~dicomnode.segmentation.viewrules.decide_views`) and pixel data that does not fit them.
    """
    decided = decide_views(datasets)
    stacks: dict[int, np.ndarray] = {}  # one decode per instance, whatever its number of views
    images: dict[View, ViewImage] = {}
    for view in decided.views:
        stack = stacks.get(id(view.dataset))
        if stack is None:
            stack = stacks[id(view.dataset)] = frame_stack(view.dataset)
        images[view.view] = ViewImage(
            view=view.view,
            counts=view.source.to_canonical(stack[view.source.frame_number - 1]),
            pixel_spacing=view.pixel_spacing,
            source=view.source,
        )
    return BoneScan(
        study_instance_uid=decided.study_instance_uid,
        anterior=images.get(View.ANTERIOR),
        posterior=images.get(View.POSTERIOR),
        notes=decided.notes,
    )


def frame_stack(ds: Dataset) -> np.ndarray:
    """The instance's frames as a (frames, rows, columns) float32 stack of counts, rescaled.

    Native Pixel Data must hold exactly Rows × Columns × Number of Frames × Bits Allocated (one pad
    byte allowed, PS3.5 §7.1.1); what cannot be decoded is :class:`UndecodablePixels`.
    """
    uid = ds.SOPInstanceUID
    n_frames = frame_count(ds)
    if not ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian).is_compressed:
        expected = ds.Rows * ds.Columns * n_frames * ((int(ds.BitsAllocated) + 7) // 8)
        actual = len(ds.PixelData)
        if actual not in (expected, expected + 1):  # one pad byte to an even length, PS3.5 7.1.1
            raise ViewError(
                f"instance {uid}: Pixel Data (7FE0,0010) holds {actual} bytes but Rows {ds.Rows} x "
                f"Columns {ds.Columns} x Number of Frames {n_frames} x Bits Allocated "
                f"{ds.BitsAllocated} needs {expected}"
            )
    try:
        array = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise UndecodablePixels(f"instance {uid}: Pixel Data (7FE0,0010) cannot be decoded ({exc})") from exc
    stack = np.asarray(array, dtype=np.float32).reshape(n_frames, ds.Rows, ds.Columns)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if (slope, intercept) != (1.0, 0.0):
        stack = stack * np.float32(slope) + np.float32(intercept)
    return np.ascontiguousarray(stack, dtype=np.float32)
