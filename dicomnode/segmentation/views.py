"""DICOM NM whole-body instances → a :class:`~dicomnode.segmentation.scan.BoneScan` (anterior + posterior views).

Entry points: :func:`load_scan` (pydicom datasets of one study) and :func:`load_scan_files` (paths).
Only NM Image Storage (``pydicom.uid.NuclearMedicineImageStorage``) is read. Both layouts are
handled (docs/dicom.md, PS3.3 C.8.4.8.1.1): one instance whose frames are the two detectors (Frame
Increment Pointer → Detector Vector, one Detector Information Sequence item per detector), or one
instance per view.

Which view a frame shows is decided by the first rule that says something (:class:`ViewRule`), in
order of evidence (docs/dicom.md, "Views"):

- ``VIEW_CODE``: View Code Sequence (0054,0220) inside the Detector Information Sequence (0054,0022)
   item that Detector Vector (0054,0020) selects for the frame (PS3.3 C.8.4.11, C.8.4.10.1; CID 26:
   SCT 399321004 anterior, SCT 399001007 posterior, legacy SRT/SNM3 G-5215 / G-5216).
- ``DETECTOR_ORIENTATION``: that item's Image Orientation (Patient) (0020,0037) (Type 2 in the
   Detector Information Sequence, PS3.3 C.8.4.11; direction cosines in the patient's LPS axes,
   C.7.6.2.1.1): a row direction along +x (towards the patient's left) with the column along −z is
   the body seen from the front, along −x seen from behind; a row direction that is oblique
   (e.g. ±0.7071, ±0.7071) or along y is an oblique or lateral detector, which is not a whole-body
   projection (:class:`NotWholeBodyView`). Siemens Symbia writes anterior ``1,0,0,0,0,-1`` and
   posterior ``-1,0,0,0,0,-1`` per detector and no Patient Orientation.
- ``VENDOR_CODE``: a View Code in a private coding scheme (designator ``99...``, PS3.16 §8.2), read by
   its words: Siemens ``99NMG`` ``RT      ANT`` / ``LT     POST`` (meanings ``RT ANT LT`` /
   ``LT POST RT``); LAO/RAO/LPO/RPO/LAT words are obliques or laterals (:class:`NotWholeBodyView`).
- ``ROOT_VIEW_CODE``: a View Code Sequence at the dataset root (non-standard placement).
- ``PATIENT_ORIENTATION``: Patient Orientation (0020,0020) read by its handedness: ``L\\F`` (or
   ``R\\H``) is the body seen from the front, ``R\\F`` (or ``L\\H``) seen from behind (PS3.3
   C.7.6.1.1.1).
- ``DESCRIPTION``: the words ANT/ANTERIOR or POST/POSTERIOR in Image ID (0054,0400), Series
   Description (0008,103E), Image Comments (0020,4000), Derivation Description (0008,2111),
   Acquisition Device Processing Description (0018,1400), Protocol Name (0018,1030).
- ``ASSUMED``: nothing said and the study has exactly two frames: frame/instance order, anterior first
   (instances ordered by Instance Number); always recorded in ``BoneScan.notes``.

Other vendors. The conformance statements looked up (GE Healthcare Xeleris 3.x, DIR 5357330-1EN; GE NM
General Purpose 600 Series, DOC0660253; GE NM Applications, DIR 5503462-1EN; Philips JETStream
Acquisition, 9206-0002) list NM Image Storage with the standard NM modules; the copies available to
us did not reach their attribute tables, so no GE or Philips private view code is known here, and
``VENDOR_CODE`` reads any private scheme only by ANT/POST words. GE whole-body files seen so far (the NEMA
WG04 "NM1" GE Millennium file: one view per instance, no Detector Information Sequence, no Patient
Orientation) state no view and rely on ``ASSUMED`` (frame order); their private ``GEMS_GENIE_1`` tags name the detector
(Detector Number), not the view, and are not read. Mediso files seen in the field use the legacy SRT
codes of ``VIEW_CODE``. No vendor convention is guessed beyond what is listed here.

A single-frame instance whose View Code (``VIEW_CODE`` or ``ROOT_VIEW_CODE``) names one view while
its descriptions name only the other is contradictory and refused (:class:`ViewError`); a posterior
code with Patient Orientation ``L\\F`` is not a contradiction (an un-mirrored posterior, see below).

``ROOT_VIEW_CODE``, ``PATIENT_ORIENTATION`` and ``DESCRIPTION`` describe a whole instance, so they
decide only single-frame instances.

Geometry: every view is returned in the canonical orientation of :mod:`dicomnode.segmentation.scan`. Patient
Orientation (or a detector's Image Orientation, ``DETECTOR_ORIENTATION``, which then wins for
its frame) says how the stored pixels run (first value the direction of increasing column, second
of increasing row): a first value starting ``R`` means the columns run towards the patient's right,
so the frame is flipped left-right; a second value starting ``H`` means the rows run towards the
head, so it is flipped up-down. A single-frame instance's Patient Orientation is always followed (a
posterior stored un-mirrored as ``L\\F`` is then not flipped; noted). One attribute cannot describe
two frames of opposite handedness, so in a two-frame instance it is followed only for the frame whose
view has its handedness. Otherwise the convention is assumed: anterior as seen from the front,
posterior as seen from behind (flipped left-right). Counts are float32 after Rescale Slope /
Intercept (PS3.3 C.7.6.16.2.11) where present.

Anything that cannot be read raises :class:`ViewError` naming the attribute; oddities that do not stop
reading (e.g. Image Type value 3 not ``WHOLE BODY``) are recorded in ``BoneScan.notes`` and logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import NuclearMedicineImageStorage

from dicomnode.segmentation.scan import BoneScan, View, ViewImage, ViewRule, ViewSource

log = logging.getLogger(__name__)

# CID 26 "Nuclear Medicine Projection" (PS3.16); SRT and SNM3 are the legacy designators of the same
# SNOMED concepts that older cameras still send.
VIEW_CODES: dict[tuple[str, str], View] = {
    ("SCT", "399321004"): View.ANTERIOR,
    ("SCT", "399001007"): View.POSTERIOR,
    ("SRT", "G-5215"): View.ANTERIOR,
    ("SRT", "G-5216"): View.POSTERIOR,
    ("SNM3", "G-5215"): View.ANTERIOR,
    ("SNM3", "G-5216"): View.POSTERIOR,
}

DESCRIPTION_KEYWORDS = (
    "ImageID",
    "SeriesDescription",
    "ImageComments",
    "DerivationDescription",
    "AcquisitionDeviceProcessingDescription",
    "ProtocolName",
)
_ANTERIOR_WORD = re.compile(r"(?<![A-Z])ANT(ERIOR)?(?![A-Z])")
_POSTERIOR_WORD = re.compile(r"(?<![A-Z])POST(ERIOR)?(?![A-Z])")


class ViewError(ValueError):
    """A DICOM input that cannot be turned into bone-scan views; the message names the attribute."""


class NotWholeBodyView(ViewError):
    """A frame whose detector looks obliquely or laterally (a static LAO/RPO pair, a lateral skull):
    not an anterior or posterior whole-body projection, so not a bone-scan view."""


class UndecodablePixels(ViewError):
    """Pixel Data (7FE0,0010) that cannot be decoded, as opposed to attributes that do not fit together."""


@dataclass(frozen=True)
class _Frame:
    """One frame of one instance, with its view once decided."""

    dataset: Dataset
    index: int  # 0-based frame index
    pixels: np.ndarray  # stored layout, float32 counts
    view: View | None
    rule: ViewRule | None
    orientation: PatientOrientation | None = None  # from the frame's detector item (ViewRule.DETECTOR_ORIENTATION)

    @property
    def label(self) -> str:
        return f"instance {self.dataset.SOPInstanceUID} frame {self.index + 1}"


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

    Raises :class:`ViewError` for input that cannot be read (wrong SOP class, mixed studies, missing
    Pixel Spacing, frame/Detector Vector mismatch, two views of the same kind, undecidable views...).
    """
    if not datasets:
        raise ViewError("no datasets given")
    notes: list[str] = []
    study_uid = _common_study(datasets)
    ordered = sorted(datasets, key=_instance_number)
    frames = [frame for ds in ordered for frame in _frames_of(ds, notes)]
    frames = _assume_undecided(frames, notes)

    images: dict[View, ViewImage] = {}
    for frame in frames:
        assert frame.view is not None and frame.rule is not None
        if frame.view in images:
            other = images[frame.view].source
            raise ViewError(
                f"two {frame.view.value} views: {frame.label} and instance "
                f"{other.sop_instance_uid} frame {other.frame_number} (decided by "
                f"{frame.rule.value} / {other.rule.value})"
            )
        images[frame.view] = _view_image(frame, notes)
    for view in View:
        if view not in images:
            notes.append(f"no {view.value} view in the study")
    for note in notes:
        log.info("study %s: %s", study_uid, note)
    return BoneScan(
        study_instance_uid=study_uid,
        anterior=images.get(View.ANTERIOR),
        posterior=images.get(View.POSTERIOR),
        notes=tuple(notes),
    )


