"""Corrections in: a SEG or SR about a study the node processed, not made by the node, becomes a label.

The rules (docs/training.md, "Site labels"), applied by :func:`classify` to each stored SEG, SR and
Key Object Selection instance that no earlier pass examined (:func:`examine_new`, run by ``serve``
beside assembly and by ``dicomnode learn``):

- the study must have been processed by the node (a finished job with results); until it is, the
  object waits for a later pass;
- it must not be one of the node's own objects: its SOP Instance UID is not a ``ResultObject``, its
  Series Instance UID is not one of the node's result series, and its Manufacturer is not
  ``[results] manufacturer``;
- a SEG with lesion segments (Segmented Property Category SCT 49755003, CID 7150: the category our
  SEG uses) and any marked pixel is a POSITIVE label (an edited or drawn mask); one whose lesion
  segments are all empty is a NEGATIVE (the physician removed every finding); a SEG without a
  lesion segment (a bone mask, say) is not a label;
- an SR or Key Object Selection titled "Rejected for Quality Reasons" (DCM 113001) or "Rejected for
  Patient Safety Reasons" (DCM 113037; PS3.16 CID 7011, the IHE IOCM rejection note) that references
  one of the node's result objects rejects that result's findings: a NEGATIVE. Rejecting only some
  findings is done by editing the SEG.

Each examined instance gets one :class:`~dicomnode.store.models.SiteLabel` row (``ignored`` with the
reason when it is not a label), with its provenance: who (Content Creator's Name), when (Content
Date/Time), which study and which of our results it corrects (the one it references, else the
study's newest SEG). Nothing here re-opens or re-processes a study. Values read from the objects are
checked text before they reach the database; logs carry row ids only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dicomnode.dicom.sop import CORRECTION_KINDS, ResultKind
from dicomnode.store.db import Database
from dicomnode.store.models import (
    Instance,
    Job,
    JobState,
    LabelKind,
    ResultObject,
    SiteLabel,
)
from dicomnode.store.spool import Spool

log = logging.getLogger(__name__)

#: Rejection note titles (PS3.16 CID 7011), DCM scheme.
REJECTION_TITLES = frozenset({"113001", "113037"})
LESION_CATEGORY = ("49755003", ("SCT", "SRT"))  # Morphologically Abnormal Structure (CID 7150)
_TEXT = re.compile(r"[^\x20-\x7e]")
_STAMP = re.compile(r"[^0-9.]")


@dataclass(frozen=True)
class OurResults:
    """What the node made for one study: its result objects, their series, and its SEGs (id, UID)."""

    processed: bool
    sop_instance_uids: frozenset[str] = frozenset()
    series_instance_uids: frozenset[str] = frozenset()
    segs: tuple[tuple[int, str], ...] = ()  # oldest first
    by_sop: dict[str, int] = field(default_factory=dict)  # SOP Instance UID → ResultObject id


@dataclass(frozen=True)
class Verdict:
    kind: LabelKind
    reason: str
    corrects_result_id: int | None = None
    creator: str | None = None
    content_at: str | None = None


def checked_text(value: object, limit: int) -> str | None:
    """Network text made safe to store: printable ASCII only, at most ``limit`` characters."""
    text = _TEXT.sub("?", str(value or "")).strip()[:limit]
    return text or None


def _is_lesion_segment(segment: Dataset) -> bool:
    value, schemes = LESION_CATEGORY
    return any(code.get("CodeValue") == value and code.get("CodingSchemeDesignator") in schemes
               for code in segment.get("SegmentedPropertyCategoryCodeSequence", []))


def _segment_of_frames(ds: Dataset, frames: int) -> list[int | None]:
    groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    numbers: list[int | None] = []
    for index in range(frames):
        ident = groups[index].get("SegmentIdentificationSequence") if index < len(groups) else None
        numbers.append(int(ident[0].ReferencedSegmentNumber) if ident else None)
    return numbers


def seg_marks_lesions(ds: Dataset) -> bool | None:
    """True when the SEG's lesion segments mark any pixel, False when they are all empty, None when
    it has no lesion segment (not a lesion label at all)."""
    segments = {int(s.SegmentNumber): s for s in ds.get("SegmentSequence", [])}
    lesions = {number for number, segment in segments.items() if _is_lesion_segment(segment)}
    if not lesions:
        return None
    if "PixelData" not in ds or int(ds.get("NumberOfFrames", 1) or 0) == 0:
        return False
    frames = ds.pixel_array
    frames = frames[np.newaxis] if frames.ndim == 2 else frames
    numbers = _segment_of_frames(ds, len(frames))
    only = next(iter(segments)) if len(segments) == 1 else None
    return any(bool(frame.any()) for frame, number in zip(frames, numbers, strict=True)
               if (number if number is not None else only) in lesions)


def _referenced_uids(ds: Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in the data set (evidence, content tree, series)."""
    found: set[str] = set()

    def walk(items: Iterable[Dataset]) -> None:
        for item in items:
            for element in item:
                if element.VR == "SQ":
                    walk(element.value)
                elif element.keyword == "ReferencedSOPInstanceUID":
                    found.add(str(element.value))

    walk([ds])
    return found


