"""What every result object shares: options, source matching, series identity, equipment, dates.

Each result (SEG, GSPS, SR, SC) is a new instance in its own new series of the source's study
(PS3.3 C.7.3.1 General Series: a series holds objects of one modality from one equipment). Patient
and study identity are copied from the source by highdicom; this module adds what highdicom leaves
out: Specific Character Set, Body Part Examined, creation date/time (PS3.3 C.12.1 SOP Common),
institution, device serial number, and the series numbering scheme below.

Series numbers: ``series_number_base + 10 * (study_version - 1) + offset`` with offsets SEG 1,
GSPS 2, SR 3, SC 4. With the default base 9000 the first processing of a study gives series
9001-9004, a re-processing after the study changed gives 9011-9014, and so on.

UIDs are derived (PS3.5 B.2, ``pydicom.uid.generate_uid`` with entropy sources) from the study UID,
the source instances, the study version, the algorithm (with the anatomy reading that judged its
lesions) and the object kind. Processing the same input again (a retried job) therefore gives the
same UIDs and does not duplicate objects in the PACS, while a changed study (new version or new
sources), new weights or a new anatomy map or second stage get new series.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import NuclearMedicineImageStorage, generate_uid

from dicomnode.config import ResultOptions
from dicomnode.dicom.sop import ResultKind
from dicomnode.segmentation.preprocess import Preprocessing, body_mask, reference_level
from dicomnode.segmentation.result import (
    Algorithm,
    Lesion,
    Reading,
    SegmentationResult,
    ViewResult,
)
from dicomnode.segmentation.scan import View, ViewImage, ViewSource

logger = logging.getLogger(__name__)

#: Said in every object (text, content description, legend): these are research results.
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"

#: How the views are named in short texts (tracking identifiers, picture labels).
VIEW_ABBREVIATIONS = {View.ANTERIOR: "ANT", View.POSTERIOR: "POST"}

#: Date/time pairs that say when an object's content was made (SEG/SR/SC: General Image or SR
#: Document General; GSPS: Presentation State Identification, PS3.3 C.11.10).
_CREATION_KEYWORDS = (
    ("ContentDate", "ContentTime"),
    ("PresentationCreationDate", "PresentationCreationTime"),
)

#: Largest value of an IS (Integer String) element, PS3.5 Table 6.2-1.
_MAX_IS = 2**31 - 1
#: Largest length of an LO (Long String) element, PS3.5 Table 6.2-1.
_MAX_LO = 64


#: Offsets of each kind's series number from the version's base (see the module docstring).
SERIES_OFFSETS: dict[ResultKind, int] = {
    ResultKind.SEG: 1,
    ResultKind.GSPS: 2,
    ResultKind.SR: 3,
    ResultKind.SC: 4,
}

class ResultInputError(ValueError):
    """Inputs that result objects cannot be built from (sources that do not fit the segmentation,
    a model's classes the objects do not encode, a series number out of range): the acquisition is
    not processable, retrying cannot help. Any other error of a builder is a bug, and fails the job."""


@dataclass(frozen=True)
class SourceFrame:
    """One view of the study: its NM dataset, the 1-based frame within it, its image and result."""

    view: View
    dataset: Dataset
    image: ViewImage
    result: ViewResult

    @property
    def source(self) -> ViewSource:
        return self.image.source

    @property
    def frame_number(self) -> int:
        return self.image.source.frame_number

    @property
    def referenced_frame_numbers(self) -> list[int] | None:
        """Referenced Frame Number (0008,1160) for references to this view: needed where the
        source has several frames (Image SOP Instance Reference Macro, PS3.3 Table 10-3)."""
        if int(self.dataset.get("NumberOfFrames", 1) or 1) > 1:
            return [self.frame_number]
        return None

    @property
    def stored_counts(self) -> np.ndarray:
        """The view's counts in the stored layout of its source frame (float32)."""
        return self.source.to_stored(self.image.counts)

    @property
    def patient_orientation(self) -> list[str]:
        """Patient Orientation (0020,0020) of the stored frame, PS3.3 C.7.6.1.1.1.

        The canonical layout runs columns to the patient's left and rows to the feet (``L\\F``);
        each flip that maps the stored frame to canonical reverses one of them (posterior: ``R\\F``).
        """
        return ["R" if self.source.flip_lr else "L", "H" if self.source.flip_ud else "F"]


def match_sources(result: SegmentationResult, sources: Sequence[Dataset]) -> dict[View, SourceFrame]:
    """Pair each view of ``result`` with its source dataset (by SOP Instance UID) and check both.

    Raises :class:`ResultInputError` with the reason when a view's source is missing, is not an NM image of
    the same study, lacks the referenced frame, or when the result does not fit its source frame.
    """
    by_uid: dict[str, Dataset] = {}
    for dataset in sources:
        uid = str(dataset.get("SOPInstanceUID", ""))
        if not uid:
            raise ResultInputError("a source dataset has no SOP Instance UID")
        by_uid[uid] = dataset
    scan = result.scan
    if set(result.views) != set(scan.views):
        raise ResultInputError(
            f"the result has views {[v.value for v in result.views]} "
            f"but the scan has {[v.value for v in scan.views]}"
        )
    frames: dict[View, SourceFrame] = {}
    for view, image in scan.views.items():
        source = image.source
        dataset = by_uid.get(source.sop_instance_uid)
        if dataset is None:
            raise ResultInputError(
                f"no source dataset has the {view.value} view's SOP Instance UID "
                f"{source.sop_instance_uid}"
            )
        _check_source(view, dataset, source, scan.study_instance_uid)
        view_result = result.views[view]
        if view_result.mask.shape != (source.rows, source.columns):
            raise ResultInputError(
                f"the {view.value} mask has shape {view_result.mask.shape}, the source frame "
                f"is {source.rows} x {source.columns}"
            )
        if not np.isin(view_result.mask, (0, 1)).all():
            raise ResultInputError(f"the {view.value} mask holds values other than 0 and 1")
        for lesion in view_result.lesions:
            if lesion.view is not view:
                raise ResultInputError(f"a {lesion.view.value} lesion is listed under the {view.value} view")
        frames[view] = SourceFrame(view=view, dataset=dataset, image=image, result=view_result)
    return frames


def _check_source(view: View, dataset: Dataset, source: ViewSource, study_uid: str) -> None:
    where = f"{view.value} source {source.sop_instance_uid}"
    if dataset.get("SOPClassUID") != NuclearMedicineImageStorage:
        raise ResultInputError(f"{where} is not an NM Image Storage instance ({dataset.get('SOPClassUID')})")
    if source.sop_class_uid != dataset.SOPClassUID:
        raise ResultInputError(f"{where}: the scan says SOP class {source.sop_class_uid}")
    if dataset.get("StudyInstanceUID") != study_uid:
        raise ResultInputError(f"{where} belongs to study {dataset.get('StudyInstanceUID')}, not {study_uid}")
    if (dataset.get("Rows"), dataset.get("Columns")) != (source.rows, source.columns):
        raise ResultInputError(
            f"{where} is {dataset.get('Rows')} x {dataset.get('Columns')}, "
            f"the scan says {source.rows} x {source.columns}"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 1 <= source.frame_number <= frames:
        raise ResultInputError(f"{where} has {frames} frame(s); frame {source.frame_number} was referenced")


def source_image_sequence(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Source Image Sequence (0008,2112) items naming the images a derived picture was made from
    (General Image module, PS3.3 C.7.6.1, Type 3; Image SOP Instance Reference Macro, Table 10-3)."""
    items = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    return items


def source_datasets(frames: dict[View, SourceFrame]) -> list[Dataset]:
    """The distinct source datasets of the views (one for a two-frame instance), in view order."""
    seen: dict[str, Dataset] = {}
    for frame in frames.values():
        seen.setdefault(frame.source.sop_instance_uid, frame.dataset)
    return list(seen.values())


@dataclass(frozen=True)
class SeriesIdentity:
    """Series Instance UID, Series Number and Series Description of one result series."""

    uid: str
    number: int
    description: str


@dataclass(frozen=True)
class Provenance:
    """What all objects of one call share: who wrote them, when, for which processing run."""

    options: ResultOptions
    study_instance_uid: str
    algorithm: Algorithm
    threshold: float  # the operating point's probability threshold (argmax for volume classes: 0.5)
    study_version: int
    created: datetime
    source_uids: tuple[str, ...]
    notes: tuple[str, ...] = ()  # the segmentation's notes, written into the SR
    reading: Reading | None = None  # the anatomy reading that judged the lesions (planar), where one did

    def algorithm_parameters(self, **own: str) -> dict[str, str]:
        """Algorithm Parameters (PS3.3 C.8.20.2; TID 4019 in the SR): the network, ``own`` entries
        (the threshold or decision rule), then the anatomy map and the second stage that read the
        lesions, so that an object names every part that decided what it shows."""
        reading = self.reading.parameters() if self.reading is not None else {}
        return {"network": self.algorithm.network, **own, **reading}

    def series(self, kind: ResultKind) -> SeriesIdentity:
        number = (
            self.options.series_number_base
            + 10 * (self.study_version - 1)
            + SERIES_OFFSETS[kind]
        )
        if number > _MAX_IS:
            raise ResultInputError(f"series number {number} exceeds the IS range; lower study_version")
        return SeriesIdentity(
            uid=self.uid(kind.value, "series"), number=number, description=self.options.description(kind)
        )

    def uid(self, *parts: str) -> str:
        """A UID derived from this run's inputs and ``parts`` (module docstring)."""
        algorithm = self.algorithm
        return generate_uid(
            entropy_srcs=[
                self.study_instance_uid,
                *self.source_uids,
                str(self.study_version),
                algorithm.name,
                algorithm.version,
                algorithm.network,
                *(self.reading.parameters().values() if self.reading is not None else ()),
                *parts,
            ]
        )

    def lesion_tracking(self, lesion: Lesion) -> tuple[str, str]:
        """(Tracking ID, Tracking UID) of a lesion, the same in the GSPS and the SR (PS3.3 C.10.5.1.2,
        PS3.16 TID 4108) so that a viewer can link a contour to its measurements."""
        identifier = f"{VIEW_ABBREVIATIONS[lesion.view]} lesion {lesion.label}"
        return identifier, self.uid("lesion", lesion.view.value, str(lesion.label))

    @property
    def model_name(self) -> str:
        """Manufacturer's Model Name (0008,1090): the algorithm that produced the result."""
        return self.algorithm.name[:_MAX_LO]

    @property
    def equipment(self) -> dict[str, str]:
        """General Equipment (PS3.3 C.7.5.1) as the keyword arguments of highdicom's constructors
        that require it (SEG, GSPS); :meth:`finish` writes the same values on every object."""
        return {"manufacturer": self.options.manufacturer, "manufacturer_model_name": self.model_name,
                "software_versions": self.options.software_version,
                "device_serial_number": self.options.serial_number()}

    def finish(self, dataset: Dataset, source: Dataset, series: SeriesIdentity) -> Dataset:
        """Add the attributes highdicom does not set, consistently on every result object."""
        if "SpecificCharacterSet" in source:
            dataset.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
        dataset.SeriesDescription = series.description
        date, time = self.created.strftime("%Y%m%d"), self.created.strftime("%H%M%S.%f")
        dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
        dataset.SeriesDate, dataset.SeriesTime = date, time
        for date_keyword, time_keyword in _CREATION_KEYWORDS:
            if date_keyword in dataset:  # only where highdicom wrote them: the IOD has them
                setattr(dataset, date_keyword, date)
                setattr(dataset, time_keyword, time)
        dataset.Manufacturer = self.options.manufacturer
        dataset.ManufacturerModelName = self.model_name
        dataset.SoftwareVersions = self.options.software_version
        dataset.DeviceSerialNumber = self.options.serial_number()
        if self.options.institution_name:
            dataset.InstitutionName = self.options.institution_name
        if dataset.Modality != "SR":  # SR Document Series has no Body Part Examined
            # Laterality (0020,0060) is 2C on GSPS and SC unless Body Part Examined is present.
            dataset.BodyPartExamined = source.get("BodyPartExamined") or "WHOLEBODY"
        return dataset


def check_writable(dataset: Dataset) -> Dataset:
    """Fail early if ``dataset`` lacks what ``save_as(..., enforce_file_format=True)`` needs."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise RuntimeError(f"{dataset.get('SOPClassUID')} object has no file meta transfer syntax")
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset



#: Upper end of the bone window in multiples of the bone reference level (bone_window).
BONE_WINDOW_MULTIPLE = 2.5


def bone_window(frames: dict[View, SourceFrame]) -> tuple[float, float, str]:
    """(center, width, explanation) of the VOI window for showing the views (PS3.3 C.11.2).

    A bone-scan window: 0 to :data:`BONE_WINDOW_MULTIPLE` times the bone reference level ``R``,
    the percentile of body counts that the segmenter normalises by (dicomnode/segmentation/preprocess.py,
    step 3: it sits on normal bone), taken as the larger of the views' levels. Normal bone shows
    at about 40 % of the range, lesions of 2.5 x bone and more, the bladder and the injection site
    saturate. The source's own window is not used: set by the camera for the whole count range,
    it leaves the skeleton dim.
    """
    percentile = Preprocessing().percentile
    levels = [
        reference_level(frame.image.counts, body_mask(frame.image.counts), percentile)
        for frame in frames.values()
    ]
    upper = max(BONE_WINDOW_MULTIPLE * max(levels), 1.0)
    return upper / 2, upper, (
        f"bone: 0 to {BONE_WINDOW_MULTIPLE:g} x the {percentile:g}th percentile of body counts"
    )
