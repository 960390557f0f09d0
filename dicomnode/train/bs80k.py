"""Readers for the two BS-80K formats (Huang et al., "BS-80K: The first large open-access dataset of
bone scan images", Comput Biol Med 151:106221, 2022), for training and evaluation only.

- **Whole-body** folders (:func:`load_wholebody_folder`): ``<id>/<id>_<date>.dcm``, one instance of
  two 1024 × 256 frames (anterior, then posterior as stored, seen from behind), values 0–255 (the
  images went through 8-bit PNG), with Pascal VOC boxes ``<id>_<date>_ant.xml`` /
  ``<id>_<date>_post.xml`` on the stored frame of each view. The headers are incomplete (no SOP
  Class UID, private ``99LOCAL`` view codes ``AN`` / ``PO``, birth date ``00000101``), so the file is
  read as training data and never through the receiver's rules (:mod:`dicomnode.segmentation.views`), which
  rightly refuse it. Labels come from the boxes by :mod:`dicomnode.train.weak`.
- **Crop** folders (:func:`load_crop_folder`): ``<view folder>/<n>.jpg`` 8-bit right-hemithorax crops
  of about 150–170 × 55–70 pixels at the whole-body scans' native spacing, and
  ``<view folder>/<view folder>.txt`` with ``<file><TAB><label>`` (1 abnormal, 0 normal). The view
  folder's name ends in ``ANT`` or ``POST``; the same ``<n>`` in both folders is the same patient, so
  ``<n>`` is the patient for the split.

Nothing here is a patient identifier beyond the data set's own pseudonymous IDs.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import NuclearMedicineImageStorage

from dicomnode.segmentation.scan import BoneScan, View, ViewImage, ViewRule, ViewSource

from .study import LabelledStudy
from .weak import ABNORMAL, NORMAL, Box, WeakLabelRules, weak_labels


log = logging.getLogger(__name__)

BS80K_SPACING_MM = 2.3976  # the whole-body scans' Pixel Spacing; crops are cut at the same spacing
_VIEW_SUFFIX = {View.ANTERIOR: "ant", View.POSTERIOR: "post"}
_LOCAL_CODES = {"AN": View.ANTERIOR, "PO": View.POSTERIOR}


class BS80KError(ValueError):
    """A BS-80K file that cannot be used as training data; the message says which and why."""


def read_voc_boxes(path: Path) -> tuple[Box, ...]:
    """The ``Abnormal`` / ``Normal`` boxes of one Pascal VOC file (other object names are refused)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise BS80KError(f"{path.name}: not a readable Pascal VOC file ({exc})") from None
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BS80KError(f"{path.name}: object {name!r} has no bndbox")
        try:
            corners = [int(round(float(bndbox.findtext(key) or ""))) for key in ("ymin", "xmin", "ymax", "xmax")]
            boxes.append(Box(name, *corners))
        except ValueError as exc:
            raise BS80KError(f"{path.name}: object {name!r}: {exc}") from None
    return tuple(boxes)


def _views_of(ds: pydicom.Dataset) -> tuple[list[View], ViewRule]:
    """Frame order of the views: the private ``99LOCAL`` codes where present and consistent, else the
    data set's documented order (anterior first)."""
    codes = []
    for item in ds.get("DetectorInformationSequence", []):
        for code in item.get("ViewCodeSequence", []):
            codes.append(_LOCAL_CODES.get(str(code.get("CodeValue", "")).strip().upper()))
    if len(codes) == 2 and set(codes) == set(View):
        return codes, ViewRule.VIEW_CODE  # type: ignore[return-value]
    return [View.ANTERIOR, View.POSTERIOR], ViewRule.ASSUMED


def read_wholebody(path: Path) -> BoneScan:
    """One BS-80K two-frame file as a :class:`BoneScan` (posterior mirrored to canonical)."""
    try:
        ds = pydicom.dcmread(path, force=True)
        pixels = ds.pixel_array
    except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:
        raise BS80KError(f"{path.name}: cannot read pixel data ({exc})") from None
    if pixels.ndim != 3 or pixels.shape[0] != 2:
        raise BS80KError(f"{path.name}: expected 2 frames, got pixel array {pixels.shape}")
    spacing = tuple(float(v) for v in ds.get("PixelSpacing", [BS80K_SPACING_MM] * 2))
    order, rule = _views_of(ds)
    images = {}
    for index, view in enumerate(order):
        source = ViewSource(
            sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
            sop_class_uid=NuclearMedicineImageStorage,
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            frame_number=index + 1,
            rows=int(pixels.shape[1]),
            columns=int(pixels.shape[2]),
            flip_lr=view is View.POSTERIOR,
            flip_ud=False,
            rule=rule,
        )
        counts = source.to_canonical(pixels[index].astype(np.float32))
        images[view.value] = ViewImage(view, counts, (spacing[0], spacing[1]), source)
    return BoneScan(study_instance_uid=str(ds.get("StudyInstanceUID", "")), **images)


