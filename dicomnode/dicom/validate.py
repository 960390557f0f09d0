"""Checks of an incoming C-STORE data set, each failure with a DICOM status and a reason.

Part of "receive" in docs/architecture.md; which status answers what (0x0122, 0xA700, 0xA900, 0xC000,
and what is accepted with a warning) is the table of docs/conformance.md, §4.2.1.3.3 (Storage SCP), and the NM
rules are docs/dicom.md. :func:`inspect_instance` takes the data set bytes exactly as received, the
presentation context's transfer syntax and the command's Affected SOP Class / Instance UIDs, and
returns a :class:`ReceivedInstance` (what the index needs) or raises :class:`Refusal`. Values are read
from the received bytes with every declared length checked against them
(:mod:`dicomnode.dicom.parse`); inflating and decoding hold memory from a budget
(:mod:`dicomnode.dicom.budget`). Views are decided from the header by the worker's own rules
(:func:`dicomnode.segmentation.viewrules.instance_views`), never by a second parser here; the status
follows the kind of error (:mod:`dicomnode.dicom.status`), never its wording. What the data set
reader says about normal values (a vendor's long SH on every CT slice) is kept in
:attr:`ReceivedInstance.notes`, quoted values removed.
"""

from __future__ import annotations

import logging
import re
import warnings as warnings_module
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage,
    SegmentationStorage,
)

from dicomnode.dicom.budget import COPIES, UNLIMITED, BudgetExceeded, DecodeBudget, Hold
from dicomnode.dicom.parse import Refusal, brief, decoded_size, parse_dataset
from dicomnode.dicom.sop import (
    RECEIVED,
    SEGMENTED_KIND,
    SEGMENTED_KINDS,
    STORED_AS_SENT,
    ObjectKind,
    instance_kind,
)
from dicomnode.dicom.status import Status
from dicomnode.dicom.uids import UIDError, check_uid, uid_remark
from dicomnode.segmentation.scan import View, ViewError
from dicomnode.segmentation.viewrules import frame_count, instance_views
from dicomnode.segmentation.views import UndecodablePixels, frame_stack

log = logging.getLogger(__name__)

#: The fields of :class:`ReceivedInstance` that identify a patient: Patient ID (PS3.3 C.7.1.1) and
#: Accession Number (C.7.2.1). Logged only as structured fields under these names, which the node's
#: log handler drops unless ``[logging] include_patient_data`` (:mod:`dicomnode.ops.logs`).
PATIENT_FIELDS = frozenset({"patient_id", "accession_number"})



@dataclass(frozen=True)
class ReceivedInstance:
    """What the index needs from an accepted instance (all UIDs validated)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None = None
    accession_number: str | None = None
    kind: str = SEGMENTED_KIND  # Instance.kind: dicomnode.dicom.sop.instance_kind
    views: tuple[str, ...] = ()  # "anterior" / "posterior" as the instance states them (whole-body NM only)
    referenced_sop_instance_uids: frozenset[str] = frozenset()  # SEG: the sources it segments
    warnings: tuple[str, ...] = field(default=())
    #: what is normal for the class, from the data set reader (e.g. a vendor's SH longer than 16
    #: characters on every CT slice): logged once per series at INFO, values never quoted
    notes: tuple[str, ...] = field(default=())

    @property
    def patient_fields(self) -> dict[str, str | None]:
        """The :data:`PATIENT_FIELDS` of this instance, for a log record's ``extra``."""
        return {name: getattr(self, name) for name in PATIENT_FIELDS}

    @property
    def segmented(self) -> bool:
        """Content that the node segments (whole body, RECON TOMO, CT): a new one re-opens its study."""
        return self.kind in SEGMENTED_KINDS

    @property
    def is_seg(self) -> bool:
        """A SEG sent back by a viewer: accepted only with a source this node holds."""
        return self.kind == ObjectKind.SEG.value


def inspect_instance(dataset: bytes, *, transfer_syntax: str, sop_class_uid: str,
                     sop_instance_uid: str, budget: DecodeBudget = UNLIMITED) -> ReceivedInstance:
    """Check one received instance; return what the index needs or raise :class:`Refusal`.

    ``dataset`` is the data set exactly as received (no File Meta), ``transfer_syntax`` the
    presentation context's, the UIDs those of the C-STORE command. Inflating and decoding pixels
    hold memory from ``budget`` (:mod:`dicomnode.dicom.budget`; over it: 0xA700) until this returns.
    """
    if sop_class_uid not in RECEIVED:
        raise Refusal(Status.SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class_uid[:64]!r} is not accepted here")
    with budget.hold() as hold:
        try:
            return _inspect(dataset, UID(transfer_syntax), sop_class_uid, sop_instance_uid, hold)
        except BudgetExceeded as exc:
            raise Refusal(exc.status, exc.reason) from None


