"""The SOP classes the node receives, what each received instance is, and the result families it writes.

UIDs are pydicom's names (:mod:`pydicom.uid`), never repeated as strings. The receiver negotiates
exactly :data:`RECEIVED` (docs/dicom.md, docs/conformance.md): every standard storage SOP class
(pynetdicom's list, PS3.4 Annex B.5) is accepted and stored, because a camera, workstation or viewer
sends more than images with an exam (a CT's X-Ray Radiation Dose SR, Key Object Selection, Encapsulated
PDF, Raw Data, Spatial Registration), and one refused context makes a sender such as dcmtk ``storescu``
stop the rest of the exam. :func:`instance_kind` says what each instance is (the index's
``Instance.kind``); only whole-body NM acquisitions and RECON TOMO volumes (with their CT) are
processed (docs/architecture.md, "The journey of a study"); the rest is stored as sent. :class:`ResultKind` names what the worker writes and is the one list behind
the database column, the configuration's ``[results] kinds`` and the result builders.
"""

from __future__ import annotations

from enum import Enum

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedSRStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom.sop_class import _STORAGE_CLASSES

from dicomnode.dicom.acquisitions import NMImageKind, nm_image_kind


class ObjectKind(str, Enum):
    """What a received instance of a class other than NM Image Storage is (``Instance.kind``)."""

    CT = "ct"  # CT Image Storage, PS3.3 A.3: the CT of a SPECT/CT exam
    SECONDARY_CAPTURE = "secondary-capture"  # PS3.3 A.8: camera screen saves ("SAVE_SCREENS")
    SEG = "seg"  # Segmentation Storage, PS3.3 A.51: a viewer's correction, kept as a label
    SR = "sr"  # Structured Reports, PS3.3 A.35: sent back by a viewer or a reporting system
    # stored as sent, never processed (:data:`STORED_AS_SENT`):
    DOSE_REPORT = "dose-report"  # Radiation Dose SRs, PS3.3 A.35.8 / A.35.14 / A.35.18: a CT's dose report
    KEY_OBJECTS = "key-objects"  # Key Object Selection Document, PS3.3 A.35.4
    DOCUMENT = "document"  # Encapsulated PDF / CDA / STL / OBJ / MTL, PS3.3 A.45
    RAW_DATA = "raw-data"  # Raw Data, PS3.3 A.37: a camera's list mode or vendor data
    REGISTRATION = "registration"  # Spatial / Deformable Spatial Registration, PS3.3 A.39, A.42
    PRESENTATION_STATE = "presentation-state"  # Softcopy Presentation States, PS3.3 A.33
    OTHER_IMAGE = "other-image"  # any other image storage class (MR, PET, XA, ...)
    OTHER = "other-object"  # any other storage class (waveforms, RT, measurements, ...)


#: Kinds stored as they arrive: no pixel checks, no processing.
STORED_AS_SENT = frozenset({ObjectKind.DOSE_REPORT, ObjectKind.KEY_OBJECTS, ObjectKind.DOCUMENT,
                            ObjectKind.RAW_DATA, ObjectKind.REGISTRATION, ObjectKind.PRESENTATION_STATE,
                            ObjectKind.OTHER_IMAGE, ObjectKind.OTHER})
#: The kinds a viewer's correction can come as (``Instance.kind``; :mod:`dicomnode.learn.corrections`).
CORRECTION_KINDS = (ObjectKind.SEG.value, ObjectKind.SR.value, ObjectKind.KEY_OBJECTS.value)


def _stored_kind(name: str) -> ObjectKind:
    """The kind of a storage class outside the bone exam's own, from its pynetdicom name."""
    for words, kind in (("RadiationDoseSR", ObjectKind.DOSE_REPORT), ("KeyObjectSelection", ObjectKind.KEY_OBJECTS),
                        ("Encapsulated", ObjectKind.DOCUMENT), ("RawData", ObjectKind.RAW_DATA),
                        ("Registration", ObjectKind.REGISTRATION), ("PresentationState", ObjectKind.PRESENTATION_STATE),
                        ("SRStorage", ObjectKind.SR), ("ImageStorage", ObjectKind.OTHER_IMAGE)):
        if words in name:
            return kind
    return ObjectKind.OTHER


#: SOP classes the receiver accepts, each with the Modality (0008,0060) its data sets must state
#: (``None``: any; a Secondary Capture keeps the modality of what was captured, PS3.3 C.8.6.1), and
#: what kind of object it is when it is not an NM image.
_EXAM_CLASSES = frozenset({NuclearMedicineImageStorage, CTImageStorage, SecondaryCaptureImageStorage,
                           MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
                           MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                           MultiFrameTrueColorSecondaryCaptureImageStorage, SegmentationStorage,
                           BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage, Comprehensive3DSRStorage})
RECEIVED: dict[UID, tuple[str | None, ObjectKind | None]] = {
    NuclearMedicineImageStorage: ("NM", None),
    CTImageStorage: ("CT", ObjectKind.CT),
    SecondaryCaptureImageStorage: (None, ObjectKind.SECONDARY_CAPTURE),
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage: (None, ObjectKind.SECONDARY_CAPTURE),
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage: (None, ObjectKind.SECONDARY_CAPTURE),
    MultiFrameTrueColorSecondaryCaptureImageStorage: (None, ObjectKind.SECONDARY_CAPTURE),
    SegmentationStorage: ("SEG", ObjectKind.SEG),
    BasicTextSRStorage: ("SR", ObjectKind.SR),
    EnhancedSRStorage: ("SR", ObjectKind.SR),
    ComprehensiveSRStorage: ("SR", ObjectKind.SR),
    Comprehensive3DSRStorage: ("SR", ObjectKind.SR),
    # every other standard storage class, stored as sent (module docstring); Modality not checked
    **{UID(uid): (None, _stored_kind(name)) for name, uid in sorted(_STORAGE_CLASSES.items())
       if UID(uid) not in _EXAM_CLASSES},
}

#: The kind segmented as a planar bone scan (docs/architecture.md): whole-body NM acquisitions.
SEGMENTED_KIND = NMImageKind.WHOLE_BODY.value
#: Every kind a job reads: whole-body planar scans, and RECON TOMO volumes with the CT of their Frame
#: of Reference (bone SPECT/CT, paper 003). New content of these kinds re-opens a processed study.
SEGMENTED_KINDS = frozenset({SEGMENTED_KIND, NMImageKind.RECON_TOMO.value, ObjectKind.CT.value})


def instance_kind(ds: Dataset, sop_class_uid: str) -> tuple[str, str | None]:
    """(``Instance.kind``, a note when it had to be inferred) of a data set of an accepted class."""
    other = RECEIVED[UID(sop_class_uid)][1]
    if other is not None:
        return other.value, None
    kind, note = nm_image_kind(ds)
    return kind.value, note


class ResultKind(str, Enum):
    """The result object families, in the order the worker writes them."""

    SEG = "SEG"  # Segmentation Storage, PS3.3 A.51
    GSPS = "GSPS"  # Grayscale Softcopy Presentation State Storage, PS3.3 A.33.1
    SR = "SR"  # Comprehensive SR with TID 1500 Measurement Report, PS3.3 A.35.3, PS3.16 TID 1500
    SC = "SC"  # Secondary Capture Image Storage, PS3.3 A.8.1
