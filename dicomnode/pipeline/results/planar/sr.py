"""Comprehensive SR (PS3.3 A.35.3) with a TID 1500 Measurement Report of the bone-scan result.

Content (PS3.16 TID 1500, built with highdicom):

- per lesion, a TID 1501 measurement group (tracking identifier and UID those of its GSPS
  contour), finding "Lesion" (SCT 52988006: a focus the node judged suspicious, not a diagnosis) in
  category "Morphologically abnormal structure", finding site where known (a region of the anatomy
  map, or of :mod:`dicomnode.segmentation.regions` without one, coded by :data:`SITE_CODES` with its
  laterality; another name given by a segmenter is logged and left out), the second stage's
  Probability of cancer (DCM 111047, unit 1) where it judged the lesion, Image View
  (DCM 111031) anterior or posterior projection, the source image (instance and frame), and three
  TID 300 measurements: Area (SCT 42798000, mm2), and the Nuclear Medicine Projection Activity
  (DCM 110820, UCUM ``{counts}``) twice, with Derivation Mean (SCT 373098007) and Maximum
  (SCT 56851009) and the statistic also in each one's Code Meaning ("Mean / Maximum Nuclear
  Medicine Projection Activity"): OHIF 3.13 labels a NUM by its Code Meaning only and would show
  two identical labels. Each of the three is INFERRED FROM (TID 300) the outline, a 2-D SCOORD
  POLYLINE on the source frame (no SCOORD3D: a planar projection has no 3-D position): OHIF's SR
  reader and its measurement-tracking adapter (cornerstone adapters, TID 1500) find a NUM's
  spatial coordinates only there, skip a NUM without them ("contains no SCOORD") and report "No
  spatial coordinates group" for a group-level (TID 1410) SCOORD, which highdicom does not allow
  under a TID 1410 measurement anyway. The Area is also INFERRED FROM the view's SEG segment
  ("Source of Measurement", DCM 121112, Referenced Segment Number 1) where SEGs are written: the
  reference ties each lesion to its segment (IHE AI Results);
- the per-view and study numbers (number of lesions, SCT 246206008; total area; the approximate
  Bone Scan Index, a local code: no standard concept names it) go into the "Derived Imaging
  Measurements" container (DCM 126011, TID 1500 row 8, TID 1420), *not* into measurement groups of
  "Imaging Measurements": OHIF 3.13 turns every measurement group into an annotation and stops
  with ``Cannot read properties of undefined (reading 'ReferencedSOPSequence')`` on a group
  without spatial coordinates. Per-view numbers carry the Image View (DCM 111031) as a concept
  modifier;
- a Qualitative Evaluations container (TID 1500 row 12, not built by highdicom) with TEXT
  comments: the summary, how the index is approximated, missing views and other notes, and
  "NOT FOR DIAGNOSTIC USE".

The numbers are the :class:`SegmentationResult`'s own: highdicom writes each value as a decimal
string and, where that rounds, also as Floating Point Value (PS3.3 C.18.1.1), so they read back
exactly. The lesion's tracking identifier and UID are those of its GSPS contour.
"""

from __future__ import annotations

import logging

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from dicomnode.pipeline.results.planar.burden import BSI_EXPLANATION, BoneBurden, SitedLesion
from dicomnode.pipeline.results.common import (
    NOT_FOR_DIAGNOSTIC_USE,
    Provenance,
    ResultKind,
    SourceFrame,
    check_writable,
    source_datasets,
)
from dicomnode.pipeline.results.planar.contours import lesion_outlines
from dicomnode.pipeline.results.planar.seg import view_series
from dicomnode.pipeline.results.text import bsi_summary, study_summary
from dicomnode.segmentation.scan import View

logger = logging.getLogger(__name__)

#: Local coding scheme for the concept no standard names (PS3.16 8.2: "99" prefix is private).
LOCAL_SCHEME = "99DICOMNODE"
APPROXIMATE_BSI = Code("APPROX-BSI", LOCAL_SCHEME, "Approximate Bone Scan Index")
LESIONS_UNIT = Code("{lesions}", "UCUM", "lesions")
PERCENT = codes.UCUM.Percent