def _inspect(dataset: bytes, syntax: UID, sop_class_uid: str, sop_instance_uid: str, hold: Hold) -> ReceivedInstance:
    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        ds = parse_dataset(dataset, syntax, hold)
    notes = tuple(dict.fromkeys(_QUOTED.sub("'...'", str(w.message))[:160] for w in caught))
    warnings: list[str] = []
    _check_identity(ds, sop_class_uid, sop_instance_uid)
    study_uid = _uid(ds, "StudyInstanceUID", "Study Instance UID (0020,000D)")
    series_uid = _uid(ds, "SeriesInstanceUID", "Series Instance UID (0020,000E)")
    for uid, what in ((sop_instance_uid, "SOP Instance UID"), (study_uid, "Study Instance UID"),
                      (series_uid, "Series Instance UID")):
        remark = uid_remark(uid, what)
        if remark:
            warnings.append(remark)
    kind, note = instance_kind(ds, sop_class_uid)
    if note:
        warnings.append(note)
    if kind != ObjectKind.SR.value and kind not in STORED_AS_SENT:
        _check_pixel_module(ds, warnings)
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            hold.take(COPIES * decoded_size(ds), "decoded Pixel Data")
    views: tuple[str, ...] = _nm_views(ds, warnings) if kind == SEGMENTED_KIND else ()
    references = _seg_references(ds) if kind == ObjectKind.SEG.value else frozenset()
    return ReceivedInstance(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        kind=kind,
        patient_id=_text(ds, "PatientID", 64),
        accession_number=_text(ds, "AccessionNumber", 16),
        views=views,
        referenced_sop_instance_uids=references,
        warnings=tuple(warnings),
        notes=notes,
    )


# -- identity ---------------------------------------------------------------------------------------