def _common_study(datasets: Sequence[Dataset]) -> str:
    uids = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if "" in uids:
        raise ViewError("Study Instance UID (0020,000D) is missing")
    if len(uids) > 1:
        raise ViewError(f"datasets of different studies mixed: Study Instance UIDs {sorted(uids)}")
    return uids.pop()


def _instance_number(ds: Dataset) -> int:
    value = ds.get("InstanceNumber")
    return int(value) if value not in (None, "") else 0


def _frames_of(ds: Dataset, notes: list[str]) -> list[_Frame]:
    """Check one instance and split it into frames, each with the view its attributes give."""
    sop_class = str(ds.get("SOPClassUID", ""))
    uid = str(ds.get("SOPInstanceUID", ""))
    if sop_class != NuclearMedicineImageStorage:
        raise ViewError(
            f"instance {uid or '(no SOP Instance UID)'}: SOP Class UID (0008,0016) {sop_class!r} "
            f"is not NM Image Storage ({NuclearMedicineImageStorage})"
        )
    if not uid:
        raise ViewError("SOP Instance UID (0008,0018) is missing")
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if len(image_type) < 3 or image_type[2] != "WHOLE BODY":
        shown = "\\".join(image_type) or "(empty)"
        notes.append(
            f"instance {uid}: Image Type (0008,0008) {shown} is not WHOLE BODY; "
            "read as a planar view anyway"
        )
    stack = _pixels(ds)
    stated = stated_views(ds)
    orientations = [
        detector_orientation(item, f"instance {uid}") if item is not None else None
        for item in _detector_items(ds, stack.shape[0])
    ]
    return [
        _Frame(ds, index, stack[index], *(stated[index] or (None, None)), orientations[index])
        for index in range(stack.shape[0])
    ]