def statistic(concept: Code, derivation: Code) -> Code:
    """``concept`` with the statistic its Derivation modifier (TID 300 row 5) names also in its
    Code Meaning, e.g. "Mean Nuclear Medicine Projection Activity".

    Readers that go by codes take the statistic from the modifier; OHIF 3.13 labels a NUM by its
    Code Meaning only and would show the mean and the maximum under one label. Code Value and
    Coding Scheme Designator, which identify the concept (PS3.3 8.1), are the standard's."""
    return Code(concept.value, concept.scheme_designator, f"{derivation.meaning} {concept.meaning}")


QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Procedure reported (TID 1500 row 4).
PROCEDURE = Code("42175-0", "LN", "Radionuclide scan of whole body")
VIEW_CODES = {View.ANTERIOR: codes.SCT.AnteriorProjection, View.POSTERIOR: codes.SCT.PosteriorProjection}
#: Finding site codes (SNOMED CT body structures) of the anatomy map's regions
#: (:class:`dicomnode.segmentation.anatomy.AnatomyLabel`) and of the coarse regions of :mod:`dicomnode.segmentation.regions`
#: used without a map. Urine (bladder, kidneys) is never a finding: such hot spots are not reported.
SITE_CODES: dict[str, Code] = {
    "skull": codes.SCT.Skull,
    "facial bones": codes.SCT.FacialBones,
    "cervical spine": codes.SCT.CervicalSpine,
    "thoracic spine": codes.SCT.ThoracicSpine,
    "thoracic cage": Code("272710004", "SCT", "Bone structure of thorax"),
    "lumbar spine": codes.SCT.LumbarSpine,
    "sacrum": codes.SCT.Sacrum,
    "pelvis": codes.SCT.BoneStructureOfPelvis,
    "ribs": codes.SCT.Rib,
    "sternum": codes.SCT.Sternum,
    "scapulae": codes.SCT.Scapula,
    "clavicles": codes.SCT.Clavicle,
    "humeri": codes.SCT.Humerus,
    "forearms and hands": codes.SCT.BoneOfUpperLimb,
    "upper limbs": codes.SCT.BoneOfUpperLimb,
    "femora": codes.SCT.Femur,
    "lower legs and feet": codes.SCT.BoneOfLowerLimb,
    "lower legs": codes.SCT.BoneOfLowerLimb,
    "feet": codes.SCT.Foot,
}
LATERALITY = {"left": codes.SCT.Left, "right": codes.SCT.Right}
#: What the node claims about a reported hot spot: a lesion (a focus of abnormal uptake the model
#: judged suspicious for a bone lesion), with its probability where a second stage gave one; not a
#: diagnosis of metastasis (docs/segmentation.md, "Anatomy map and second stage").
FINDING = codes.SCT.Lesion
PROBABILITY = codes.DCM.ProbabilityOfCancer


def finding_site(site: str | None) -> hd.sr.FindingSite | None:
    """The coded site of a region name, e.g. "left ribs" → Rib with laterality Left."""
    if not site:
        return None
    side, _, region = site.partition(" ")
    if side not in LATERALITY:
        side, region = "", site
    code = SITE_CODES.get(region)
    if code is None:
        return None
    return hd.sr.FindingSite(code, laterality=LATERALITY.get(side))


def build_report(
    frames: dict[View, SourceFrame], provenance: Provenance, burden: BoneBurden
) -> list[Dataset]:
    """The study's TID 1500 SR (one instance)."""
    series = provenance.series(ResultKind.SR)
    algorithm = _algorithm(provenance)
    groups: list = []
    for view, frame in frames.items():
        sited = burden.views[view].lesions
        outlines = lesion_outlines(frame.result)
        groups.extend(
            _lesion_group(item, outline, frame, provenance, algorithm)
            for item, outline in zip(sited, outlines, strict=True)
        )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(provenance),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups or [_placeholder_group(provenance)],
    )
    if not groups:  # no lesion: no Imaging Measurements container (TID 1500 rows 6, 8, 12: MC)
        content = report[0].ContentSequence
        for index in reversed(range(len(content))):
            if content[index].ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value:
                del content[index]
    report[0].ContentSequence.append(_derived_measurements(frames, burden))
    report[0].ContentSequence.append(_comments(frames, burden, provenance))
    first = next(iter(frames.values())).dataset
    sr = hd.sr.ComprehensiveSR(
        evidence=[*source_datasets(frames), *_segmentation_evidence(frames, provenance)],
        content=report[0],
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=provenance.uid(ResultKind.SR.value),
        instance_number=1,
        manufacturer=provenance.options.manufacturer,
        institution_name=provenance.options.institution_name,
        is_complete=True,
        is_final=False,  # an algorithm's proposal; nobody verified it
        is_verified=False,
        series_description=series.description,
    )
    sr.CodingSchemeIdentificationSequence = [_local_scheme(provenance)]
    provenance.finish(sr, first, series)
    logger.info("SR: %d planar ROI(s), BSI %s", burden.lesion_count,
                "n/a" if burden.bsi_percent is None else f"{burden.bsi_percent:.2f} %")
    return [check_writable(sr)]