def _uid(ds: Dataset, keyword: str, what: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        raise Refusal(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{what} is missing")
    try:
        return check_uid(str(value), what)
    except UIDError as exc:
        raise Refusal(Status.CANNOT_UNDERSTAND, str(exc)) from None


def _check_identity(ds: Dataset, sop_class_uid: str, sop_instance_uid: str) -> None:
    """SOP Class / Instance UIDs of the data set must be those of the command (as dcmtk storescp checks)."""
    try:
        check_uid(sop_instance_uid, "Affected SOP Instance UID (0000,1000)")
    except UIDError as exc:
        raise Refusal(Status.CANNOT_UNDERSTAND, str(exc)) from None
    dataset_class = _uid(ds, "SOPClassUID", "SOP Class UID (0008,0016)")
    if dataset_class != sop_class_uid:
        raise Refusal(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                      f"SOP Class UID (0008,0016) differs from the command's: {dataset_class} in the data set, "
                      f"{sop_class_uid} in the command")
    dataset_instance = _uid(ds, "SOPInstanceUID", "SOP Instance UID (0008,0018)")
    if dataset_instance != sop_instance_uid:
        raise Refusal(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                      f"SOP Instance UID (0008,0018) differs from the command's: {dataset_instance} in the data "
                      f"set, {sop_instance_uid} in the command")
    modality = RECEIVED[UID(sop_class_uid)][0]
    if modality is not None and str(ds.get("Modality", "")) != modality:
        raise Refusal(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                      f"Modality (0008,0060) {str(ds.get('Modality', ''))[:16]!r} is not {modality}")


# -- pixels -----------------------------------------------------------------------------------------

_PIXEL_ATTRIBUTES = {
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
    "BitsAllocated": "(0028,0100)",
    "BitsStored": "(0028,0101)",
    "HighBit": "(0028,0102)",
    "PixelRepresentation": "(0028,0103)",
    "SamplesPerPixel": "(0028,0002)",
    "PhotometricInterpretation": "(0028,0004)",
    "PixelData": "(7FE0,0010)",
}


#: Bits Allocated per kind of object: NM 8/16 (C.8.4.7), CT 16 (C.8.2.1.1.4), SEG 1/8 (C.8.20.2),
#: Secondary Capture 8/16 (C.8.6.2, C.8.6.3).
_ALLOWED_BITS: dict[ObjectKind | None, tuple[int, ...]] = {
    None: (8, 16), ObjectKind.CT: (16,), ObjectKind.SEG: (1, 8), ObjectKind.SECONDARY_CAPTURE: (8, 16),
}


#: Classes whose Number of Frames (0028,0008) is Type 1 (Multi-frame Module, PS3.3 C.7.6.6): only these
#: are warned about a missing one; CT and single-frame Secondary Capture images have none.
MULTI_FRAME_CLASSES = frozenset({NuclearMedicineImageStorage, SegmentationStorage,
                                 MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
                                 MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                                 MultiFrameTrueColorSecondaryCaptureImageStorage})
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")  # values quoted in a reader's warning (may be patient data)


def _check_pixel_module(ds: Dataset, warnings: list[str]) -> None:
    """Image Pixel Module (PS3.3 C.7.6.3) consistency, with each class's Bits Allocated."""
    mismatch = Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    for keyword, tag in _PIXEL_ATTRIBUTES.items():
        if ds.get(keyword) in (None, ""):
            raise Refusal(mismatch, f"{keyword} {tag} is missing")
    rows, columns = int(ds.Rows), int(ds.Columns)
    bits, stored, high = int(ds.BitsAllocated), int(ds.BitsStored), int(ds.HighBit)
    if rows <= 0 or columns <= 0:
        raise Refusal(mismatch, f"Rows {rows} x Columns {columns} is not an image")
    allowed_bits = _ALLOWED_BITS.get(RECEIVED[UID(ds.SOPClassUID)][1], (8, 16))
    if bits not in allowed_bits:
        raise Refusal(mismatch, f"Bits Allocated (0028,0100) {bits} is not one of {allowed_bits}")
    if not 1 <= stored <= bits or high != stored - 1:
        raise Refusal(mismatch, f"Bits Stored {stored} / High Bit {high} do not fit Bits Allocated {bits}")
    if int(ds.PixelRepresentation) not in (0, 1):
        raise Refusal(mismatch, f"Pixel Representation (0028,0103) {ds.PixelRepresentation} is not 0 or 1")
    if "NumberOfFrames" not in ds and UID(ds.SOPClassUID) in MULTI_FRAME_CLASSES:
        warnings.append("Number of Frames (0028,0008) is missing; one frame assumed")
    try:
        frames = frame_count(ds)
    except ViewError as exc:
        raise Refusal(mismatch, str(exc)) from None
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return  # decoded (and so checked) with the views below for NM; kept as sent for SEG
    samples = int(ds.SamplesPerPixel)
    expected = (rows * columns * frames * samples * bits + 7) // 8
    actual = len(ds.PixelData)
    if actual not in (expected, expected + 1):  # one pad byte to an even length, PS3.5 §7.1.1
        raise Refusal(
            mismatch,
            f"Pixel Data (7FE0,0010) holds {actual} bytes but Rows {rows} x Columns {columns} x "
            f"Frames {frames} x Samples {samples} x Bits Allocated {bits} needs {expected}",
        )
    if ds.SOPClassUID == NuclearMedicineImageStorage and (bits == 8 or int(ds.PixelRepresentation) == 1):
        warnings.append(f"{bits}-bit {'signed' if ds.PixelRepresentation else 'unsigned'} NM pixels")


# -- views (NM) ---------------------------------------------------------------------------------------


def _nm_views(ds: Dataset, warnings: list[str]) -> tuple[str, ...]:
    """The views the instance holds, decided from its header by the worker's own rules
    (:func:`dicomnode.segmentation.viewrules.instance_views`).

    A single-frame instance that states no view is accepted with ``()`` and a warning (the study as a
    whole may still decide it by order, ``ViewRule.ASSUMED``). Compressed pixel data is decoded once
    as the check that it can be (native Pixel Data's length was checked with the pixel module).
    """
    mismatch = Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    try:
        decided, notes = instance_views(ds)
    except ViewError as exc:
        raise Refusal(mismatch, str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise Refusal(mismatch, f"view attributes cannot be read: {brief(exc)}") from None
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        try:
            frame_stack(ds)
        except UndecodablePixels as exc:
            raise Refusal(Status.CANNOT_UNDERSTAND, str(exc)) from None
        except ViewError as exc:
            raise Refusal(mismatch, str(exc)) from None
        except Exception as exc:  # numpy / pixel handlers on inconsistent input
            raise Refusal(Status.CANNOT_UNDERSTAND, f"pixel data cannot be read: {brief(exc)}") from None
    warnings.extend(notes)
    if not decided:
        warnings.append("no view stated (no View Code Sequence, Patient Orientation or ANT/POST description)")
    views = {view.view for view in decided}
    return tuple(view.value for view in View if view in views)


# -- references (SEG) -----------------------------------------------------------------------------------


def _seg_references(ds: Dataset) -> frozenset[str]:
    """SOP Instance UIDs a SEG segments: Referenced Series Sequence (Common Instance Reference Module,
    PS3.3 C.12.2) and the Source Image Sequences, at the root or per frame in the Derivation Image
    Functional Group (C.7.6.16.2.6)."""
    found: set[str] = set()

    def collect(items: object) -> None:
        for item in items or []:
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            try:
                found.add(check_uid(uid))
            except UIDError:
                continue

    for series in ds.get("ReferencedSeriesSequence", []):
        collect(series.get("ReferencedInstanceSequence"))
    collect(ds.get("SourceImageSequence"))
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            collect(derivation.get("SourceImageSequence"))
    if not found:
        raise Refusal(Status.CANNOT_UNDERSTAND, "the SEG references no source image")
    return frozenset(found)


# -- helpers ----------------------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value[:limit] or None

