"""Which view each frame of an NM whole-body instance shows, decided from its header alone.

No pixel is read here: the receiver calls :func:`instance_views` on every whole-body instance as it
arrives (:mod:`dicomnode.dicom.validate`), and the pixel loader (:mod:`dicomnode.segmentation.views`)
calls :func:`decide_views` for a study, then decodes only the frames decided. Both layouts are handled
(one instance whose frames are the two detectors, or one instance per view; PS3.3 C.8.4.8.1.1).

The rules, in order of evidence, are :class:`~dicomnode.segmentation.scan.ViewRule`; the first that says
something decides and is recorded (docs/dicom.md, "Views", with the vendors' conventions and the
geometry). ``ROOT_VIEW_CODE``, ``PATIENT_ORIENTATION`` and ``DESCRIPTION`` describe a whole instance,
so they decide only single-frame instances; ``ASSUMED`` (frame order, anterior first) needs exactly
two frames and is always noted. Anything that cannot be read raises :class:`ViewError` naming the
attribute; oddities that do not stop reading go to the notes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import NuclearMedicineImageStorage

from dicomnode.segmentation.scan import (
    NotWholeBodyView,
    View,
    ViewError,
    ViewRule,
    ViewSource,
)
from dicomnode.segmentation.viewcodes import coded_view, described_view, vendor_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameView:
    """One frame of one instance: its view and the rule that decided it (``None`` while undecided)."""

    dataset: Dataset
    index: int  # 0-based frame index
    view: View | None
    rule: ViewRule | None
    orientation: PatientOrientation | None = None  # from the frame's detector item (ViewRule.DETECTOR_ORIENTATION)

    @property
    def label(self) -> str:
        return f"instance {self.dataset.SOPInstanceUID} frame {self.index + 1}"


@dataclass(frozen=True)
class DecidedView:
    """A frame whose view is decided: where its pixels are, how they map to the canonical orientation
    (:class:`~dicomnode.segmentation.scan.ViewSource`) and its Pixel Spacing (0028,0030)."""

    view: View
    dataset: Dataset
    source: ViewSource
    pixel_spacing: tuple[float, float]


@dataclass(frozen=True)
class StudyViews:
    """The views of one study's whole-body instances, decided from their headers."""

    study_instance_uid: str
    views: tuple[DecidedView, ...]
    notes: tuple[str, ...]


def decide_views(datasets: Sequence[Dataset]) -> StudyViews:
    """Decide the anterior and posterior views of one study's NM Image Storage instances.

    Raises :class:`ViewError` for headers that cannot give views (wrong SOP class, mixed studies,
    missing Pixel Spacing, frame/Detector Vector mismatch, two views of the same kind, undecidable
    views...). Instances are taken in Instance Number order (``ViewRule.ASSUMED``).
    """
    if not datasets:
        raise ViewError("no datasets given")
    notes: list[str] = []
    study_uid = _common_study(datasets)
    ordered = sorted(datasets, key=_instance_number)
    frames = assume_order([frame for ds in ordered for frame in decide_frames(ds, notes)], notes)
    decided = _one_of_each(frames, notes)
    for view in View:
        if view not in decided:
            notes.append(f"no {view.value} view in the study")
    for note in notes:
        log.info("study %s: %s", study_uid, note)
    return StudyViews(study_uid, tuple(decided[view] for view in View if view in decided), tuple(notes))


def _one_of_each(frames: list[FrameView], notes: list[str]) -> dict[View, DecidedView]:
    """The decided frames by view; two frames of the same view are refused."""
    decided: dict[View, DecidedView] = {}
    for frame in frames:
        if frame.view is None or frame.rule is None:
            continue
        if frame.view in decided:
            other = decided[frame.view].source
            raise ViewError(
                f"two {frame.view.value} views: {frame.label} and instance "
                f"{other.sop_instance_uid} frame {other.frame_number} (decided by "
                f"{frame.rule.value} / {other.rule.value})"
            )
        decided[frame.view] = decided_view(frame, notes)
    return decided


def instance_views(ds: Dataset) -> tuple[list[DecidedView], list[str]]:
    """The views one instance decides on its own, and the notes: what the receiver records.

    A two-frame instance that states no view is decided by ``ViewRule.ASSUMED``; a single-frame
    instance that states none gives no view (its study may still decide it by order). Raises
    :class:`ViewError` as :func:`decide_views` does.
    """
    notes: list[str] = []
    frames = decide_frames(ds, notes)
    if len(frames) == 2:
        frames = assume_order(frames, notes)
    return list(_one_of_each(frames, notes).values()), notes


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


def decide_frames(ds: Dataset, notes: list[str]) -> list[FrameView]:
    """Check one instance's header and split it into frames, each with the view its attributes state."""
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
    _check_image_pixel_module(ds)
    n_frames = frame_count(ds)
    stated = stated_views(ds)
    orientations = [
        detector_orientation(item, f"instance {uid}") if item is not None else None
        for item in _detector_items(ds, n_frames)
    ]
    return [
        FrameView(ds, index, *(stated[index] or (None, None)), orientations[index])
        for index in range(n_frames)
    ]


def _check_image_pixel_module(ds: Dataset) -> None:
    """Pixel Data present, a matrix, and one grey-level sample per pixel (PS3.3 C.7.6.3, C.8.4.7)."""
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
    view = coded_view(item, where)
    if view is not None:
        return view, ViewRule.VIEW_CODE
    orientation = detector_orientation(item, where)
    if orientation is not None:
        return (View.POSTERIOR if orientation.from_behind else View.ANTERIOR), ViewRule.DETECTOR_ORIENTATION
    view = vendor_view(item, where)
    if view is not None:
        return view, ViewRule.VENDOR_CODE
    return None


def _check_description_agrees(ds: Dataset, stated: tuple[View, ViewRule] | None) -> None:
    """A coded view (``VIEW_CODE``, ``VENDOR_CODE``, ``ROOT_VIEW_CODE``) that the instance's
    descriptions contradict is refused."""
    if stated is None or stated[1] not in (ViewRule.VIEW_CODE, ViewRule.VENDOR_CODE, ViewRule.ROOT_VIEW_CODE):
        return
    described = described_view(ds)
    if described is not None and described is not stated[0]:
        raise ViewError(
            f"instance {ds.SOPInstanceUID}: contradictory view information: View Code Sequence "
            f"(0054,0220) says {stated[0].value}, the descriptions say {described.value}"
        )

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
    view = coded_view(ds, f"instance {uid} (root)") or vendor_view(ds, f"instance {uid} (root)")
    if view is not None:
        return view, ViewRule.ROOT_VIEW_CODE
    orientation = patient_orientation(ds)
    if orientation is not None:
        return (View.POSTERIOR if orientation.from_behind else View.ANTERIOR), (
            ViewRule.PATIENT_ORIENTATION
        )
    view = described_view(ds)
    if view is not None:
        return view, ViewRule.DESCRIPTION
    return None


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


def assume_order(frames: list[FrameView], notes: list[str]) -> list[FrameView]:
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
            frame = replace(frame, view=view, rule=ViewRule.ASSUMED)
        decided.append(frame)
    return decided


def decided_view(frame: FrameView, notes: list[str]) -> DecidedView:
    """Where a decided frame's pixels are and which flips make them canonical (docs/dicom.md, "Mirroring")."""
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
    return DecidedView(frame.view, ds, source, _pixel_spacing(ds))


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
