"""Lesion labels from DICOM Segmentation objects, e.g. a SEG a physician corrected and sent back.

A SEG frame says which source frame it segments through its Derivation Image Sequence > Source Image
Sequence (Referenced SOP Instance UID and Referenced Frame Number; PS3.3 C.7.6.16.2.6 and
C.8.20.2; dclunie in highdicom issue 159: "frame mapping must go through DerivationImageSequence").
The mask is in the stored layout of that source frame. Segments count as lesion labels when their
Segmented Property Category is "Morphologically Abnormal Structure" (SCT 49755003, CID 7150), the
category our own SEG uses (docs/dicom.md); other segments (a bone mask, say) are not lesion labels.

Only human labels train a model by default: segments with Segment Algorithm Type ``MANUAL`` or
``SEMIAUTOMATIC`` (PS3.3 C.8.20.4). An ``AUTOMATIC`` segment is a model's output; training on it would
teach the model its own mistakes, so it is skipped unless asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import SegmentationStorage

log = logging.getLogger(__name__)

MORPHOLOGICALLY_ABNORMAL_STRUCTURE = ("49755003", ("SCT", "SRT"))
HUMAN_ALGORITHM_TYPES = frozenset({"MANUAL", "SEMIAUTOMATIC"})


class SegLabelError(ValueError):
    """A SEG that cannot serve as a lesion label; the message says why."""


@dataclass(frozen=True)
class SegLabel:
    """The lesion mask a SEG gives for one source frame."""

    seg_sop_instance_uid: str
    source_sop_instance_uid: str
    source_frame_number: int  # 1-based
    mask: np.ndarray  # uint8 0/1 in the stored layout of the source frame
    algorithm_types: frozenset[str]
    content_datetime: str  # ContentDate + ContentTime, for choosing the newest correction


def _is_lesion_segment(segment: Dataset) -> bool:
    for code in segment.get("SegmentedPropertyCategoryCodeSequence", []):
        value, schemes = MORPHOLOGICALLY_ABNORMAL_STRUCTURE
        if code.get("CodeValue") == value and code.get("CodingSchemeDesignator") in schemes:
            return True
    return False


def _frame_source(ds: Dataset, index: int) -> tuple[str, int]:
    """(Referenced SOP Instance UID, Referenced Frame Number) of SEG frame ``index`` (0-based)."""
    frame_groups = ds.get("PerFrameFunctionalGroupsSequence")
    if frame_groups is not None and index < len(frame_groups):
        derivation = frame_groups[index].get("DerivationImageSequence")
        if derivation:
            sources = derivation[0].get("SourceImageSequence")
            if sources:
                source = sources[0]
                frame = source.get("ReferencedFrameNumber", 1)
                if isinstance(frame, MultiValue):
                    frame = frame[0]
                return str(source.ReferencedSOPInstanceUID), int(frame)
    # No derivation: acceptable only when the SEG references exactly one single source instance.
    referenced = [
        instance
        for series in ds.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedInstanceSequence", [])
    ]
    if len(referenced) == 1:
        return str(referenced[0].ReferencedSOPInstanceUID), 1
    raise SegLabelError(
        f"SEG {ds.get('SOPInstanceUID', '?')}: frame {index + 1} names no source frame "
        "(no Derivation Image Sequence) and the SEG references more than one instance"
    )


def _segment_of_frame(ds: Dataset, index: int, segments: dict[int, Dataset]) -> int:
    """Segment number of frame ``index``: per-frame, else shared Segment Identification (PS3.3 C.8.20.3)."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence") or [], ds.get("SharedFunctionalGroupsSequence") or []):
        item = groups[index] if len(groups) > 1 else (groups[0] if groups else None)
        ident = item.get("SegmentIdentificationSequence") if item is not None else None
        if ident:
            return int(ident[0].ReferencedSegmentNumber)
    if len(segments) == 1:
        return next(iter(segments))
    raise SegLabelError(
        f"{ds.get('SOPInstanceUID', '?')}: frame {index + 1} has no Segment Identification Sequence"
    )


def read_seg_labels(ds: Dataset, *, accept_automatic: bool = False) -> list[SegLabel]:
    """One :class:`SegLabel` per source frame that has lesion segments in this SEG (maybe none)."""
    uid = str(ds.get("SOPInstanceUID", "?"))
    if ds.get("SOPClassUID") != SegmentationStorage:
        raise SegLabelError(f"{uid}: SOP Class {ds.get('SOPClassUID')} is not Segmentation Storage")
    segments = {int(s.SegmentNumber): s for s in ds.get("SegmentSequence", [])}
    wanted: dict[int, str] = {}
    for number, segment in segments.items():
        kind = str(segment.get("SegmentAlgorithmType", "")).upper()
        if not _is_lesion_segment(segment):
            log.info("SEG %s segment %d is not a lesion segment; skipped", uid, number)
        elif kind not in HUMAN_ALGORITHM_TYPES and not accept_automatic:
            log.info("SEG %s segment %d is %s, not a human label; skipped", uid, number, kind or "untyped")
        else:
            wanted[number] = kind
    if not wanted:
        return []
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    fractional = str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    limit = float(ds.get("MaximumFractionalValue", 255)) if fractional else 1.0
    frame_groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(frame_groups) not in (0, len(frames)):
        raise SegLabelError(f"{uid}: {len(frames)} frames but {len(frame_groups)} per-frame groups")

    masks: dict[tuple[str, int], np.ndarray] = {}
    kinds: dict[tuple[str, int], set[str]] = {}
    for index, frame in enumerate(frames):
        number = _segment_of_frame(ds, index, segments)
        if number not in wanted:
            continue
        key = _frame_source(ds, index)
        binary = (frame.astype(np.float32) / limit >= 0.5) if fractional else frame > 0
        masks[key] = masks.get(key, np.zeros(frame.shape, dtype=np.uint8)) | binary.astype(np.uint8)
        kinds.setdefault(key, set()).add(wanted[number])
    stamp = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
    return [
        SegLabel(uid, sop, frame, mask, frozenset(kinds[(sop, frame)]), stamp)
        for (sop, frame), mask in masks.items()
    ]
