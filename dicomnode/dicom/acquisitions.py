"""A bone exam as cameras send it → its whole-body acquisitions, each segmentable on its own.

Every acquisition, whatever its :class:`AcquisitionKind`, meets the :class:`Acquisition` contract
(key, label, source datasets, notes, refusal, content fingerprint); the pipeline maps its kind to a
model and a result builder (:mod:`dicomnode.pipeline.kinds`) and never asks which class it is.

A real exam is not one whole-body instance (docs/dicom.md, "What a camera sends"): next to the
whole-body scan come statics (anterior/posterior and oblique spot views), a TOMO acquisition and its
reconstruction, screen captures, sometimes a second whole-body scan (two-phase protocols) or a
re-acquired view. This module decides, from the headers alone:

* :func:`nm_image_kind`: what an NM Image Storage instance is, from Image Type (0008,0008) value 3
  (PS3.3 C.8.4.9.1.1: STATIC, DYNAMIC, GATED, WHOLE BODY, TOMO, GATED TOMO, RECON TOMO, RECON GATED
  TOMO). Only WHOLE BODY is a bone-scan projection that this node segments; an instance without value
  3 is taken as whole body only if its matrix is one (:func:`whole_body_matrix`), with a note.
* :func:`split_acquisitions`: the whole-body instances of one study grouped into acquisitions:

  - an instance holding both views (two frames, one per detector) is one acquisition;
  - one-view instances of the same series and matrix are paired: if each view appears the same
    number of times (n ≥ 2), the k-th anterior and the k-th posterior by acquisition time form the
    k-th phase (two-phase protocols); otherwise the latest instance of each view by acquisition time
    supersedes the earlier ones (a re-acquired view), with a note;
  - an acquisition whose instances disagree on patient identity (Patient ID, Patient's Sex, Patient's
    Birth Date) is not merged but marked not processable.
* :func:`bone_scan_refusal`: why an acquisition is not a bone scan to segment (a matrix that is not
  whole-body, a stated radiopharmaceutical that is not a bone agent, a flood or phantom), or ``None``.
* :func:`study_tracer_refusal`: why a whole study is not a bone scan, from all of its evidence (a
  sestamibi study whose TOMO states "Sestamibi" while its whole-body instances state no agent):
  any instance's stated radiopharmaceutical, then the study and series descriptions naming another
  examination's tracer (MIBI, tetrofosmin, MAG3, DMSA, pertechnetate, MAA, HMPAO, gallium, ...);
  where neither says anything (:func:`tracer_stated`), the image decides (:mod:`dicomnode.segmentation.skeleton`).
* :func:`split_hybrid`: each RECON TOMO volume (a :class:`VolumeAcquisition`) with the CT series of its Frame of Reference, a bone
  SPECT/CT acquisition (paper 003; docs/segmentation.md), or alone, a SPECT-only one; refused
  (:func:`tracer_refusal`) when its radiopharmaceutical is not a bone agent (a myocardial perfusion
  SPECT) or a description names a QC acquisition. A later reconstruction of the same acquisition
  (the same Series Description and Acquisition Date/Time, reconstructed later: Content, else Series
  Date/Time) supersedes the earlier, as a re-acquired whole-body view does, with a note.

Views themselves are decided by :mod:`dicomnode.segmentation.views`; a view rule error makes the acquisition
not processable with that reason. Nothing here reads pixel data.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol, Self

from pydicom.dataset import Dataset
from pydicom.uid import NuclearMedicineImageStorage

from dicomnode.segmentation.scan import View, ViewError
from dicomnode.segmentation.viewrules import frame_count, stated_views


class NMImageKind(str, Enum):
    """Image Type (0008,0008) value 3 of an NM image (PS3.3 C.8.4.9.1.1), as stored in the index."""

    WHOLE_BODY = "whole-body"
    STATIC = "static"
    DYNAMIC = "dynamic"
    GATED = "gated"
    TOMO = "tomo"
    GATED_TOMO = "gated-tomo"
    RECON_TOMO = "recon-tomo"
    RECON_GATED_TOMO = "recon-gated-tomo"
    OTHER = "nm-other"  # value 3 absent or unknown, and not a whole-body matrix


_IMAGE_TYPE_VALUE_3 = {
    "WHOLE BODY": NMImageKind.WHOLE_BODY,
    "STATIC": NMImageKind.STATIC,
    "DYNAMIC": NMImageKind.DYNAMIC,
    "GATED": NMImageKind.GATED,
    "TOMO": NMImageKind.TOMO,
    "GATED TOMO": NMImageKind.GATED_TOMO,
    "RECON TOMO": NMImageKind.RECON_TOMO,
    "RECON GATED TOMO": NMImageKind.RECON_GATED_TOMO,
}

#: A whole-body pass is a long strip: at least this many columns, and at least twice as many rows.
MIN_WHOLE_BODY_COLUMNS = 64


def whole_body_matrix(ds: Dataset) -> bool:
    """Rows × Columns of a whole-body pass (e.g. 1024 × 256): rows ≥ 2 × columns ≥ 2 × 64."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    return columns >= MIN_WHOLE_BODY_COLUMNS and rows >= 2 * columns