def stated_views(ds: Dataset) -> list[tuple[View, ViewRule] | None]:
    """The view each frame of one instance states (every rule but ``ViewRule.ASSUMED``), without reading pixels.

    ``None`` for a frame that states no view (ViewRule.ASSUMED can only decide with the whole study). Raises
    :class:`ViewError` for contradictory view attributes (Detector Vector vs frames or items, an
    unreadable Patient Orientation, a code contradicted by the descriptions) and
    :class:`NotWholeBodyView` for oblique or lateral detectors. Used by the receiver to record
    ``Instance.views``.
    """
    n_frames = frame_count(ds)
    uid = ds.SOPInstanceUID
    views: list[tuple[View, ViewRule] | None] = []
    for detector, item in enumerate(_detector_items(ds, n_frames), start=1):
        views.append(None if item is None else _detector_view(item, f"instance {uid} detector {detector}"))
    if n_frames == 1:
        if views[0] is None:
            views[0] = _instance_view(ds)
        _check_description_agrees(ds, views[0])
    return views


def _detector_view(item: Dataset, where: str) -> tuple[View, ViewRule] | None:
    """``VIEW_CODE``, ``DETECTOR_ORIENTATION`` and ``VENDOR_CODE`` for one Detector Information item."""
    view = _coded_view(item, where)
    if view is not None:
        return view, ViewRule.VIEW_CODE
    orientation = detector_orientation(item, where)
    if orientation is not None:
        return (View.POSTERIOR if orientation.from_behind else View.ANTERIOR), ViewRule.DETECTOR_ORIENTATION
    view = _vendor_view(item, where)
    if view is not None:
        return view, ViewRule.VENDOR_CODE
    return None


