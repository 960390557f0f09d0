"""The processing of one study: whole-body acquisitions → views → segmentation → DICOM result objects.

Step "worker" of docs/architecture.md, "The journey of a study", without the queue: the worker
(:mod:`dicomnode.pipeline.worker`) runs it for each job, ``dicomnode segment``
(:mod:`dicomnode.tools.offline`) on files.

Each whole-body acquisition (:mod:`dicomnode.dicom.acquisitions`) is processed on its own
(:func:`segment_acquisition`) and gives its own result set, or a "not processable" reason; statics,
TOMO, reconstructions, CT and screen captures are not segmented.

The segmenter is loaded once per process (:func:`load_segmenter`, config ``[model]``), with the
shipped anatomy map and second stage (:mod:`dicomnode.segmentation.reading`: hot spots in the bladder, kidneys
or soft tissue and physiological uptake are not reported as lesions; each lesion is named by its
region); ``weights`` is
``"default"`` (the shipped model), ``"threshold"`` (the network-free baseline) or a path to a
``.safetensors`` file or model card; ``device`` is resolved by :func:`dicomnode.segmentation.device.resolve_device`
(``"auto"``: CUDA when present, else the CPU; a CUDA device without a GPU is an error).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import NuclearMedicineImageStorage

from dicomnode.dicom.sop import RECEIVED, ResultKind, instance_kind
from dicomnode.pipeline.results import ResultOptions, build_results
from dicomnode.pipeline.results.hybrid_results import build_hybrid_results
from dicomnode.pipeline.results.identity import repair_sources
from dicomnode.dicom.acquisitions import (
    Acquisition,
    HybridAcquisition,
    NMImageKind,
    nm_image_kind,
    split_acquisitions,
    study_tracer_refusal,
    tracer_stated,
)
from dicomnode.segmentation.device import resolve_device
from dicomnode.segmentation.inference import WEIGHTS_DIR, Segmenter
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.segmentation.result import SegmentationResult
from dicomnode.segmentation.skeleton import skeleton_evidence
from dicomnode.segmentation.spectct import HybridSegmenter
from dicomnode.segmentation.volume import GeometryError
from dicomnode.segmentation.views import ViewError, load_scan

log = logging.getLogger(__name__)


AnyAcquisition = TypeVar("AnyAcquisition", Acquisition, HybridAcquisition)


class UnreadableStudy(ValueError):
    """The study's input cannot be segmented as it stands (a permanent failure: not retried)."""


def load_segmenter(weights: str, device: str = "auto", threshold: float | None = None) -> Segmenter:
    """The segmenter named by config ``[model]`` (see the module docstring).

    The card's operating point (threshold, peak, minimum area, flip) is used as it stands, the
    point cross-validated with the model (``dicomnode evaluate`` uses the same); ``threshold`` (config
    ``[model] threshold``) replaces the card's probability threshold when given, and is logged as a
    site override. Raises :class:`dicomnode.segmentation.device.DeviceError` for a device this machine lacks.
    """
    resolved = resolve_device(device)
    if weights == "default":
        segmenter = Segmenter.default(device=resolved)
    elif weights == "threshold":
        segmenter = Segmenter.from_weights(WEIGHTS_DIR / "threshold.json", device=resolved)
    else:
        segmenter = Segmenter.from_weights(Path(weights), device=resolved)
    if threshold is not None and threshold != segmenter.card.threshold:
        log.warning("[model] threshold %g overrides the model card's %g (a site override: the card's "
                    "operating point was cross-validated at its own threshold)", threshold, segmenter.card.threshold)
        segmenter.card = dataclasses.replace(segmenter.card, threshold=threshold)
    segmenter.reader = AnatomyReader.default(device=resolved)  # the anatomy map reads the lesions
    point = segmenter.card.operating_point
    log.info("segmenter %s %s (%s) on %s, operating point: threshold %g, peak %s, minimum area %g mm2, "
             "flip %s (%s)", segmenter.algorithm.name, segmenter.algorithm.version, segmenter.algorithm.network,
             resolved, segmenter.card.threshold,
             "-" if point.peak_threshold is None else f"{point.peak_threshold:.4g}", point.min_area_mm2,
             "on" if point.test_time_flip else "off", "site override" if threshold is not None else "model card")
    return segmenter


