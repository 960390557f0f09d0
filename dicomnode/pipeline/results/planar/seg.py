r"""DICOM Segmentation (PS3.3 A.51): one BINARY segment "Bone metastasis" per view, one series per view.

highdicom 0.28 cannot take an NM image as a SEG source as it stands (it expects an enhanced
multi-frame object, or a Frame of Reference with a root-level plane position). The verified way
around it (docs/dicom.md, "Result objects") is used here: highdicom gets a *single-frame
proxy* of the source frame that keeps the source's SOP, series and study UIDs, and the Referenced
Frame Number of the real source frame is written into the Derivation Image / Source Image
references afterwards (PS3.3 C.7.6.16.2.6, Image SOP Instance Reference Macro, Table 10-3).

Each view's SEG is the only instance of its own series (Series Description ending in the view's
name, Series Number :data:`VIEW_SERIES_OFFSETS` above the SEG series number of
:class:`~dicomnode.pipeline.results.common.Provenance`): viewers such as OHIF build one display set
per series from one instance, so two views in one series would leave one unreachable.

The frame is always written, also when it holds no lesion (``omit_empty_frames=False``), so that a
viewer never shifts the overlay and "no lesion" is stated, not implied.

Geometry (:func:`plane_geometry`): every SEG has a Frame of Reference and Plane Orientation /
Plane Position functional groups (PS3.3 C.7.6.16.2.4 and C.7.6.16.2.3, required when the Frame of
Reference module is present), because volumetric readers (dcmqi ``segimage2itkimage``, highdicom
``get_volume()``) and OHIF need them to place the mask. A planar NM image has no Image Plane module
(PS3.3 C.7.6.2); where it has geometry, it is in the detector's item of the Detector Information
Sequence (PS3.3 C.8.4.11, selected by the frame's Detector Vector value, C.8.4.8.1.1). The SEG
states the orientation that a viewer derives for the source frame, so that the mask lies in the
plane of the image it is drawn on:

- a *multi-frame* source (both views in one instance): the Image Orientation (Patient) of the
  *first* Detector Information item, the one OHIF 3.13 applies to every frame of an NM multi-frame
  image (seen in the browser test, tests/test_viewer_ohif.py: with the posterior detector's own
  orientation ``-1\0\0\0\0\-1`` OHIF paints the posterior mask mirrored, on the wrong side of
  the patient), and the Image Position (Patient) of the frame's own detector item (selected by
  the frame's Detector Vector value); where the items leave them empty (Type 2), the identity
  orientation ``1\0\0\0\1\0`` and the origin;
- a *single-frame* source (one instance per view): ``1\0\0\0\1\0`` at the origin, the orientation
  viewers assume for a frame without an Image Plane module (OHIF ignores the Detector Information
  Sequence of a single-frame NM image; with the detector's orientation it rejects the SEG as
  "orthogonal to the acquisition plane").

The mask's pixels are always those of the stored source frame; the orientation only tells a viewer
how the two relate, so it must be the one the viewer gives the source, even where that
simplifies the standard (a posterior detector looking from behind has rows along -x).

The Frame of Reference UID is the source's; a source without one gets a UID derived from its study
and instances, so that the SEG frames of one study share it. Pixel Measures carries Pixel Spacing
and a Slice Thickness: the source's, or for a planar projection without one, a nominal thickness
equal to the row spacing (highdicom's reader requires the attribute).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.valuerep import DSfloat

from dicomnode.pipeline.results.common import (
    NOT_FOR_DIAGNOSTIC_USE,
    VIEW_ABBREVIATIONS,
    Provenance,
    ResultKind,
    SeriesIdentity,
    SourceFrame,
    check_writable,
)
from dicomnode.pipeline.results.planar.contours import LESION_CIELAB
from dicomnode.pipeline.results.text import clip_words
from dicomnode.segmentation.scan import View

logger = logging.getLogger(__name__)

SEGMENT_LABEL = "Bone metastasis"
_PIXEL_DATA_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}
#: Series Number of each view's SEG series above the SEG number of the study version (the offsets
#: 5-9 of a version's ten numbers are free, docs/conformance.md 8.1): 9001 anterior, 9005 posterior.
VIEW_SERIES_OFFSETS = {View.ANTERIOR: 0, View.POSTERIOR: 4}
#: Image Orientation (Patient) of a frame without geometry: rows along +x, columns along +y.
IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_ORIGIN = (0.0, 0.0, 0.0)
#: Largest length of LO (Content Description) and of one PN component group, PS3.5 Table 6.2-1.
_MAX_LO = 64


@dataclass(frozen=True)
class PlaneGeometry:
    """What the SEG says about where its frame lies (module docstring, "Geometry")."""

    frame_of_reference_uid: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    from_detector: bool


def segment_description(provenance: Provenance) -> hd.seg.SegmentDescription:
    """The one segment: PS3.3 C.8.20.2 with CID 7150 / 7159 codes and Algorithm Identification."""
    algorithm = provenance.algorithm
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
            parameters=provenance.algorithm_parameters(threshold=f"{provenance.threshold:g}"),
        ),
        anatomic_regions=[codes.SCT.Bone],  # SCT 272673000
        display_color=LESION_CIELAB,  # the red of the GSPS and SC outlines
    )


def view_series(provenance: Provenance, view: View) -> SeriesIdentity:
    """The SEG series of ``view``: its own UID, number and description (module docstring)."""
    base = provenance.series(ResultKind.SEG)
    name = VIEW_ABBREVIATIONS[view]
    suffix = f" {name}"
    return SeriesIdentity(
        uid=provenance.uid(ResultKind.SEG.value, "series", view.value),
        number=base.number + VIEW_SERIES_OFFSETS[view],
        description=clip_words(base.description, _MAX_LO - len(suffix)) + suffix,
    )


def content_description(frame: SourceFrame) -> str:
    """Content Description (0070,0081): the view, the lesion count and the warning, whole words."""
    count = len(frame.result.lesions)
    noun = "lesion" if count == 1 else "lesions"
    return clip_words(
        f"AI bone metastases {VIEW_ABBREVIATIONS[frame.view]}, {count} {noun}; "
        f"{NOT_FOR_DIAGNOSTIC_USE}",
        _MAX_LO,
    )


def content_creator(provenance: Provenance) -> str:
    """Content Creator's Name (0070,0084), a PN: the algorithm as the family name component, with
    the trailing "^" that marks a one-component name as intended (PS3.5 6.2.1.2)."""
    name = "".join(c for c in provenance.algorithm.name if c not in "^=\\")
    return (name or provenance.options.manufacturer)[: _MAX_LO - 1] + "^"


def build_segmentations(frames: dict[View, SourceFrame], provenance: Provenance) -> list[Dataset]:
    """One SEG instance per view, each in its own series of this processing run."""
    description = segment_description(provenance)
    segs = []
    for view, frame in frames.items():
        series = view_series(provenance, view)
        geometry = plane_geometry(frame, provenance)
        seg = hd.seg.Segmentation(
            source_images=[_single_frame_proxy(frame, geometry)],
            pixel_array=frame.result.mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=series.uid,
            series_number=series.number,
            sop_instance_uid=provenance.uid(ResultKind.SEG.value, view.value),
            instance_number=1,
            **provenance.equipment,
            content_label="BONE_METS",
            content_description=content_description(frame),
            content_creator_name=content_creator(provenance),
            omit_empty_frames=False,
            series_description=series.description,
        )
        _reference_source_frame(seg, frame)
        provenance.finish(seg, frame.dataset, series)
        segs.append(check_writable(seg))
        logger.info(
            "SEG for the %s view: %d lesion pixel(s), orientation %s (%s)",
            view.value, int(frame.result.mask.sum()), "\\".join(f"{v:g}" for v in geometry.orientation),
            "detector" if geometry.from_detector else "default",
        )
    return segs


def plane_geometry(frame: SourceFrame, provenance: Provenance) -> PlaneGeometry:
    """Frame of Reference, Image Position and Orientation (Patient) of ``frame``'s SEG."""
    source = frame.dataset
    frame_of_reference = str(source.get("FrameOfReferenceUID") or "") or provenance.uid(
        "frame of reference"
    )
    if int(source.get("NumberOfFrames", 1) or 1) == 1:
        return PlaneGeometry(frame_of_reference, _ORIGIN, IDENTITY_ORIENTATION, from_detector=False)
    detectors = list(source.get("DetectorInformationSequence") or [])
    orientation = _values(detectors[0], "ImageOrientationPatient", 6) if detectors else None
    item = _frame_detector(frame)
    position = _values(item, "ImagePositionPatient", 3) if item is not None else None
    if orientation is None:
        return PlaneGeometry(frame_of_reference, _ORIGIN, IDENTITY_ORIENTATION, from_detector=False)
    return PlaneGeometry(
        frame_of_reference, position or _ORIGIN, orientation, from_detector=True  # type: ignore[arg-type]
    )