def load_wholebody_folder(root: Path, rules: WeakLabelRules = WeakLabelRules()) -> list[LabelledStudy]:
    """Every ``<id>/<id>_<date>.dcm`` under ``root`` with labels derived from its VOC boxes.

    A view without a box file is unlabelled; a study that cannot be read is skipped with a warning.
    The patient of a study is its folder name (the data set's pseudonymous ID).
    """

    studies = []
    for path in sorted(root.glob("*/*.dcm")):
        key = path.stem
        try:
            scan = read_wholebody(path)
            labels, regions, boxes = {}, {}, {}
            for view, image in scan.views.items():
                voc = path.with_name(f"{path.stem}_{_VIEW_SUFFIX[view]}.xml")
                if not voc.is_file():
                    continue
                boxes[view] = read_voc_boxes(voc)
                stored = image.source.to_stored(image.counts)
                labels[view], regions[view] = weak_labels(stored, boxes[view], rules)
            studies.append(LabelledStudy(key, path.parent.name, scan, labels, "BS-80K boxes" if labels else "none",
                                         regions=regions, boxes=boxes))
        except (BS80KError, ValueError) as exc:
            log.warning("%s: study %s skipped: %s", root, key, exc)
    return studies


@dataclass(frozen=True)
class Crop:
    """One labelled crop: 8-bit values in canonical orientation (posterior mirrored), native spacing."""

    key: str  # "<view folder>/<file>"
    patient_id: str  # "<n>": the same patient in both view folders
    view: View
    image: np.ndarray  # (H, W) float32
    abnormal: bool


def _crop_view(folder: Path) -> View | None:
    name = folder.name.upper()
    if name.endswith("POST"):
        return View.POSTERIOR
    if name.endswith("ANT"):
        return View.ANTERIOR
    return None


def crop_label_files(root: Path) -> list[Path]:
    """``<view folder>/<view folder>.txt`` label files under ``root`` (the crop format's signature)."""
    return sorted(p for p in root.glob("*/*.txt") if p.stem == p.parent.name and _crop_view(p.parent))


def load_crop_folder(root: Path) -> list[Crop]:
    """Every labelled crop under ``root`` (both view folders); unreadable lines are skipped, counted."""
    from PIL import Image, UnidentifiedImageError

    crops: list[Crop] = []
    for labels in crop_label_files(root):
        folder, view = labels.parent, _crop_view(labels.parent)
        assert view is not None
        skipped = 0
        for line in labels.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split("\t")
            if len(parts) != 2 or parts[1] not in ("0", "1") or not re.fullmatch(r"[\w.-]+\.(jpe?g|png)", parts[0]):
                skipped += bool(line.strip())
                continue
            try:
                with Image.open(folder / parts[0]) as image:
                    pixels = np.asarray(image.convert("L"), dtype=np.float32)
            except (OSError, UnidentifiedImageError):
                skipped += 1
                continue
            if view is View.POSTERIOR:
                pixels = np.ascontiguousarray(pixels[:, ::-1])
            patient = parts[0].rsplit(".", 1)[0]
            crops.append(Crop(f"{folder.name}/{parts[0]}", patient, view, pixels, parts[1] == "1"))
        if skipped:
            log.warning("%s: %d lines or images unusable; skipped", labels, skipped)
    if not crops:
        raise ValueError(f"no labelled crops under {root}")
    log.info("%s: %d crops (%d abnormal), %d patients", root, len(crops), sum(c.abnormal for c in crops),
             len({c.patient_id for c in crops}))
    return crops


def box_counts(studies: Sequence[LabelledStudy]) -> dict[str, int]:
    """How many boxes of each kind the studies hold (both views)."""
    counts = {ABNORMAL: 0, NORMAL: 0}
    for study in studies:
        for boxes in study.boxes.values():
            for box in boxes:
                counts[box.kind] += 1
    return counts
