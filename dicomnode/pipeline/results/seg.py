"""DICOM Segmentation (PS3.3 A.51): one BINARY segment "Bone metastasis" per view.

highdicom 0.28 cannot take an NM image as a SEG source as it stands (it expects an enhanced
multi-frame object, or a Frame of Reference with a root-level plane position). The verified way
around it (docs/dicom.md, "Result objects") is used here: highdicom gets a *single-frame
proxy* of the source frame that keeps the source's SOP, series and study UIDs, and the Referenced
Frame Number of the real source frame is written into the Derivation Image / Source Image
references afterwards (PS3.3 C.7.6.16.2.6, Image SOP Instance Reference Macro, Table 10-3).
That gives one SEG instance per view, for both source layouts (one two-frame instance or one
instance per view); the views' SEGs share one series.

The frame is always written, also when it holds no lesion (``omit_empty_frames=False``), so that a
viewer never shifts the overlay and "no lesion" is stated, not implied.

Geometry: where the source gives a Frame of Reference and the view's detector item gives Image
Position / Orientation (Patient) (PS3.3 C.8.4.10.1, NM Detector module), both are kept (Plane
Position / Orientation functional groups) so that volumetric tools such as dcmqi read the SEG.
Otherwise the SEG has no Frame of Reference and carries Patient Orientation instead (2C, PS3.3
C.7.6.1). Pixel Measures always carries Pixel Spacing; its Slice Thickness is the source's, or
for a planar projection without one, a nominal thickness equal to the row spacing (highdicom's
reader requires the attribute).
"""

from __future__ import annotations

import copy
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from dicomnode.pipeline.results.common import (
    NOT_FOR_DIAGNOSTIC_USE,
    Provenance,
    ResultKind,
    SourceFrame,
    check_writable,
)
from segmentation.scan import View

logger = logging.getLogger(__name__)

SEGMENT_LABEL = "Bone metastasis"
_PIXEL_DATA_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}
#: Source attributes that describe geometry; dropped from the proxy when the view has none.
_GEOMETRY_KEYWORDS = ("FrameOfReferenceUID", "PositionReferenceIndicator")


def segment_description(provenance: Provenance) -> hd.seg.SegmentDescription:
    """The one segment: PS3.3 C.8.20.2 with CID 7150 / 7159 codes and Algorithm Identification."""
    algorithm = provenance.result.algorithm
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,  # SCT 49755003
        segmented_property_type=codes.SCT.NeoplasmSecondary,  # SCT 14799000
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name,
            version=algorithm.version,
            family=codes.cid7162.ArtificialIntelligence,
            source=provenance.options.manufacturer,
            parameters={"network": algorithm.network, "threshold": f"{provenance.result.threshold:g}"},
        ),
        anatomic_regions=[codes.SCT.Bone],  # SCT 272673000
    )


def build_segmentations(frames: dict[View, SourceFrame], provenance: Provenance) -> list[Dataset]:
    """One SEG instance per view, all in the SEG series of this processing run."""
    series = provenance.series(ResultKind.SEG)
    description = segment_description(provenance)
    segs = []
    for number, (view, frame) in enumerate(frames.items(), start=1):
        geometry = _detector_geometry(frame)
        seg = hd.seg.Segmentation(
            source_images=[_single_frame_proxy(frame, geometry)],
            pixel_array=frame.result.mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=series.uid,
            series_number=series.number,
            sop_instance_uid=provenance.uid(ResultKind.SEG.value, view.value),
            instance_number=number,
            manufacturer=provenance.options.manufacturer,
            manufacturer_model_name=provenance.model_name,
            software_versions=provenance.options.software_version,
            device_serial_number=provenance.options.serial_number(),
            content_label="BONE_METS",
            content_description=(
                f"AI bone metastasis segmentation, {view.value} view, "
                f"{len(frame.result.lesions)} lesion(s); {NOT_FOR_DIAGNOSTIC_USE}"
            )[:64],
            omit_empty_frames=False,
            series_description=series.description,
        )
        if geometry is None:
            seg.PatientOrientation = frame.patient_orientation
        _reference_source_frame(seg, frame)
        provenance.finish(seg, frame.dataset, series)
        segs.append(check_writable(seg))
        logger.info(
            "SEG for the %s view: %d lesion pixel(s), geometry %s",
            view.value, int(frame.result.mask.sum()), "kept" if geometry else "none in source",
        )
    return segs


def _detector_geometry(frame: SourceFrame) -> tuple[list[float], list[float]] | None:
    """(Image Position, Image Orientation) of the view's detector item, or None where absent.

    The frame's Detector Vector value (0054,0020) selects the Detector Information Sequence item
    (PS3.3 C.8.4.8.1.1 and C.8.4.10); both attributes are Type 2 there, so often empty.
    """
    ds = frame.dataset
    if not ds.get("FrameOfReferenceUID"):
        return None
    detectors = ds.get("DetectorInformationSequence") or []
    vector = ds.get("DetectorVector")
    if vector is not None:
        values = [vector] if isinstance(vector, int) else list(vector)
        index = int(values[frame.frame_number - 1]) - 1 if len(values) >= frame.frame_number else -1
    else:
        index = 0 if len(detectors) == 1 else -1
    if not 0 <= index < len(detectors):
        return None
    item = detectors[index]
    position = item.get("ImagePositionPatient")
    orientation = item.get("ImageOrientationPatient")
    if not position or not orientation or len(position) != 3 or len(orientation) != 6:
        return None
    return [float(v) for v in position], [float(v) for v in orientation]


def _single_frame_proxy(
    frame: SourceFrame, geometry: tuple[list[float], list[float]] | None
) -> Dataset:
    """A one-frame stand-in for the source frame with the source's UIDs (see module docstring)."""
    source = frame.dataset
    proxy = Dataset()
    for element in source:
        if element.tag not in _PIXEL_DATA_TAGS:
            proxy.add(copy.copy(element))  # own top-level elements: the source stays untouched
    proxy.NumberOfFrames = 1
    spacing = [float(v) for v in frame.image.pixel_spacing]
    thickness = float(source.get("SliceThickness") or 0) or spacing[0]
    measures = Dataset()
    measures.PixelSpacing = spacing
    measures.SliceThickness = thickness
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    if geometry is None:
        for keyword in _GEOMETRY_KEYWORDS:
            if keyword in proxy:
                del proxy[keyword]
    else:
        position, orientation = geometry
        plane_orientation = Dataset()
        plane_orientation.ImageOrientationPatient = orientation
        shared.PlaneOrientationSequence = [plane_orientation]
        plane_position = Dataset()
        plane_position.ImagePositionPatient = position
        per_frame = Dataset()
        per_frame.PlanePositionSequence = [plane_position]
        proxy.PerFrameFunctionalGroupsSequence = [per_frame]
    proxy.SharedFunctionalGroupsSequence = [shared]
    return proxy


def _reference_source_frame(seg: Dataset, frame: SourceFrame) -> None:
    """Point each frame's Source Image Sequence at the view's real source frame (1-based).

    The root Referenced Series Sequence (Series and Instance Reference Macro, PS3.3 Table 10-4)
    has no frame number; the frame is named in the Derivation Image functional group only.
    """
    for per_frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in per_frame.get("DerivationImageSequence", []):
            for source_image in derivation.SourceImageSequence:
                source_image.ReferencedFrameNumber = frame.frame_number
