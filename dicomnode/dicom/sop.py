"""The SOP classes the node receives, what each received instance is, and the result families it writes.

UIDs are pydicom's names (:mod:`pydicom.uid`), never repeated as strings. The receiver negotiates
exactly :data:`RECEIVED` (docs/dicom.md, docs/conformance.md): everything a camera legitimately sends
with a bone exam is accepted and stored; :func:`instance_kind` says what each instance is (the index's
``Instance.kind``), and only whole-body NM acquisitions are segmented (docs/architecture.md,
"The journey of a study"). :class:`ResultKind` names what the worker writes and is the one list behind
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

from segmentation.acquisitions import NMImageKind, nm_image_kind


class ObjectKind(str, Enum):
    """What a received instance of a class other than NM Image Storage is (``Instance.kind``)."""

    CT = "ct"  # CT Image Storage, PS3.3 A.3: the CT of a SPECT/CT exam
    SECONDARY_CAPTURE = "secondary-capture"  # PS3.3 A.8: camera screen saves ("SAVE_SCREENS")
    SEG = "seg"  # Segmentation Storage, PS3.3 A.51: a viewer's correction, kept as a label
    SR = "sr"  # Structured Reports, PS3.3 A.35: sent back by a viewer or a reporting system


#: SOP classes the receiver accepts, each with the Modality (0008,0060) its data sets must state
#: (``None``: any; a Secondary Capture keeps the modality of what was captured, PS3.3 C.8.6.1), and
#: what kind of object it is when it is not an NM image.
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
}

#: The one kind that is segmented (docs/architecture.md): whole-body NM acquisitions.
SEGMENTED_KIND = NMImageKind.WHOLE_BODY.value


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
