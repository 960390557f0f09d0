"""The one registry of acquisition kinds: which model segments each, and which results it gets.

:data:`KINDS` maps an :class:`~dicomnode.dicom.acquisitions.AcquisitionKind` to its :class:`KindSteps`:
the ``[model]`` table of its model (:mod:`dicomnode.pipeline.models`), a ``segment`` step (source
datasets → the model's output, or :class:`NotProcessable` with the reason) and a ``build`` step
(that output → DICOM result objects). :func:`dicomnode.pipeline.processing.process_acquisition` runs
them for every kind alike; adding a kind is one entry here (docs/architecture.md, "Layout").

- planar whole body: views (:func:`dicomnode.segmentation.views.load_scan`) → the planar lesion model
  read by the anatomy map → SEG, GSPS, SR, SC (:func:`dicomnode.pipeline.results.build_results`);
- SPECT/CT and SPECT-only: a :class:`~dicomnode.segmentation.spectct.VolumeSegmenter` (decoding CT and
  NM once; the decoded volumes go on to the builder) → SEG, SR, SC
  (:func:`dicomnode.pipeline.results.volume.build.build_volume_results`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomnode.dicom.acquisitions import (
    AcquisitionKind,
    PlanarAcquisition,
    VolumeAcquisition,
)
from dicomnode.dicom.sop import ResultKind
from dicomnode.pipeline.models import PLANAR, SPECT_ONLY, SPECTCT
from dicomnode.pipeline.results import ResultOptions, build_results
from dicomnode.pipeline.results.planar.burden import assess_burden
from dicomnode.pipeline.results.volume.build import build_volume_results
from dicomnode.pipeline.results.identity import repair_sources
from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.result import SegmentationResult
from dicomnode.segmentation.skeleton import skeleton_evidence
from dicomnode.segmentation.spectct import VolumeSegmentation, VolumeSegmenter
from dicomnode.segmentation.views import ViewError, load_scan
from dicomnode.segmentation.volume import GeometryError
from dicomnode.segmentation.volume_lesions import find_lesions

Objects = list[tuple[ResultKind, Dataset]]

#: The SR's note on the results of a model whose card records no validation on real scans.
NOT_VALIDATED = "not validated on real scans"


class NotProcessable(Exception):
    """Input this kind cannot segment (views that cannot be read, no skeleton, a volume's geometry,
    a model not validated on real scans): the acquisition's "not processable" reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StudyContext:
    """What the whole study and the site decide for each of its acquisitions."""

    tracer_unstated: bool = False  # no header says what was injected: the image decides (planar)
    unvalidated_results: bool = False  # config [model] unvalidated_results