def _algorithm(provenance: Provenance) -> hd.sr.AlgorithmIdentification:
    algorithm = provenance.algorithm
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version,
        parameters=[f"{key}={value}" for key, value in
                    provenance.algorithm_parameters(threshold=f"{provenance.threshold:g}").items()],
        family=codes.cid7162.ArtificialIntelligence, manufacturer=provenance.options.manufacturer,
    )


def _observation_context(provenance: Provenance) -> hd.sr.ObservationContext:
    """The algorithm as device observer (TID 1004)."""
    algorithm = provenance.algorithm
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=provenance.uid("device observer"),
        name=algorithm.name,
        manufacturer_name=provenance.options.manufacturer,
        model_name=f"{algorithm.network} {algorithm.version}"[:64],
        serial_number=provenance.options.serial_number(),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _lesion_group(
    item: SitedLesion, outline, frame: SourceFrame, provenance: Provenance,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    lesion = item.lesion
    identifier, uid = provenance.lesion_tracking(lesion)
    site = finding_site(item.site)
    if item.site and site is None:
        logger.warning("%s: site %r has no code; the SR names no finding site", identifier, item.site)
    probability = ([] if lesion.probability is None else [hd.sr.Measurement(
        name=PROBABILITY, value=round(lesion.probability, 4), unit=codes.UCUM.NoUnits,
        referenced_coordinates=[_outline(outline, frame)])])
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier),
        finding_type=FINDING,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_sites=[site] if site is not None else None,
        algorithm_id=algorithm,
        measurements=[
            _area_from_outline(lesion.area_mm2, outline, frame, provenance),
            *(
                hd.sr.Measurement(
                    name=statistic(codes.DCM.NuclearMedicineProjectionActivity, derivation), value=value,
                    unit=codes.UCUM.Counts, derivation=derivation,
                    referenced_coordinates=[_outline(outline, frame)],
                )
                for value, derivation in ((lesion.mean_counts, codes.SCT.Mean), (lesion.peak_counts, codes.SCT.Maximum))
            ),
            *probability,
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.DCM.ImageView, value=VIEW_CODES[lesion.view])
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                frame.source.sop_class_uid, frame.source.sop_instance_uid,
                referenced_frame_numbers=frame.referenced_frame_numbers,
            )
        ],
    )


def _placeholder_group(provenance: Provenance) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """What highdicom needs to build a report without lesions; removed again by the caller."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=provenance.uid("no lesion"), identifier="none"),
    )


def _area_from_outline(
    area_mm2: float, outline, frame: SourceFrame, provenance: Provenance
) -> hd.sr.Measurement:
    """The lesion's Area, INFERRED FROM its outline and, where written, its SEG segment."""
    area = hd.sr.Measurement(
        name=codes.SCT.Area, value=area_mm2, unit=codes.UCUM.SquareMillimeter,
        referenced_coordinates=[_outline(outline, frame)],
    )
    seg = _segmentation_reference(frame, provenance)
    if seg is not None:
        area[0].ContentSequence.append(hd.sr.ImageContentItem(
            name=codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=SegmentationStorage,
            referenced_sop_instance_uid=seg.SOPInstanceUID,
            referenced_segment_numbers=[1],
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
        ))
    return area