def _frame_detector(frame: SourceFrame) -> Dataset | None:
    """The Detector Information item of ``frame``: its Detector Vector value (0054,0020) selects it
    (PS3.3 C.8.4.8.1.1 and C.8.4.11); None where the source does not say."""
    ds = frame.dataset
    detectors = ds.get("DetectorInformationSequence") or []
    vector = ds.get("DetectorVector")
    if vector is not None:
        values = [vector] if isinstance(vector, int) else list(vector)
        index = int(values[frame.frame_number - 1]) - 1 if len(values) >= frame.frame_number else -1
    else:
        index = 0 if len(detectors) == 1 else -1
    return detectors[index] if 0 <= index < len(detectors) else None


def _values(item: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """The ``count`` numbers of a Type 2 attribute of a detector item, None where empty."""
    value = item.get(keyword)
    if not value or len(value) != count:
        return None
    return tuple(float(v) for v in value)


def _single_frame_proxy(frame: SourceFrame, geometry: PlaneGeometry) -> Dataset:
    """A one-frame stand-in for the source frame with the source's UIDs (see module docstring)."""
    source = frame.dataset
    spacing = [float(v) for v in frame.image.pixel_spacing]
    return functional_groups_proxy(
        source, frame_of_reference_uid=geometry.frame_of_reference_uid, pixel_spacing=spacing,
        slice_thickness=float(source.get("SliceThickness") or 0) or spacing[0],
        orientation=geometry.orientation, positions=[geometry.position],
    )


def functional_groups_proxy(
    source: Dataset, *, frame_of_reference_uid: str, pixel_spacing: Sequence[float], slice_thickness: float,
    orientation: Sequence[float], positions: Sequence[Sequence[float]],
) -> Dataset:
    """A stand-in for an NM ``source`` that highdicom can take as a SEG source: the source's header
    and UIDs without its pixel data, one frame per entry of ``positions``, and the geometry as the
    functional groups of an enhanced multi-frame image (Pixel Measures, Plane Orientation, Plane
    Position: PS3.3 C.7.6.16.2.1, .4, .3), where an NM image keeps it in its Detector Information
    Sequence (PS3.3 C.8.4.11)."""
    proxy = Dataset()
    for element in source:
        if element.tag not in _PIXEL_DATA_TAGS:
            proxy.add(copy.copy(element))  # own top-level elements: the source stays untouched
    proxy.NumberOfFrames = len(positions)
    proxy.FrameOfReferenceUID = frame_of_reference_uid
    measures = Dataset()
    measures.PixelSpacing = [decimal_string(v) for v in pixel_spacing]
    measures.SliceThickness = decimal_string(slice_thickness)
    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = [decimal_string(v) for v in orientation]
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [plane_orientation]
    proxy.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for position in positions:
        plane_position = Dataset()
        plane_position.ImagePositionPatient = [decimal_string(v) for v in position]
        item = Dataset()
        item.PlanePositionSequence = [plane_position]
        per_frame.append(item)
    proxy.PerFrameFunctionalGroupsSequence = per_frame
    return proxy


def decimal_string(value: float) -> DSfloat:
    """``value`` as a DS of at most 16 characters (PS3.5 Table 6.2-1), rounded as little as needed
    (pydicom's ``format_number_as_ds``): a computed position such as -187.12345678901234 would
    otherwise be written with 17-18 characters, which dciodvfy reports as an error."""
    return DSfloat(float(value), auto_format=True)


def _reference_source_frame(seg: Dataset, frame: SourceFrame) -> None:
    """Point each frame's Source Image Sequence at the view's real source frame (1-based).

    The root Referenced Series Sequence (Series and Instance Reference Macro, PS3.3 Table 10-4)
    has no frame number; the frame is named in the Derivation Image functional group only.
    """
    for per_frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in per_frame.get("DerivationImageSequence", []):
            for source_image in derivation.SourceImageSequence:
                source_image.ReferencedFrameNumber = frame.frame_number