def _check_description_agrees(ds: Dataset, stated: tuple[View, ViewRule] | None) -> None:
    """A coded view (``VIEW_CODE``, ``VENDOR_CODE``, ``ROOT_VIEW_CODE``) that the instance's
    descriptions contradict is refused."""
    if stated is None or stated[1] not in (ViewRule.VIEW_CODE, ViewRule.VENDOR_CODE, ViewRule.ROOT_VIEW_CODE):
        return
    described = _described_view(ds)
    if described is not None and described is not stated[0]:
        raise ViewError(
            f"instance {ds.SOPInstanceUID}: contradictory view information: View Code Sequence "
            f"(0054,0220) says {stated[0].value}, the descriptions say {described.value}"
        )


def _pixels(ds: Dataset) -> np.ndarray:
    """The instance's frames as a (frames, rows, columns) float32 stack of counts, rescaled."""
    uid = ds.SOPInstanceUID
    if "PixelData" not in ds:
        raise ViewError(f"instance {uid}: Pixel Data (7FE0,0010) is missing")
    for keyword, tag in (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")):
        if not ds.get(keyword):
            raise ViewError(f"instance {uid}: {keyword} {tag} is missing or zero")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1 or str(ds.get("PhotometricInterpretation", "MONOCHROME2")) not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        raise ViewError(
            f"instance {uid}: Samples per Pixel (0028,0002) {samples} / Photometric Interpretation "
            f"(0028,0004) {ds.get('PhotometricInterpretation')}: a planar NM view must be one "
            "grey-level sample per pixel"
        )
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


def frame_count(ds: Dataset) -> int:
    """Number of Frames (0028,0008); one when absent or empty (a single-frame object). A value that is
    not a positive integer is a :class:`ViewError`: a multi-frame image has at least one frame
    (PS3.3 C.7.6.6)."""
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError):
        raise ViewError(f"Number of Frames (0028,0008) {str(value)[:16]!r} is not a number") from None
    if frames <= 0:
        raise ViewError(f"Number of Frames (0028,0008) {frames} is not positive")
    return frames


def _detector_items(ds: Dataset, n_frames: int) -> list[Dataset | None]:
    """The Detector Information item each frame's Detector Vector selects (``None``: no items)."""
    uid = ds.SOPInstanceUID
    items = list(ds.get("DetectorInformationSequence", []))
    vector = ds.get("DetectorVector")
    if vector is None:
        if len(items) > 1:
            raise ViewError(
                f"instance {uid}: {len(items)} Detector Information Sequence (0054,0022) items but "
                "no Detector Vector (0054,0020) to say which frame each describes"
            )
        detectors = [1] * n_frames
    else:
        detectors = [int(v) for v in (vector if isinstance(vector, Iterable) else [vector])]
        if len(detectors) != n_frames:
            raise ViewError(
                f"instance {uid}: Detector Vector (0054,0020) has {len(detectors)} values but "
                f"Number of Frames (0028,0008) is {n_frames}"
            )
    selected: list[Dataset | None] = []
    for frame, detector in enumerate(detectors, start=1):
        if not items:
            selected.append(None)
            continue
        if not 1 <= detector <= len(items):
            raise ViewError(
                f"instance {uid} frame {frame}: Detector Vector (0054,0020) value {detector} has no "
                f"item in the Detector Information Sequence (0054,0022) of {len(items)} item(s)"
            )
        selected.append(items[detector - 1])
    return selected


#: Within this of ±1, a direction cosine is taken as along that axis (a detector is never tilted
#: by more than a few degrees for a whole-body pass; Siemens obliques are 0.7071).
_AXIS_COSINE = 0.9


def detector_orientation(item: Dataset, where: str) -> PatientOrientation | None:
    """ViewRule.DETECTOR_ORIENTATION: a Detector Information item's Image Orientation (Patient) as a planar orientation.

    ``None`` when absent or when it does not describe a coronal plane (e.g. the ``1,0,0,0,1,0``
    default some software writes for any planar image); :class:`NotWholeBodyView` when the row
    direction is oblique or lateral while the columns run head–feet (an oblique or lateral static).
    """
    value = item.get("ImageOrientationPatient")
    if value is None or len(value) != 6:
        return None
    try:
        row_x, row_y, _, _, _, column_z = (float(v) for v in (*value[:3], *value[3:]))
    except (TypeError, ValueError):
        raise ViewError(f"{where}: Image Orientation (Patient) (0020,0037) is not six numbers") from None
    if abs(column_z) < _AXIS_COSINE:
        return None
    if abs(row_x) >= _AXIS_COSINE:
        return PatientOrientation("L" if row_x > 0 else "R", "H" if column_z > 0 else "F")
    shown = "\\".join(f"{float(v):g}" for v in value)
    raise NotWholeBodyView(
        f"{where}: oblique or lateral detector, not an anterior or posterior whole-body view: Image "
        f"Orientation (Patient) (0020,0037) {shown}"
    )