@dataclass(frozen=True)
class AcquisitionRun:
    """What became of one whole-body acquisition: its result and objects, or why it was not processed."""

    acquisition: Acquisition | HybridAcquisition
    result: SegmentationResult | None = None  # planar acquisitions only
    objects: tuple[tuple[ResultKind, Dataset], ...] = ()
    encoded: tuple[bytes, ...] = ()  # each object as a Part 10 file (:func:`encode`), in order
    reason: str | None = None  # "not processable" reason; None when processed

    @property
    def processed(self) -> bool:
        return self.reason is None


#: Errors of result building that come from the input data, not from this machine: retrying the
#: same input cannot help, so the acquisition ends "not processable" with the error as its reason.
DATA_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def whole_body_instances(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The whole-body NM images among ``datasets`` (Image Type value 3, :mod:`dicomnode.dicom.acquisitions`)."""
    return [ds for ds in datasets if ds.get("SOPClassUID") == NuclearMedicineImageStorage
            and nm_image_kind(ds)[0] is NMImageKind.WHOLE_BODY]


def judge_study_tracer(acquisitions: Sequence[AnyAcquisition],
                       nm_headers: Sequence[Dataset]) -> tuple[list[AnyAcquisition], bool]:
    """The acquisitions with the whole study's "not a bone scan" reason where its NM headers give one
    (:func:`dicomnode.dicom.acquisitions.study_tracer_refusal`), and whether those headers say nothing of
    the tracer (then the image decides: :func:`segment_acquisition` ``tracer_unstated``)."""
    not_bone = study_tracer_refusal(nm_headers)
    if not_bone is not None:
        acquisitions = [dataclasses.replace(a, refusal=a.refusal or not_bone) for a in acquisitions]
    return list(acquisitions), not tracer_stated(nm_headers)


def segment_acquisition(acquisition: Acquisition, segmenter: Segmenter, options: ResultOptions,
                        result_set: int = 1, *, tracer_unstated: bool = False) -> AcquisitionRun:
    """Segment one acquisition and build its result objects (series numbers from ``result_set``).

    Input that cannot be segmented (views that cannot be read, patient identity that disagrees, not a
    bone scan, headers that result building cannot use even after repair) gives a run with its
    ``reason``; errors of this machine (memory, disk, a crashed library) propagate, so the job is retried.
    When the study states no tracer (``tracer_unstated``: :func:`dicomnode.dicom.acquisitions.tracer_stated`
    is false), a scan that shows no skeleton is not a bone scan (:mod:`dicomnode.segmentation.skeleton`).
    """
    name = f"acquisition {acquisition.label!r}"
    if acquisition.refusal is not None:
        return AcquisitionRun(acquisition, reason=acquisition.refusal)
    try:
        scan = load_scan(acquisition.datasets)
    except ViewError as exc:
        return AcquisitionRun(acquisition, reason=f"views cannot be read: {exc}")
    if tracer_unstated:
        evidence = skeleton_evidence(scan)
        if evidence.shows_no_skeleton:
            return AcquisitionRun(acquisition, reason=(
                "not a bone scan: no radiopharmaceutical is stated and the image shows no skeleton "
                f"({evidence.describe()})"))
    sources, repairs = repair_sources(acquisition.datasets)
    notes = (f"{name}", *acquisition.notes, *scan.notes, *repairs)
    scan = dataclasses.replace(scan, notes=tuple(dict.fromkeys(notes)))
    result = segmenter.segment(scan)
    return _built(acquisition, scan.study_instance_uid,
                  lambda: build_results(result, sources, options, study_version=result_set), result)


#: The SR's note on the results of a model whose card records no validation on real scans.
NOT_VALIDATED = "not validated on real scans"


def segment_hybrid(acquisition: HybridAcquisition, segmenter: HybridSegmenter, options: ResultOptions,
                   result_set: int = 1, *, unvalidated_results: bool = False) -> AcquisitionRun:
    """Segment one SPECT/CT acquisition (paper 003), or a SPECT volume without CT with the SPECT-only
    model, and build its SEG, SR and SC on the CT series (on the NM volume without one).

    As :func:`segment_acquisition`: data that cannot be used gives a run with its ``reason``. A model
    whose card records no validation on real scans of its kind gives no results unless
    ``unvalidated_results`` (config ``[model] unvalidated_results``, default off: the acquisition ends
    "not processable" saying so); with it on, the SR says "not validated on real scans".
    """
    if acquisition.refusal is not None:
        return AcquisitionRun(acquisition, reason=acquisition.refusal)
    kind = "SPECT/CT" if acquisition.ct else "SPECT-only"
    card = segmenter.model(bool(acquisition.ct))[1]
    if not card.validated_on_real_scans and not unvalidated_results:
        return AcquisitionRun(acquisition, reason=(
            f"the {kind} model {card.name} is {NOT_VALIDATED} (trained and tested on simulated exams "
            f"only); its results are not sent unless [model] unvalidated_results = true"))
    try:
        segmentation = segmenter.segment(acquisition.ct, acquisition.spect)
    except GeometryError as exc:
        return AcquisitionRun(acquisition, reason=f"{kind} geometry cannot be read: {exc}")
    (spect, *ct), repairs = repair_sources([acquisition.spect, *acquisition.ct])
    if repairs:
        log.info("SPECT sources repaired before result building", extra={"repairs": len(repairs)})
    notes = (*acquisition.notes, *(() if segmentation.validated_on_real_scans else (
        f"The {kind} model is {NOT_VALIDATED}: it has been trained and tested on simulated exams only; "
        "these results are sent because this site turned them on ([model] unvalidated_results).",)))
    return _built(acquisition, str(acquisition.spect.StudyInstanceUID),
                  lambda: build_hybrid_results(ct, spect, segmentation.probabilities,
                                               algorithm=segmentation.algorithm, options=options,
                                               study_version=result_set, notes=notes,
                                               volumes=segmentation.volumes))


def _built(acquisition: Acquisition | HybridAcquisition, study_uid: str,
           build: Callable[[], list[tuple[ResultKind, Dataset]]],
           result: SegmentationResult | None = None) -> AcquisitionRun:
    """The run of an acquisition whose result objects ``build`` makes, each encoded as a Part 10 file.

    Building and encoding are one step, so a header that cannot be written is a "not processable"
    reason (:data:`DATA_ERRORS`), never a retried crash. Library warnings raised meanwhile quote
    attribute values (patient names) and are only counted in the log.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            objects = build()
            encoded = tuple(encode(dataset) for _, dataset in objects)
        except DATA_ERRORS as exc:
            log.warning("result building failed", extra={"study_uid": study_uid, "error": type(exc).__name__})
            return AcquisitionRun(acquisition, result=result,
                                  reason=f"results cannot be built from these headers ({type(exc).__name__})")
        finally:
            if caught:
                log.info("library warnings while building results withheld (they may quote patient data)",
                         extra={"count": len(caught), "categories": sorted({w.category.__name__ for w in caught})})
    return AcquisitionRun(acquisition, result=result, objects=tuple(objects), encoded=encoded)


def segment_study(datasets: Sequence[Dataset], segmenter: Segmenter, options: ResultOptions,
                  first_result_set: int = 1) -> list[AcquisitionRun]:
    """Every whole-body acquisition of one study, segmented on its own (``dicomnode segment``).

    The k-th processed acquisition gets result set ``first_result_set + k``. Raises
    :class:`UnreadableStudy` when the study holds no whole-body NM image at all.
    """
    acquisitions = split_acquisitions(whole_body_instances(datasets))
    if not acquisitions:
        raise UnreadableStudy(no_whole_body_reason(held_kinds(datasets)))
    nm_headers = [ds for ds in datasets if ds.get("SOPClassUID") == NuclearMedicineImageStorage]
    acquisitions, unstated = judge_study_tracer(acquisitions, nm_headers)  # as the worker decides
    runs = []
    for acquisition in acquisitions:
        run = segment_acquisition(acquisition, segmenter, options, first_result_set, tracer_unstated=unstated)
        first_result_set += run.processed
        runs.append(run)
    return runs


def held_kinds(datasets: Sequence[Dataset]) -> dict[str, int]:
    """How many data sets of each kind (``Instance.kind`` names) ``datasets`` holds."""
    kinds: dict[str, int] = {}
    for ds in datasets:
        sop_class = str(ds.get("SOPClassUID", ""))
        kind = instance_kind(ds, sop_class)[0] if sop_class in RECEIVED else "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def no_whole_body_reason(kinds: dict[str, int]) -> str:
    """The "not processable" reason of a study without a whole-body acquisition, naming what it holds."""
    held = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "nothing"
    return f"no whole-body NM acquisition to segment (the study holds {held})"


def encode(dataset: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (PS3.10 §7: preamble, meta information, data set)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
