"""Small NM Image Storage whole-body bone scans for tests, on the simulator's NM writer.

The one NM test-data factory: the image modules come from :func:`dicomnode.synth.dicom.nm_image`
(the writer of ``dicomnode synth``); what a test varies is set here.

:func:`nm_study` stores *canonical* anterior/posterior count arrays (orientation of
:mod:`dicomnode.segmentation.scan`) the way a camera would: in one two-frame instance (Frame Increment Pointer →
Detector Vector, one Detector Information Sequence item per detector, PS3.3 C.8.4.8.1.1) or one
instance per view, with SCT / SRT / SNM3 view codes in the detector items, at the root, or none; with a
chosen Patient Orientation per view (the stored pixels follow it), any matrix and pixel spacing.
:func:`phantom_counts` draws a crude but asymmetric body (a hot spot on the patient's right shoulder,
bladder low in the midline) so orientation errors show. The datasets pass ``dciodvfy`` (see
``tests/test_views.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from dicomnode.segmentation.scan import View
from dicomnode.synth.dicom import nm_image

_SCT = {View.ANTERIOR: ("399321004", "Anterior projection"), View.POSTERIOR: ("399001007", "Posterior projection")}
_SRT = {View.ANTERIOR: ("G-5215", "Anterior projection"), View.POSTERIOR: ("G-5216", "Posterior projection")}
VIEW_CODE = {"SCT": _SCT, "SRT": _SRT, "SNM3": _SRT}
# What a camera that follows the convention writes: anterior seen from the front, posterior from behind.
STANDARD_ORIENTATION = {View.ANTERIOR: ("L", "F"), View.POSTERIOR: ("R", "F")}


def phantom_counts(
    rows: int = 1024, columns: int = 256, seed: int = 0, level: float = 20.0
) -> dict[View, np.ndarray]:
    """Canonical anterior and posterior count arrays (uint16-valued float32) of a stick-figure body.

    A spine down the midline, a pelvis, a bladder (hottest) low in the midline, and a hot lesion on the
    patient's right shoulder (canonical columns < columns/2), brighter in the anterior view.
    """
    rng = np.random.default_rng(seed)
    r = np.arange(rows)[:, None] / rows
    c = np.arange(columns)[None, :] / columns
    body = ((np.abs(c - 0.5) < 0.18) & (r > 0.05) & (r < 0.97)).astype(np.float32)
    head = ((r - 0.07) ** 2 / 0.05**2 + (c - 0.5) ** 2 / 0.08**2 < 1).astype(np.float32)
    spine = ((np.abs(c - 0.5) < 0.02) & (r > 0.12) & (r < 0.5)).astype(np.float32)
    pelvis = (((r - 0.53) ** 2 / 0.03**2 + (c - 0.5) ** 2 / 0.12**2) < 1).astype(np.float32)
    bladder = (((r - 0.56) ** 2 / 0.01**2 + (c - 0.5) ** 2 / 0.03**2) < 1).astype(np.float32)
    lesion = (((r - 0.16) ** 2 / 0.015**2 + (c - 0.37) ** 2 / 0.05**2) < 1).astype(np.float32)
    expected = level * (body + 2 * head + 3 * spine + 2 * pelvis + 30 * bladder)
    views = {}
    for view, lesion_gain in ((View.ANTERIOR, 12.0), (View.POSTERIOR, 8.0)):
        mean = expected + level * lesion_gain * lesion
        views[view] = rng.poisson(mean).astype(np.float32)
    return views


def nm_study(
    counts: Mapping[View, np.ndarray] | None = None,
    *,
    layout: str = "multiframe",
    scheme: str | None = "SCT",
    code_location: str = "detector",
    orientation: Mapping[View, tuple[str, str] | None] | None = None,
    pixel_spacing: tuple[float, float] = (2.26, 2.26),
    descriptions: Mapping[View, str] | None = None,
    study_uid: str | None = None,
    rescale: tuple[float, float] | None = None,
    bits_allocated: int = 16,
    signed: bool = False,
    patient_name: str = "Test^Phantom",
    geometry: bool = False,
) -> list[Dataset]:
    """NM Image Storage datasets of one whole-body study holding ``counts`` (canonical, per view).

    ``layout``: ``"multiframe"`` (one instance, frame i = detector i) or ``"split"`` (one instance
    per view). ``scheme``: ``"SCT"``, ``"SRT"``, ``"SNM3"`` or ``None`` (no View Code Sequence).
    ``code_location``: ``"detector"`` (standard) or ``"root"`` (non-standard, split layout only).
    ``orientation``: how each view's pixels are stored, as a Patient Orientation (``None``: empty
    attribute); default :data:`STANDARD_ORIENTATION`. The attribute is written where it fits every
    frame of the instance (a two-frame instance with L\\F and R\\F frames gets an empty one).
    A view whose orientation is ``None`` is stored by the convention: posterior mirrored (seen from
    behind). ``descriptions``: Image ID text per view. ``rescale``: (slope,
    intercept); the stored values are (counts − intercept) / slope. ``geometry``: each detector item
    gets the Image Orientation / Position (Patient) of a camera that states them (anterior
    ``1,0,0,0,0,-1``, posterior ``-1,0,0,0,0,-1``) and the study a Frame of Reference.
    """
    counts = dict(counts if counts is not None else phantom_counts())
    orientation = dict(STANDARD_ORIENTATION if orientation is None else orientation)
    study_uid = study_uid or generate_uid()
    views = [view for view in View if view in counts]
    stored = {view: _stored(counts[view], view, orientation.get(view), rescale) for view in views}
    if layout == "multiframe":
        if code_location != "detector":
            raise ValueError("a root View Code Sequence cannot tell the frames of one instance apart")
        groups = [views]
    elif layout == "split":
        groups = [[view] for view in views]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    series_uid, frame_of_reference = generate_uid(), generate_uid()
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    datasets = []
    for number, group in enumerate(groups, start=1):
        frames = np.stack([stored[view] for view in group]).astype(dtype)
        ds = nm_image(frames, tuple(group), generate_uid(), spacing_mm=pixel_spacing[0], instance_number=number)
        ds.PixelSpacing = [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"]
        _identify(ds, study_uid, series_uid, patient_name)
        for view, item in zip(group, ds.DetectorInformationSequence, strict=True):
            _state_view(item, view, scheme if code_location == "detector" else None)
            if geometry:
                _state_geometry(item, view, ds.Columns * pixel_spacing[1])
        if geometry:
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        if code_location == "root" and scheme is not None:
            ds.ViewCodeSequence = DicomSequence([_code_item(scheme, group[0])])
        # One Patient Orientation per instance: written only where it fits every frame.
        values = {orientation.get(view) for view in group}
        value = values.pop() if len(values) == 1 else None
        ds.PatientOrientation = list(value) if value else ""
        if descriptions and len(group) == 1 and group[0] in descriptions:
            ds.ImageID = descriptions[group[0]]
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.CountsAccumulated = int(frames.astype(np.int64).sum())
        datasets.append(ds)
    return datasets


def write_study(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Write the datasets as DICOM files (``<n>.dcm``) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(datasets, start=1):
        path = directory / f"{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _stored(
    canonical: np.ndarray,
    view: View,
    orientation: tuple[str, str] | None,
    rescale: tuple[float, float] | None,
) -> np.ndarray:
    if orientation:
        flip_lr, flip_ud = orientation[0].startswith("R"), orientation[1].startswith("H")
    else:
        flip_lr, flip_ud = view is View.POSTERIOR, False
    array = canonical[:, ::-1] if flip_lr else canonical
    array = array[::-1, :] if flip_ud else array
    if rescale is not None:
        slope, intercept = rescale
        array = (array - intercept) / slope
    return np.rint(array)


def _code_item(scheme: str, view: View) -> Dataset:
    value, meaning = VIEW_CODE[scheme][view]
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _state_view(item: Dataset, view: View, scheme: str | None) -> None:
    """The detector item's View Code Sequence in ``scheme``, or none."""
    if scheme is None:
        del item.ViewCodeSequence
    else:
        item.ViewCodeSequence = DicomSequence([_code_item(scheme, view)])