@dataclass(frozen=True)
class Segmented:
    """A segment step's output for its build step: the model's result, the (repaired) source
    datasets, and notes for the results."""

    result: Any  # SegmentationResult (planar) or VolumeSegmentation (volume kinds)
    sources: tuple[Dataset, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KindSteps:
    """How one acquisition kind is processed (module docstring)."""

    model: str  # the [model] table (dicomnode.pipeline.models)
    segment: Callable[[Any, Any, StudyContext], Segmented]
    build: Callable[[Segmented, ResultOptions, int], Objects]
    describe: Callable[[Any], dict[str, Any]]  # the result for a person (dicomnode segment's summary)


def segment_planar(acquisition: PlanarAcquisition, segmenter: Segmenter, study: StudyContext) -> Segmented:
    """Views → planar lesion result. When the study states no tracer, a scan that shows no skeleton
    is not a bone scan (:mod:`dicomnode.segmentation.skeleton`)."""
    try:
        scan = load_scan(acquisition.datasets)
    except ViewError as exc:
        raise NotProcessable(f"views cannot be read: {exc}") from exc
    if study.tracer_unstated:
        evidence = skeleton_evidence(scan)
        if evidence.shows_no_skeleton:
            raise NotProcessable("not a bone scan: no radiopharmaceutical is stated and the image shows no "
                                 f"skeleton ({evidence.describe()})")
    sources, repairs = repair_sources(acquisition.datasets)
    notes = (f"acquisition {acquisition.label!r}", *acquisition.notes, *scan.notes, *repairs)
    scan = dataclasses.replace(scan, notes=tuple(dict.fromkeys(notes)))
    return Segmented(segmenter.segment(scan), tuple(sources))


def build_planar(segmented: Segmented, options: ResultOptions, result_set: int) -> Objects:
    return build_results(segmented.result, segmented.sources, options, study_version=result_set)


def describe_planar(result: SegmentationResult) -> dict[str, Any]:
    """Views, lesions with their sites, total area and approximate BSI (:mod:`dicomnode.pipeline.results.planar.burden`)."""
    burden = assess_burden(result)
    lesions = [{"view": view.value, "label": sited.lesion.label, "site": sited.site,
                "area_mm2": round(sited.lesion.area_mm2, 1), "pixels": sited.lesion.pixel_count,
                "centroid_row_column": [round(c, 1) for c in sited.lesion.centroid],
                "peak_counts": round(sited.lesion.peak_counts, 1), "mean_counts": round(sited.lesion.mean_counts, 1),
                "probability": None if sited.lesion.probability is None else round(sited.lesion.probability, 3)}
               for view, view_burden in burden.views.items() for sited in view_burden.lesions]
    return {"views": [view.value for view in result.views], "missing_views": [view.value for view in result.missing],
            "lesions": lesions, "total_area_mm2": round(burden.total_area_mm2, 1),
            "bsi_percent": None if burden.bsi_percent is None else round(burden.bsi_percent, 2),
            "notes": [*result.notes, *burden.notes]}


def segment_volume(acquisition: VolumeAcquisition, segmenter: VolumeSegmenter, study: StudyContext) -> Segmented:
    """A SPECT/CT acquisition (paper 003), or a SPECT volume without CT, → class probabilities. A model
    whose card records no validation on real scans of its kind gives no results unless the site
    turned them on (``unvalidated_results``); then the SR says so."""
    kind = "SPECT/CT" if acquisition.ct else "SPECT-only"
    card = segmenter.card
    if not card.validated_on_real_scans and not study.unvalidated_results:
        raise NotProcessable(f"the {kind} model {card.name} is {NOT_VALIDATED} (trained and tested on simulated "
                             "exams only); its results are not sent unless [model] unvalidated_results = true")
    try:
        segmentation = segmenter.segment(acquisition.ct, acquisition.spect)
    except GeometryError as exc:
        raise NotProcessable(f"{kind} geometry cannot be read: {exc}") from exc
    sources, repairs = repair_sources(acquisition.datasets)
    unvalidated = () if segmentation.validated_on_real_scans else ((
        f"The {kind} model is {NOT_VALIDATED}: it has been trained and tested on simulated exams only; these "
        "results are sent because this site turned them on ([model] unvalidated_results)."),)
    notes = (*acquisition.notes, *repairs, *unvalidated)
    return Segmented(segmentation, tuple(sources), notes)


def build_volume(segmented: Segmented, options: ResultOptions, result_set: int) -> Objects:
    spect, *ct = segmented.sources
    segmentation: VolumeSegmentation = segmented.result
    return build_volume_results(ct, spect, segmentation.probabilities, algorithm=segmentation.algorithm,
                                classes=segmentation.classes, options=options, study_version=result_set,
                                notes=segmented.notes, volumes=segmentation.volumes)


def describe_volume(segmentation: VolumeSegmentation) -> dict[str, Any]:
    """The lesions of a volume segmentation: class, volume, probability (:mod:`dicomnode.segmentation.volume_lesions`)."""
    assert segmentation.volumes is not None
    _, lesions = find_lesions(segmentation.probabilities, None, None, segmentation.volumes.grid)
    return {"views": ["volume"], "lesions": [
        {"view": "volume", "label": lesion.number, "class": lesion.class_name, "volume_ml": round(lesion.volume_ml, 2),
         "voxels": lesion.voxels, "probability": round(lesion.probability, 3),
         "centroid_slice_row_column": [round(c, 1) for c in lesion.centroid]} for lesion in lesions]}


#: Every acquisition kind the node processes (module docstring).
KINDS: dict[AcquisitionKind, KindSteps] = {
    AcquisitionKind.PLANAR_WHOLE_BODY: KindSteps(PLANAR, segment_planar, build_planar, describe_planar),
    AcquisitionKind.SPECT_CT: KindSteps(SPECTCT, segment_volume, build_volume, describe_volume),
    AcquisitionKind.SPECT_ONLY: KindSteps(SPECT_ONLY, segment_volume, build_volume, describe_volume),
}

