"""The SOP classes the node receives, and the families of result objects it writes (PS3.4 Annex B.5).

UIDs are pydicom's names (:mod:`pydicom.uid`), never repeated as strings. The receiver negotiates
exactly :data:`RECEIVED` (docs/dicom.md); :class:`ResultKind` names what the worker writes and is the
one list behind the database column, the configuration's ``[results] kinds`` and the result
builders (docs/architecture.md, "The journey of a study", results).
"""

from __future__ import annotations

from enum import Enum

from pydicom.uid import UID, NuclearMedicineImageStorage, SegmentationStorage

#: SOP classes the receiver accepts, each with the Modality (0008,0060) its data sets must state:
#: NM Image Storage (PS3.3 A.5) to segment, Segmentation Storage (PS3.3 A.51) sent back by a viewer.
RECEIVED: dict[UID, str] = {NuclearMedicineImageStorage: "NM", SegmentationStorage: "SEG"}


class ResultKind(str, Enum):
    """The result object families, in the order the worker writes them."""

    SEG = "SEG"  # Segmentation Storage, PS3.3 A.51
    GSPS = "GSPS"  # Grayscale Softcopy Presentation State Storage, PS3.3 A.33.1
    SR = "SR"  # Comprehensive SR with TID 1500 Measurement Report, PS3.3 A.35.3, PS3.16 TID 1500
    SC = "SC"  # Secondary Capture Image Storage, PS3.3 A.8.1