def _state_geometry(item: Dataset, view: View, width_mm: float) -> None:
    """Image Orientation / Position (Patient) of a detector seen from the front or from behind."""
    sign = 1.0 if view is View.ANTERIOR else -1.0
    item.ImageOrientationPatient = [sign, 0.0, 0.0, 0.0, 0.0, -1.0]
    item.ImagePositionPatient = [-sign * width_mm / 2, 100.0 * sign, 0.0]


def _identify(ds: Dataset, study_uid: str, series_uid: str, patient_name: str) -> None:
    """Patient, study, series and acquisition attributes of a test study (no ANT/POST words)."""
    ds.SpecificCharacterSet = "ISO_IR 100" if patient_name.isascii() else "ISO_IR 192"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20250101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.Manufacturer = "dicomnode tests"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = "WB Bone"
    ds.PatientName = patient_name
    ds.PatientID = "PHANTOM01"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    window = Dataset()
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit = "126"
    window_range.EnergyWindowUpperLimit = "154"
    window.EnergyWindowRangeSequence = DicomSequence([window_range])
    window.EnergyWindowName = "Tc99m"
    ds.EnergyWindowInformationSequence = DicomSequence([window])
    drug = Dataset()
    drug.Radiopharmaceutical = "Tc99m MDP"
    nuclide = Dataset()
    nuclide.CodeValue = "44588005"
    nuclide.CodingSchemeDesignator = "SCT"
    nuclide.CodeMeaning = "Technetium-99m"
    drug.RadionuclideCodeSequence = DicomSequence([nuclide])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([drug])
    ds.ActualFrameDuration = 900000
    ds.ScanVelocity = 15.0
    ds.ScanLength = 2000
    ds.WholeBodyTechnique = ["1PS"]