def _instance_view(ds: Dataset) -> tuple[View, ViewRule] | None:
    """``ROOT_VIEW_CODE``, ``PATIENT_ORIENTATION``, ``DESCRIPTION`` for a single-frame instance."""
    uid = ds.SOPInstanceUID
    view = _coded_view(ds, f"instance {uid} (root)") or _vendor_view(ds, f"instance {uid} (root)")
    if view is not None:
        return view, ViewRule.ROOT_VIEW_CODE
    orientation = patient_orientation(ds)
    if orientation is not None:
        return (View.POSTERIOR if orientation.from_behind else View.ANTERIOR), (
            ViewRule.PATIENT_ORIENTATION
        )
    view = _described_view(ds)
    if view is not None:
        return view, ViewRule.DESCRIPTION
    return None


def _coded_view(item: Dataset, where: str) -> View | None:
    """ViewRule.VIEW_CODE: a CID 26 code (private schemes are ViewRule.VENDOR_CODE's)."""
    codes = list(item.get("ViewCodeSequence", []))
    if not codes:
        return None
    code = codes[0]
    key = (str(code.get("CodingSchemeDesignator", "")).upper(), str(code.get("CodeValue", "")))
    if key in VIEW_CODES:
        return VIEW_CODES[key]
    if not key[0].startswith(_PRIVATE_SCHEME_PREFIX):
        log.warning("%s: View Code Sequence (0054,0220) code %s is not a CID 26 projection", where,
                    (key[0][:16], key[1][:16]))
    return None


#: Private coding schemes start with "99" (PS3.16 §8.2, "Private Coding Schemes").
_PRIVATE_SCHEME_PREFIX = "99"
_ANTERIOR_WORDS = frozenset({"ANT", "ANTERIOR"})
_POSTERIOR_WORDS = frozenset({"POST", "POSTERIOR"})
_OBLIQUE_WORDS = frozenset({"LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE", "LAT", "LATERAL", "LLAT", "RLAT"})


def _vendor_view(item: Dataset, where: str) -> View | None:
    """ViewRule.VENDOR_CODE: a private-scheme View Code read by its words (module docstring)."""
    codes = list(item.get("ViewCodeSequence", []))
    if not codes:
        return None
    code = codes[0]
    if not str(code.get("CodingSchemeDesignator", "")).upper().startswith(_PRIVATE_SCHEME_PREFIX):
        return None
    text = f"{code.get('CodeValue', '')} {code.get('CodeMeaning', '')}".upper()
    words = set(re.findall(r"[A-Z]+", text))
    if words & _OBLIQUE_WORDS:
        raise NotWholeBodyView(
            f"{where}: View Code {sorted(words & _OBLIQUE_WORDS)[0]} is an oblique or lateral view, "
            "not an anterior or posterior whole-body view"
        )
    anterior, posterior = bool(words & _ANTERIOR_WORDS), bool(words & _POSTERIOR_WORDS)
    if anterior != posterior:
        return View.ANTERIOR if anterior else View.POSTERIOR
    return None


def _described_view(ds: Dataset) -> View | None:
    found: set[View] = set()
    for keyword in DESCRIPTION_KEYWORDS:
        text = str(ds.get(keyword, "") or "").upper()
        if _ANTERIOR_WORD.search(text):
            found.add(View.ANTERIOR)
        if _POSTERIOR_WORD.search(text):
            found.add(View.POSTERIOR)
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class PatientOrientation:
    """Patient Orientation (0020,0020) reduced to what a planar view needs (PS3.3 C.7.6.1.1.1).

    ``flip_lr``: columns run towards the patient's right (first value ``R...``); ``flip_ud``: rows run
    towards the head (second value ``H...``). ``from_behind``: the handedness of the two directions
    is that of the body seen from behind (``R\\F``, ``L\\H``), i.e. a posterior view as stored.
    """

    row_direction: str
    column_direction: str

    def __str__(self) -> str:
        return f"{self.row_direction}\\{self.column_direction}"

    @property
    def flip_lr(self) -> bool:
        return self.row_direction.startswith("R")

    @property
    def flip_ud(self) -> bool:
        return self.column_direction.startswith("H")

    @property
    def from_behind(self) -> bool:
        return self.flip_lr != self.flip_ud