def _title(ds: Dataset) -> str | None:
    names = ds.get("ConceptNameCodeSequence") or []
    if names and names[0].get("CodingSchemeDesignator") == "DCM":
        return str(names[0].get("CodeValue"))
    return None


def classify(ds: Dataset, ours: OurResults, manufacturer: str) -> Verdict:
    """The label a stored SEG/SR/KO is, by the rules of the module docstring."""
    creator = checked_text(ds.get("ContentCreatorName"), 64)
    stamp = _STAMP.sub("", f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}")[:32] or None

    def verdict(kind: LabelKind, reason: str, result: int | None = None) -> Verdict:
        return Verdict(kind, reason, result, creator, stamp)

    if not ours.processed:
        return verdict(LabelKind.IGNORED, "about a study the node has not processed")
    if str(ds.get("SOPInstanceUID", "")) in ours.sop_instance_uids \
            or str(ds.get("SeriesInstanceUID", "")) in ours.series_instance_uids:
        return verdict(LabelKind.IGNORED, "one of the node's own results")
    if str(ds.get("Manufacturer", "")).strip() == manufacturer:
        return verdict(LabelKind.IGNORED, "made by this node (its Manufacturer)")
    referenced = [ours.by_sop[uid] for uid in _referenced_uids(ds) if uid in ours.by_sop]
    if ds.get("SOPClassUID") == SegmentationStorage:
        target = referenced[0] if referenced else (ours.segs[-1][0] if ours.segs else None)
        marks = seg_marks_lesions(ds)
        if marks is None:
            return verdict(LabelKind.IGNORED, "a SEG without a lesion segment (CID 7150, SCT 49755003)")
        if marks:
            return verdict(LabelKind.POSITIVE, "a SEG marking lesions", target)
        return verdict(LabelKind.NEGATIVE, "a SEG whose lesion segments are empty", target)
    if _title(ds) in REJECTION_TITLES and referenced:
        return verdict(LabelKind.NEGATIVE, f"a rejection note (DCM {_title(ds)}) of the node's results", referenced[0])
    return verdict(LabelKind.IGNORED, "an SR or Key Object that rejects none of the node's results")


def our_results(session, study_id: int) -> OurResults:
    """What the node made for a study (from ``job`` and ``result_object``)."""
    rows = session.execute(
        select(ResultObject.id, ResultObject.kind, ResultObject.sop_instance_uid, ResultObject.series_instance_uid)
        .join(Job, Job.id == ResultObject.job_id)
        .where(Job.study_id == study_id, Job.state == JobState.DONE).order_by(ResultObject.id)).all()
    return OurResults(processed=bool(rows), sop_instance_uids=frozenset(r.sop_instance_uid for r in rows),
                      series_instance_uids=frozenset(r.series_instance_uid for r in rows),
                      segs=tuple((r.id, r.sop_instance_uid) for r in rows if r.kind is ResultKind.SEG),
                      by_sop={r.sop_instance_uid: r.id for r in rows})


def examine_new(database: Database, spool: Spool, manufacturer: str) -> list[SiteLabel]:
    """Examine every stored SEG/SR/KO no pass has examined yet; record one ``site_label`` row each."""
    with database.session() as session:
        examined = select(SiteLabel.instance_id)
        pending: Sequence[Instance] = session.scalars(
            select(Instance).where(Instance.kind.in_(CORRECTION_KINDS), Instance.superseded.is_(False),
                                   Instance.purged_at.is_(None), Instance.id.not_in(examined))
            .order_by(Instance.id)).all()
        work = [(row.id, row.study_id, row.path) for row in pending]
    recorded: list[SiteLabel] = []
    for instance_id, study_id, path in work:
        with database.session() as session:
            ours = our_results(session, study_id)
        if not ours.processed:
            continue  # not yet processed: a later pass looks again
        try:
            found = classify(pydicom.dcmread(spool.absolute(path)), ours, manufacturer)
        except (InvalidDicomError, OSError, ValueError, AttributeError, TypeError) as exc:
            found = Verdict(LabelKind.IGNORED, f"unreadable as a correction ({type(exc).__name__})")
        row = SiteLabel(instance_id=instance_id, study_id=study_id, kind=found.kind, reason=found.reason,
                        corrects_result_id=found.corrects_result_id, creator=found.creator,
                        content_at=found.content_at)
        try:
            with database.session(write=True) as session:
                session.add(row)
                session.flush()
                session.expunge(row)
        except IntegrityError:  # another pass (serve's, or a concurrent learn) recorded it first
            continue
        recorded.append(row)
        log.info("correction examined", extra={"instance": instance_id, "study": study_id, "label": found.kind.value})
    return recorded
