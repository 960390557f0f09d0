"""Comprehensive 3D SR (PS3.3 A.35.13) with a TID 1500 Measurement Report of a SPECT/CT or
SPECT-only result.

- per lesion, a TID 1411 Volumetric ROI group referencing its class's segment of the SEG
  (:mod:`.seg`; Referenced Segment with the SEG's source series: the CT, or the NM volume of a
  SPECT-only acquisition), tracking identifier
  "Lesion n", finding type Neoplasm, Secondary (SCT 14799000) or Lesion (SCT 52988006) as the SEG
  segment, finding site Bone, and TID 300 measurements: Volume (SCT 118565006, mL), SPECT counts
  mean and maximum (Nuclear Medicine Tomographic Activity, DCM 110821, UCUM ``{counts}``,
  derivation Mean SCT 373098007 / Maximum SCT 56851009; absent without SPECT), CT mean (Attenuation
  Coefficient DCM 112031 in Hounsfield units, derivation Mean; absent without CT), and the class probability
  (Probability DCM 122157, unit 1); a statistic is named in the Code Meaning too, as in the planar
  SR (:func:`.sr.statistic`);
- per class, a TID 1501 group with the Number of lesions (SCT 246206008) and their total Volume;
- the algorithm as device observer and "NOT FOR DIAGNOSTIC USE" in a comment, as the planar SR.

A lesion's segment holds every lesion of its class: the SR says which lesion by its tracking
identifier and measurements, the SEG where the class is.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.pipeline.results.common import NOT_FOR_DIAGNOSTIC_USE, Provenance, ResultKind, check_writable
from dicomnode.pipeline.results.volume.inputs import SEGMENT_OF_CLASS, SegmentedVolume
from dicomnode.segmentation.volume_lesions import BENIGN, METASTATIC, VolumeLesion
from dicomnode.pipeline.results.volume.seg import SEGMENT_TYPES
from dicomnode.pipeline.results.planar.sr import (
    LESIONS_UNIT, QUALITATIVE_EVALUATIONS, _algorithm, _observation_context, statistic,
)

SPECT_COUNTS = codes.DCM.NuclearMedicineTomographicActivity  # DCM 110821
MILLILITER = Code("mL", "UCUM", "milliliter")
PROCEDURES = {
    True: Code("127902", "DCM", "SPECT CT of whole body"),
    False: Code("127901", "DCM", "SPECT of whole body"),
}
"""Procedure reported (TID 1500 row 4, CID 646), with and without a CT; CID 646 has no bone-specific
SPECT concept."""


def build_hybrid_report(volume: SegmentedVolume, provenance: Provenance, seg: Dataset) -> Dataset:
    """The SR instance (one) in this run's SR series."""
    series = provenance.series(ResultKind.SR)
    algorithm = _algorithm(provenance)
    source_series = str(volume.reference.SeriesInstanceUID)
    groups: list = [_lesion_group(lesion, provenance, algorithm, seg, source_series) for lesion in volume.lesions]
    groups.extend(_class_group(label, volume, provenance, algorithm) for label in (METASTATIC, BENIGN))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(provenance), procedure_reported=PROCEDURES[bool(volume.ct)],
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_comment(volume, provenance))
    evidence = [*volume.ct, seg] + ([volume.nm] if volume.nm is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=series.uid, series_number=series.number,
        sop_instance_uid=provenance.uid(ResultKind.SR.value, "spect-ct"), instance_number=1,
        manufacturer=provenance.options.manufacturer, institution_name=provenance.options.institution_name,
        is_complete=True, is_final=False, is_verified=False, series_description=series.description,
    )
    provenance.finish(sr, volume.reference, series)
    return check_writable(sr)


def _lesion_group(lesion: VolumeLesion, provenance: Provenance, algorithm: hd.sr.AlgorithmIdentification,
                  seg: Dataset, source_series: str) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=lesion.volume_ml, unit=MILLILITER)]
    if lesion.spect_mean is not None and lesion.spect_max is not None:
        measurements += [
            hd.sr.Measurement(name=statistic(SPECT_COUNTS, derivation), value=value, unit=codes.UCUM.Counts,
                              derivation=derivation)
            for value, derivation in ((lesion.spect_mean, codes.SCT.Mean), (lesion.spect_max, codes.SCT.Maximum))
        ]
    if lesion.ct_mean_hu is not None:
        measurements.append(hd.sr.Measurement(
            name=statistic(codes.DCM.AttenuationCoefficient, codes.SCT.Mean), value=lesion.ct_mean_hu,
            unit=codes.UCUM.HounsfieldUnit, derivation=codes.SCT.Mean))
    measurements.append(
        hd.sr.Measurement(name=codes.DCM.Probability, value=lesion.probability, unit=codes.UCUM.NoUnits))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=provenance.uid("spect-ct lesion", str(lesion.number)), identifier=f"Lesion {lesion.number}"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=SEGMENT_OF_CLASS[lesion.label],
            source_series=hd.sr.SourceSeriesForSegmentation(source_series)),
        finding_type=SEGMENT_TYPES[lesion.label],
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Bone)],
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _class_group(label: int, volume: SegmentedVolume, provenance: Provenance,
                 algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    lesions = [lesion for lesion in volume.lesions if lesion.label == label]
    name = "metastatic" if label == METASTATIC else "benign"
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=provenance.uid("spect-ct summary", name),
                                                     identifier=f"Study {name} lesions"),
        finding_type=SEGMENT_TYPES[label],
        finding_sites=[hd.sr.FindingSite(codes.SCT.Bone)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.NumberOfLesions, value=len(lesions), unit=LESIONS_UNIT),
            hd.sr.Measurement(name=codes.SCT.Volume, value=sum(les.volume_ml for les in lesions), unit=MILLILITER),
        ],
    )


def _counts_note(volume: SegmentedVolume) -> str:
    if volume.spect is None:
        return "No SPECT reconstruction: no counts reported."
    if volume.ct:
        return "SPECT counts are those of the reconstruction resampled onto the CT grid."
    return ("SPECT-only: no CT shares the reconstruction's Frame of Reference; lesions are segmented on "
            "the reconstruction's own grid by the SPECT-only model, and no CT numbers are reported.")


def _comment(volume: SegmentedVolume, provenance: Provenance) -> hd.sr.ContainerContentItem:
    algorithm = provenance.algorithm
    counts = {name: sum(les.class_name == name for les in volume.lesions) for name in ("metastatic", "benign")}
    lines = [
        f"{counts['metastatic']} metastatic and {counts['benign']} benign bone lesion(s) on {volume.modality_name}.",
        _counts_note(volume),
        *provenance.notes,
        f"Produced automatically by {algorithm.name} {algorithm.version} ({algorithm.network}) with "
        f"{provenance.options.manufacturer} {provenance.options.software_version}; {NOT_FOR_DIAGNOSTIC_USE}.",
    ]
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=line,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for line in lines
    ])
    return container