def nm_image_kind(ds: Dataset) -> tuple[NMImageKind, str | None]:
    """The kind of an NM image and, when it had to be inferred, a note saying how."""
    values = [str(v).strip().upper() for v in ds.get("ImageType", [])]
    stated = values[2] if len(values) >= 3 else ""
    if stated in _IMAGE_TYPE_VALUE_3:
        return _IMAGE_TYPE_VALUE_3[stated], None
    shown = "\\".join(values)[:64] or "(empty)"
    if whole_body_matrix(ds):
        return NMImageKind.WHOLE_BODY, (
            f"Image Type (0008,0008) {shown} has no known value 3; taken as WHOLE BODY from its "
            f"{ds.get('Rows')} x {ds.get('Columns')} matrix"
        )
    return NMImageKind.OTHER, f"Image Type (0008,0008) {shown} has no known value 3"


class AcquisitionKind(str, Enum):
    """What an acquisition is, and so which model segments it and which results it gets
    (:data:`dicomnode.pipeline.kinds.KINDS`)."""

    PLANAR_WHOLE_BODY = "planar-whole-body"
    SPECT_CT = "spect-ct"  # a RECON TOMO volume with the CT series of its Frame of Reference
    SPECT_ONLY = "spect-only"  # a RECON TOMO volume without one


