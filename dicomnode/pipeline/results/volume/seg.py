"""DICOM Segmentation (PS3.3 A.51) of a SPECT/CT result on the CT series: two BINARY segments.

Segment 1 "Bone metastasis" (category Morphologically abnormal structure SCT 49755003, type Neoplasm,
Secondary SCT 14799000, as the planar SEG); segment 2 "Benign bone lesion" (same category, type
Lesion SCT 52988006: CID 7159 has no concept for the degenerative and traumatic lesions paper 003
calls benign). Both carry the algorithm (Algorithm Identification, PS3.3 C.8.20.2) and the site
Bone (SCT 272673000).

The CT slices are the source images, one SEG frame per slice and segment, so the SEG has the CT's
Frame of Reference, Plane Position / Orientation per frame and Pixel Measures: OHIF, 3D Slicer and
highdicom read it as a volume on the CT grid. Without a CT (SPECT-only) the source is the NM RECON
TOMO volume, one SEG frame per NM frame and segment, each referencing its NM frame (Derivation
Image, PS3.3 C.7.6.16.2.6); highdicom gets the NM volume as an enhanced-style stand-in (the planar
SEG's :func:`.seg.functional_groups_proxy`) whose Plane Position per frame and Plane Orientation
come from the volume's Detector Information item (PS3.3 C.8.4.11) and Slice Vector (C.8.4.8.1),
and whose Pixel Measures hold the NM Pixel Spacing and Slice Thickness (or the slice spacing where
the thickness is absent). The NM volume's Frame of Reference is kept; one without gets a UID derived
from the study and the sources. Frames without lesion are omitted (``omit_empty_frames``), except
when the whole result is empty, where every frame is written so that "no lesion" is stated.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.pipeline.results.common import (
    NOT_FOR_DIAGNOSTIC_USE,
    Provenance,
    ResultInputError,
    ResultKind,
    check_writable,
)
from dicomnode.pipeline.results.volume.inputs import SEGMENT_OF_CLASS, SegmentedVolume
from dicomnode.segmentation.volume_lesions import BENIGN, METASTATIC
from dicomnode.pipeline.results.planar.seg import functional_groups_proxy
from dicomnode.pipeline.results.text import clip_words
from dicomnode.segmentation.volume import nm_geometry

SEGMENT_LABELS = {METASTATIC: "Bone metastasis", BENIGN: "Benign bone lesion"}
SEGMENT_TYPES = {METASTATIC: codes.SCT.NeoplasmSecondary, BENIGN: codes.SCT.Lesion}


def segment_descriptions(provenance: Provenance) -> list[hd.seg.SegmentDescription]:
    algorithm = provenance.algorithm
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=codes.cid7162.ArtificialIntelligence,
        source=provenance.options.manufacturer, parameters=provenance.algorithm_parameters(decision="argmax"),
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=SEGMENT_OF_CLASS[label],
            segment_label=SEGMENT_LABELS[label],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=SEGMENT_TYPES[label],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            anatomic_regions=[codes.SCT.Bone],
        )
        for label in (METASTATIC, BENIGN)
    ]


def build_hybrid_segmentation(volume: SegmentedVolume, provenance: Provenance) -> Dataset:
    """The SEG instance (one), in this run's SEG series."""
    series = provenance.series(ResultKind.SEG)
    labels = np.zeros(volume.labels.shape, np.uint8)
    for label, segment in SEGMENT_OF_CLASS.items():
        labels[volume.labels == label] = segment
    if volume.ct:
        sources = volume.ct
    else:
        sources, labels = _nm_source(volume, labels, provenance)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(provenance),
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=provenance.uid(ResultKind.SEG.value, "spect-ct"),
        instance_number=1,
        **provenance.equipment,
        content_label="BONE_LESIONS",
        content_description=clip_words(f"AI bone lesions on {volume.modality_name}, {len(volume.lesions)} lesion(s); "
                                       f"{NOT_FOR_DIAGNOSTIC_USE}", 64),
        omit_empty_frames=bool(labels.any()),
        series_description=series.description,
    )
    provenance.finish(seg, volume.reference, series)
    return check_writable(seg)


def _nm_source(volume: SegmentedVolume, labels: np.ndarray, provenance: Provenance) -> tuple[list[Dataset], np.ndarray]:
    """The NM volume as highdicom's source (module docstring) and the labels in its stored frame order."""
    nm = volume.nm
    if nm is None:
        raise ResultInputError("a SPECT-only SEG needs the NM volume")
    geometry, order = nm_geometry(nm)
    stored = np.empty_like(labels)
    stored[order] = labels  # volume slice k is stored frame order[k]
    slice_of_frame = np.argsort(order)
    positions = [tuple(geometry.to_patient(np.array([k, 0.0, 0.0]))) for k in slice_of_frame]
    proxy = functional_groups_proxy(
        nm, frame_of_reference_uid=geometry.frame_of_reference or provenance.uid("frame of reference"),
        pixel_spacing=geometry.pixel_spacing,
        slice_thickness=float(nm.get("SliceThickness") or 0) or geometry.slice_spacing,
        orientation=(*geometry.row_direction, *geometry.column_direction), positions=positions,
    )
    return [proxy], stored