def patient_orientation(ds: Dataset) -> PatientOrientation | None:
    """Read Patient Orientation; ``None`` when empty, :class:`ViewError` when not a planar L/R × H/F."""
    value = ds.get("PatientOrientation")
    values = [] if value is None else [value] if isinstance(value, str) else list(value)
    values = [str(v).strip().upper() for v in values]
    if not any(values):
        return None
    if len(values) != 2 or values[0][:1] not in ("L", "R") or values[1][:1] not in ("H", "F"):
        shown = "\\".join(values)
        raise ViewError(
            f"instance {ds.SOPInstanceUID}: Patient Orientation (0020,0020) {shown} is not a "
            "whole-body planar orientation (first value L or R, second H or F)"
        )
    return PatientOrientation(values[0], values[1])


def _assume_undecided(frames: list[_Frame], notes: list[str]) -> list[_Frame]:
    """ViewRule.ASSUMED: with exactly two frames, undecided ones take the remaining view, anterior first."""
    undecided = [frame for frame in frames if frame.view is None]
    if not undecided:
        return frames
    if len(frames) != 2:
        raise ViewError(
            f"cannot tell the view of {', '.join(frame.label for frame in undecided)}: no View Code "
            "Sequence (0054,0220), Patient Orientation (0020,0020) or ANT/POST description, and the "
            f"study has {len(frames)} frame(s), not two"
        )
    taken = {frame.view for frame in frames if frame.view is not None}
    remaining = [view for view in (View.ANTERIOR, View.POSTERIOR) if view not in taken]
    decided = []
    for frame in frames:
        if frame.view is None:
            view = remaining.pop(0)
            notes.append(f"{frame.label}: view not stated; assumed {view.value} (order, anterior first)")
            frame = _Frame(frame.dataset, frame.index, frame.pixels, view, ViewRule.ASSUMED,
                           frame.orientation)
        decided.append(frame)
    return decided


def _view_image(frame: _Frame, notes: list[str]) -> ViewImage:
    ds = frame.dataset
    assert frame.view is not None and frame.rule is not None
    orientation = frame.orientation or patient_orientation(ds)
    from_behind = frame.view is View.POSTERIOR
    if frame.orientation is not None or (
        orientation is not None and (orientation.from_behind == from_behind or frame_count(ds) == 1)
    ):
        assert orientation is not None
        flip_lr, flip_ud = orientation.flip_lr, orientation.flip_ud
        if orientation.from_behind != from_behind:
            notes.append(
                f"{frame.label}: {frame.view.value} view with Patient Orientation {orientation}; "
                "geometry follows Patient Orientation"
            )
    else:
        flip_lr, flip_ud = from_behind, False
        if orientation is not None:
            notes.append(
                f"{frame.label}: the instance's Patient Orientation {orientation} cannot describe "
                f"this {frame.view.value} frame; stored as seen from "
                f"{'behind' if from_behind else 'the front'} assumed"
            )
    source = ViewSource(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        frame_number=frame.index + 1,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        flip_lr=flip_lr,
        flip_ud=flip_ud,
        rule=frame.rule,
    )
    if not source.series_instance_uid:
        raise ViewError(f"instance {source.sop_instance_uid}: Series Instance UID (0020,000E) is missing")
    return ViewImage(
        view=frame.view,
        counts=source.to_canonical(frame.pixels),
        pixel_spacing=_pixel_spacing(ds),
        source=source,
    )


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    value = ds.get("PixelSpacing")
    uid = ds.SOPInstanceUID
    if not value:
        raise ViewError(f"instance {uid}: Pixel Spacing (0028,0030) is missing or empty")
    try:
        spacing = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ViewError(f"instance {uid}: Pixel Spacing (0028,0030) {value!r} is not numeric") from exc
    if len(spacing) != 2 or min(spacing) <= 0 or not all(np.isfinite(spacing)):
        raise ViewError(
            f"instance {uid}: Pixel Spacing (0028,0030) {value!r} must be two positive numbers"
        )
    return spacing[0], spacing[1]