class Acquisition(Protocol):
    """The contract every acquisition meets. ``key`` is stable across re-sends of the same content
    and names it in the index; ``label`` names it for people; ``refusal`` says why it cannot be
    segmented (``None``: it can); ``notes`` go into its results."""

    @property
    def key(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def kind(self) -> AcquisitionKind: ...
    @property
    def datasets(self) -> tuple[Dataset, ...]: ...
    @property
    def notes(self) -> tuple[str, ...]: ...
    @property
    def refusal(self) -> str | None: ...
    def refused(self, reason: str) -> Self: ...


def sop_instance_uids(acquisition: Acquisition) -> tuple[str, ...]:
    """The SOP Instance UIDs of an acquisition's source datasets, sorted."""
    return tuple(sorted(str(ds.SOPInstanceUID) for ds in acquisition.datasets))


def content_fingerprint(acquisition: Acquisition, sha256_of: Mapping[str, str]) -> str:
    """One hash over the content hashes (SOP Instance UID → SHA-256) of an acquisition's instances,
    independent of their order: the same content gives the same fingerprint, and so the same outcome."""
    digests = sorted(sha256_of[uid] for uid in sop_instance_uids(acquisition))
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


@dataclass(frozen=True)
class PlanarAcquisition:
    """One whole-body acquisition: the instances that make its views (:class:`Acquisition`).

    ``key``: series + matrix, or the instance that holds both views, plus a phase number; ``label``:
    series description, acquisition date and time.
    """

    key: str
    label: str
    datasets: tuple[Dataset, ...]
    notes: tuple[str, ...] = ()
    refusal: str | None = None  # why it is not processable; None when it is

    @property
    def kind(self) -> AcquisitionKind:
        return AcquisitionKind.PLANAR_WHOLE_BODY

    def refused(self, reason: str) -> PlanarAcquisition:
        """This acquisition, not processable for ``reason`` unless it already was."""
        return replace(self, refusal=self.refusal or reason)


@dataclass
class _Candidate:
    dataset: Dataset
    views: list[View | None] = field(default_factory=list)
    error: str | None = None

    @property
    def uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def acquired_at(ds: Dataset) -> str:
    """A sortable acquisition time: Acquisition DateTime, else Acquisition Date + Time, else Content
    Date + Time (PS3.3 C.7.6.1), padded so that missing parts sort first; '' when nothing is stated."""
    stamp = str(ds.get("AcquisitionDateTime", "") or "")
    if not stamp:
        stamp = f"{ds.get('AcquisitionDate', '') or ''}{ds.get('AcquisitionTime', '') or ''}"
    if not stamp:
        stamp = f"{ds.get('ContentDate', '') or ''}{ds.get('ContentTime', '') or ''}"
    return re.sub(r"[^0-9.]", "", stamp)[:26]


def _order(ds: Dataset) -> tuple[str, int]:
    number = ds.get("InstanceNumber")
    return acquired_at(ds), int(number) if number not in (None, "") else 0


def split_acquisitions(datasets: Sequence[Dataset]) -> list[PlanarAcquisition]:
    """The whole-body acquisitions of one study's whole-body NM instances (module docstring).

    Returned in acquisition-time order; each is either processable or carries its ``refusal``.
    """
    candidates = []
    for ds in datasets:
        if ds.get("SOPClassUID") != NuclearMedicineImageStorage:
            continue
        candidate = _Candidate(ds)
        try:
            candidate.views = [None if stated is None else stated[0] for stated in stated_views(ds)]
        except ViewError as exc:
            candidate.error = str(exc)
        candidates.append(candidate)
    acquisitions: list[PlanarAcquisition] = []
    groups: dict[tuple[str, int, int], list[_Candidate]] = defaultdict(list)
    for candidate in candidates:
        ds = candidate.dataset
        if candidate.error is not None or frame_count(ds) > 1:
            acquisitions.append(_finish(f"instance {candidate.uid}", [candidate], []))
            continue
        groups[(str(ds.get("SeriesInstanceUID", "")), int(ds.Rows), int(ds.Columns))].append(candidate)
    for (series, rows, columns), members in groups.items():
        base = f"series {series} {rows}x{columns}"
        acquisitions.extend(_pair(base, sorted(members, key=lambda c: _order(c.dataset))))
    return sorted(acquisitions, key=lambda a: min(_order(ds) for ds in a.datasets))


def _pair(base: str, members: list[_Candidate]) -> list[PlanarAcquisition]:
    """One series' one-view instances (time order) → one acquisition, or one per phase."""
    by_view: dict[View, list[_Candidate]] = defaultdict(list)
    for member in members:
        if member.views[0] is not None:
            by_view[member.views[0]].append(member)
    undecided = [member for member in members if member.views[0] is None]
    anterior, posterior = by_view[View.ANTERIOR], by_view[View.POSTERIOR]
    if not undecided and len(anterior) == len(posterior) >= 2:
        return [
            _finish(f"{base} phase {phase}", [ant, post],
                    [f"phase {phase} of {len(anterior)}: anterior and posterior paired by acquisition time"])
            for phase, (ant, post) in enumerate(zip(anterior, posterior, strict=True), start=1)
        ]
    notes: list[str] = []
    kept = list(undecided)
    for view, group in by_view.items():
        if not group:
            continue
        latest = group[-1]
        for earlier in group[:-1]:
            notes.append(f"{view.value} view re-acquired: instance {latest.uid} (acquired "
                         f"{acquired_at(latest.dataset) or 'later'}) supersedes instance {earlier.uid}")
        kept.append(latest)
    return [_finish(base, kept, notes)]


def _finish(key: str, members: list[_Candidate], notes: list[str]) -> PlanarAcquisition:
    datasets = tuple(member.dataset for member in members)
    first = min(datasets, key=_order)
    description = str(first.get("SeriesDescription", "") or "whole body")[:64]
    when = acquired_at(first)
    label = f"{description} {when[:8]} {when[8:12]}".strip() if when else description
    errors = [member.error for member in members if member.error]
    refusal = errors[0] if errors else _identity_refusal(datasets) or bone_scan_refusal(datasets)
    return PlanarAcquisition(key=key, label=label, datasets=datasets, notes=tuple(notes), refusal=refusal)


#: Patient identity attributes that must agree between the views of one acquisition (PS3.3 C.7.1.1).
IDENTITY_KEYWORDS = (("PatientID", "Patient ID"), ("PatientSex", "Patient's Sex"),
                     ("PatientBirthDate", "Patient's Birth Date"))


def _identity_refusal(datasets: Sequence[Dataset]) -> str | None:
    """Views of different patients are never merged; the values themselves are not repeated."""
    for keyword, name in IDENTITY_KEYWORDS:
        values = {str(ds.get(keyword, "") or "").strip() for ds in datasets}
        values.discard("")
        if len(values) > 1:
            return f"the views disagree on patient identity ({name}); not merged"
    return None


#: 99mTc bone agents (CID 25 codes and the names written in Radiopharmaceutical (0018,0031)).
BONE_AGENT_CODES = frozenset({"96390006", "53951001", "764821009"})  # medronate, oxidronate, pyrophosphate
_BONE_AGENT_WORDS = re.compile(r"MDP|HDP|HMDP|DPD|MEDRONATE|OXIDRONATE|DIPHOSPHONATE|PYROPHOSPHATE|"
                               r"PHOSPHONATE|HEDP|BONE")
_NOT_PATIENT_WORDS = re.compile(r"(?<![A-Z])(FLOOD|PHANTOM|UNIFORMITY|QC|COR|CALIBRATION|SYRINGE)(?![A-Z])")
_DESCRIPTIONS = ("SeriesDescription", "StudyDescription", "ProtocolName", "ImageComments", "ImageID")


def bone_scan_refusal(datasets: Sequence[Dataset]) -> str | None:
    """Why these whole-body instances are not a bone scan to segment, or ``None`` (module docstring)."""
    for ds in datasets:
        if not whole_body_matrix(ds):
            return (f"matrix {ds.get('Rows')} x {ds.get('Columns')} is not a whole-body scan "
                    f"(needs rows >= 2 x columns >= {2 * MIN_WHOLE_BODY_COLUMNS})")
        refusal = tracer_refusal(ds)
        if refusal is not None:
            return refusal
    return None


def tracer_refusal(ds: Dataset) -> str | None:
    """Why ``ds`` (a whole-body scan or a SPECT reconstruction) is not a patient's bone scan: a stated
    radiopharmaceutical that is not a 99mTc bone agent, or a description naming a QC acquisition."""
    agent = _radiopharmaceutical(ds)
    if agent is not None and not agent[1]:
        return f"radiopharmaceutical {agent[0]!r} is not a 99mTc bone agent"
    for keyword in _DESCRIPTIONS:
        found = _NOT_PATIENT_WORDS.search(str(ds.get(keyword, "") or "").upper())
        if found:
            return f"a {found.group(1).lower()} acquisition ({keyword}), not a patient bone scan"
    return None


#: Words of a study or series description that name a tracer or examination other than a bone scan.
_OTHER_TRACER_WORDS = re.compile(
    r"(?<![A-Z0-9])(MIBI|SESTAMIBI|CARDIOLITE|TETROFOSMIN|MYOVIEW|MAG[ -]?3|MERTIATIDE|DMSA|SUCCIMER|DTPA|"
    r"PENTETATE|PERTECHNETATE|TCO4|MAA|MACROAGGREGATED|HMPAO|EXAMETAZIME|ECD|BICISATE|MEBROFENIN|HIDA|"
    r"DISIDA|GALLIUM|GA[ -]?67|GA[ -]?68|CITRATE|IODINE|I[ -]?123|I[ -]?131|MIBG|IOBENGUANE|IOFLUPANE|DATSCAN|"
    r"OCTREO\w*|THALLIUM|TL[ -]?201|INDIUM|IN[ -]?111|SULFUR COLLOID|NANOCOLL|SENTINEL|LYMPHOSCINT\w*|"
    r"PARATHYROID|THYROID|RENOGRA\w*|RENAL|MYOCARD\w*|PERFUSION|MUGA|HEPATOBILIARY|GASTRIC)(?![A-Z0-9])")
_STUDY_DESCRIPTIONS = ("StudyDescription", "SeriesDescription", "ProtocolName", "RequestedProcedureDescription",
                       "PerformedProcedureStepDescription")


def study_tracer_refusal(datasets: Sequence[Dataset]) -> str | None:
    """Why the study of these NM instances (every kind: whole body, statics, TOMO, reconstructions) is
    not a bone scan, deciding from all of its evidence as a physician would, or ``None``:

    1. a stated radiopharmaceutical (any instance) decides: a non-bone agent stated somewhere and a
       bone agent nowhere refuses the whole study, also the instances that state none;
    2. where no instance states one, a study or series description naming another examination's
       tracer (:data:`_OTHER_TRACER_WORDS`) refuses it, unless a description names a bone agent.
    """
    agents = [agent for agent in map(_radiopharmaceutical, datasets) if agent is not None]
    if agents:
        other = [name for name, bone in agents if not bone]
        if other and not any(bone for _, bone in agents):
            return f"the study states radiopharmaceutical {other[0]!r}, not a 99mTc bone agent"
        return None
    descriptions = _study_descriptions(datasets)
    if any(_BONE_AGENT_WORDS.search(text) or "SKELET" in text for text in descriptions):
        return None
    for text in sorted(descriptions):
        found = _OTHER_TRACER_WORDS.search(text)
        if found:
            return (f"the study's description names {found.group(1).lower()!r}, not a bone scan "
                    "(no radiopharmaceutical stated)")
    return None


def tracer_stated(datasets: Sequence[Dataset]) -> bool:
    """Whether the study's headers say what was injected: a radiopharmaceutical stated by any
    instance, or a description naming a bone agent or another examination's tracer. Where they do
    not, the image decides (:mod:`dicomnode.segmentation.skeleton`)."""
    if any(_radiopharmaceutical(ds) is not None for ds in datasets):
        return True
    return any(_BONE_AGENT_WORDS.search(text) or "SKELET" in text or _OTHER_TRACER_WORDS.search(text)
               for text in _study_descriptions(datasets))


def _study_descriptions(datasets: Sequence[Dataset]) -> set[str]:
    return {str(ds.get(keyword, "") or "").upper() for ds in datasets for keyword in _STUDY_DESCRIPTIONS}


def _radiopharmaceutical(ds: Dataset) -> tuple[str, bool] | None:
    """(name as shown, is a bone agent) from the Radiopharmaceutical Information Sequence (C.8.4.10)."""
    for item in ds.get("RadiopharmaceuticalInformationSequence", []):
        for code in item.get("RadiopharmaceuticalCodeSequence", []):
            value = str(code.get("CodeValue", ""))
            meaning = str(code.get("CodeMeaning", "") or value)
            if value:
                return _printable(meaning), value in BONE_AGENT_CODES or bool(
                    _BONE_AGENT_WORDS.search(meaning.upper()))
        name = str(item.get("Radiopharmaceutical", "") or "").strip()
        if name:
            return _printable(name), bool(_BONE_AGENT_WORDS.search(name.upper()))
    return None


def _printable(text: str) -> str:
    return re.sub(r"[^ -~]", "?", text)[:48]


@dataclass(frozen=True)
class VolumeAcquisition:
    """A reconstructed SPECT volume and the CT series that shares its Frame of Reference (paper 003),
    an :class:`Acquisition` of kind SPECT/CT; without a CT (``ct`` empty), of kind SPECT-only
    (segmented on the NM volume's own grid by the SPECT-only model).
    """

    key: str
    label: str
    spect: Dataset
    ct: tuple[Dataset, ...] = ()
    refusal: str | None = None
    notes: tuple[str, ...] = ()  # written into the SR (a reconstruction it supersedes)

    @property
    def kind(self) -> AcquisitionKind:
        return AcquisitionKind.SPECT_CT if self.ct else AcquisitionKind.SPECT_ONLY

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        return (self.spect, *self.ct)

    def refused(self, reason: str) -> VolumeAcquisition:
        """This acquisition, not processable for ``reason`` unless it already was."""
        return replace(self, refusal=self.refusal or reason)


def split_hybrid(recon_tomo: Sequence[Dataset], ct: Sequence[Dataset]) -> list[VolumeAcquisition]:
    """One hybrid acquisition per RECON TOMO instance, with the CT series of its Frame of Reference.

    The Frame of Reference UID (0020,0052) is what says that two series share patient coordinates
    (PS3.3 C.7.4.1.1.1); where several CT series share it, the one with the most slices is taken
    (the diagnostic-extent series rather than a scout or a single slice). A volume without a Frame of
    Reference, or without a CT series in it, is SPECT-only.
    """
    series: dict[tuple[str, str], list[Dataset]] = defaultdict(list)
    for ds in ct:
        series[(str(ds.get("FrameOfReferenceUID", "") or ""), str(ds.SeriesInstanceUID))].append(ds)
    acquisitions = []
    for spect, superseded in _latest_reconstructions(recon_tomo):
        frame = str(spect.get("FrameOfReferenceUID", "") or "")
        candidates = [slices for (reference, _), slices in series.items() if frame and reference == frame]
        chosen = tuple(max(candidates, key=len)) if candidates else ()
        label = f"{str(spect.get('SeriesDescription', '') or 'SPECT')[:48]} {acquired_at(spect)[:8]}".strip()
        notes = tuple(f"This reconstruction (series {spect.SeriesInstanceUID}, reconstructed "
                      f"{_reconstructed_at(spect) or 'later'}) supersedes the earlier reconstruction of the same "
                      f"acquisition (series {earlier.SeriesInstanceUID}, reconstructed "
                      f"{_reconstructed_at(earlier) or 'earlier'}); results of the earlier one are replaced by these."
                      for earlier in superseded)
        acquisitions.append(VolumeAcquisition(key=f"spect {spect.SOPInstanceUID}", label=label, spect=spect,
                                              ct=chosen, refusal=tracer_refusal(spect), notes=notes))
    return acquisitions


def _reconstructed_at(ds: Dataset) -> str:
    """When a reconstruction was made: Content Date + Time, else Series Date + Time (PS3.3 C.7.6.1,
    C.7.3.1), digits only; '' when neither is stated."""
    for date, time in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime")):
        stamp = f"{ds.get(date, '') or ''}{ds.get(time, '') or ''}"
        if stamp:
            return re.sub(r"[^0-9.]", "", stamp)[:26]
    return ""


def _latest_reconstructions(recon_tomo: Sequence[Dataset]) -> list[tuple[Dataset, list[Dataset]]]:
    """Each RECON TOMO volume to segment with the earlier reconstructions of the same acquisition it
    supersedes (module docstring); volumes without a stated acquisition time supersede nothing."""
    groups: dict[tuple[str, str], list[Dataset]] = defaultdict(list)
    kept: list[tuple[Dataset, list[Dataset]]] = []
    for spect in sorted(recon_tomo, key=_order):
        when = acquired_at(spect)
        if when:
            groups[(str(spect.get("SeriesDescription", "") or "").strip().upper(), when)].append(spect)
        else:
            kept.append((spect, []))
    for members in groups.values():
        members.sort(key=lambda ds: (_reconstructed_at(ds), str(ds.SeriesInstanceUID)))
        kept.append((members[-1], members[:-1]))
    return sorted(kept, key=lambda item: _order(item[0]))