def _outline(outline, frame: SourceFrame) -> hd.sr.CoordinatesForMeasurement:
    """The lesion outline a measurement is INFERRED FROM: a 2-D POLYLINE on the source frame."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline,
        source_image=_region_source(frame),
    )


def _segmentation_reference(frame: SourceFrame, provenance: Provenance) -> Dataset | None:
    """SOP class, instance, series and study of the view's SEG, when this run writes SEGs.

    The SEG's UIDs are derived from the same inputs as the SR's (common.Provenance.uid), so
    they are known without building the SEG."""
    if ResultKind.SEG not in provenance.options.kinds:
        return None
    reference = Dataset()
    reference.SOPClassUID = SegmentationStorage
    reference.SOPInstanceUID = provenance.uid(ResultKind.SEG.value, frame.view.value)
    reference.SeriesInstanceUID = view_series(provenance, frame.view).uid
    reference.StudyInstanceUID = frame.dataset.StudyInstanceUID
    return reference


def _segmentation_evidence(frames: dict[View, SourceFrame], provenance: Provenance) -> list[Dataset]:
    references = (_segmentation_reference(frame, provenance) for frame in frames.values())
    return [reference for reference in references if reference is not None]


def _derived_measurements(
    frames: dict[View, SourceFrame], burden: BoneBurden
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 8, "Derived Imaging Measurements" (TID 1420): per view and study numbers."""
    items: list = []
    for frame in frames.values():
        view = burden.views[frame.view]
        for name, value, unit in (
            (codes.SCT.NumberOfLesions, view.lesion_count, LESIONS_UNIT),
            (codes.SCT.Area, view.total_area_mm2, codes.UCUM.SquareMillimeter),
        ):
            item = _number(name, value, unit)
            item.ContentSequence = hd.sr.ContentSequence([hd.sr.CodeContentItem(
                name=codes.DCM.ImageView, value=VIEW_CODES[frame.view],
                relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
            )])
            items.append(item)
    items.append(_number(codes.SCT.NumberOfLesions, burden.lesion_count, LESIONS_UNIT))
    items.append(_number(codes.SCT.Area, burden.total_area_mm2, codes.UCUM.SquareMillimeter))
    if burden.bsi_percent is not None:
        items.append(_number(APPROXIMATE_BSI, burden.bsi_percent, PERCENT))
    container = hd.sr.ContainerContentItem(
        name=codes.DCM.DerivedImagingMeasurements,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _number(name: Code, value: float, unit: Code) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(
        name=name, value=value, unit=unit, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def view_rules(frames: dict[View, SourceFrame]) -> str:
    """Which rule of docs/dicom.md decided each view (ViewRule), always written (docs/conformance.md)."""
    decided = [f"{view.value} by {frame.source.rule.value.replace('-', ' ')} (frame {frame.source.frame_number})"
               for view, frame in sorted(frames.items(), key=lambda item: list(View).index(item[0]))]
    return "Views decided: " + ", ".join(decided) + "."


def _comments(frames: dict[View, SourceFrame], burden: BoneBurden,
              provenance: Provenance) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: Qualitative Evaluations, here free-text comments (DCM 121106)."""
    algorithm = provenance.algorithm
    lines = [
        study_summary(burden),
        bsi_summary(burden) + ".",
        BSI_EXPLANATION,
        view_rules(frames),
        *(f"Note: {note}." for note in dict.fromkeys((*provenance.notes, *burden.notes))),
        *([f"Hot spots {provenance.reading.describe()}."] if provenance.reading is not None else []),
        f"Produced automatically by {algorithm.name} {algorithm.version} ({algorithm.network}) "
        f"with {provenance.options.manufacturer} {provenance.options.software_version}; "
        f"{NOT_FOR_DIAGNOSTIC_USE}.",
    ]
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=line, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for line in lines
    ])
    return container


def _region_source(frame: SourceFrame) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        frame.source.sop_class_uid, frame.source.sop_instance_uid,
        referenced_frame_numbers=frame.referenced_frame_numbers,
    )


def _local_scheme(provenance: Provenance) -> Dataset:
    """Coding Scheme Identification (PS3.3 C.12.1.1.3) of the local scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "dicomnode local concepts"
    item.CodingSchemeResponsibleOrganization = provenance.options.manufacturer
    return item
