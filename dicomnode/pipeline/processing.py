"""The processing of one study: its acquisitions, each segmented by its kind's model, → DICOM results.

Step "worker" of docs/architecture.md, "The journey of a study", without the queue: the worker
(:mod:`dicomnode.pipeline.worker`) and ``dicomnode segment`` (:mod:`dicomnode.tools.offline`) both
split a study (:func:`split_study`: planar whole-body acquisitions, then SPECT/CT and SPECT-only
volumes), judge its tracer once (:func:`judge_study_tracer`) and run :func:`process_acquisition` on
each acquisition: the steps of its kind (:data:`dicomnode.pipeline.kinds.KINDS`) with its model
(:class:`dicomnode.pipeline.models.NodeModels`). Each gives its own result set, or a "not
processable" reason; statics, TOMO and screen captures are not segmented.

Input errors (:data:`DATA_ERRORS`) make an acquisition "not processable" with their message; any
other error (a bug in a builder, memory, disk) propagates, so the job fails with its traceback
logged, or is retried.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import NuclearMedicineImageStorage

from dicomnode.dicom.acquisitions import (
    Acquisition,
    NMImageKind,
    split_acquisitions,
    split_hybrid,
    study_tracer_refusal,
    tracer_stated,
)
from dicomnode.dicom.sop import (
    RECEIVED,
    SEGMENTED_KIND,
    ObjectKind,
    ResultKind,
    instance_kind,
)
from dicomnode.pipeline.kinds import KINDS, NotProcessable, StudyContext
from dicomnode.pipeline.models import NodeModels
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.results.common import ResultInputError
from dicomnode.segmentation.views import ViewError
from dicomnode.segmentation.volume import GeometryError

log = logging.getLogger(__name__)

AnyAcquisition = TypeVar("AnyAcquisition", bound=Acquisition)


class UnreadableStudy(ValueError):
    """The study's input cannot be segmented as it stands (a permanent failure: not retried)."""


@dataclass(frozen=True)
class AcquisitionRun:
    """What became of one acquisition: its model's result and objects, or why it was not processed."""

    acquisition: Acquisition
    result: Any = None  # the kind's segmentation (dicomnode.pipeline.kinds.Segmented.result)
    objects: tuple[tuple[ResultKind, Dataset], ...] = ()
    encoded: tuple[bytes, ...] = ()  # each object as a Part 10 file (:func:`encode`), in order
    reason: str | None = None  # "not processable" reason; None when processed

    @property
    def processed(self) -> bool:
        return self.reason is None


#: Errors of result building that come from the input data, not from this code or this machine:
#: retrying the same input cannot help, so the acquisition ends "not processable" with the message.
DATA_ERRORS: tuple[type[Exception], ...] = (ResultInputError, ViewError, GeometryError, InvalidDicomError)


def split_study(by_kind: Mapping[str, Sequence[Dataset]]) -> list[Acquisition]:
    """A study's acquisitions from its instances by ``Instance.kind``: the planar whole-body ones
    (:func:`~dicomnode.dicom.acquisitions.split_acquisitions`), then each RECON TOMO volume with the CT
    of its Frame of Reference, or alone (:func:`~dicomnode.dicom.acquisitions.split_hybrid`)."""
    return [*split_acquisitions(by_kind.get(SEGMENTED_KIND, [])),
            *split_hybrid(by_kind.get(NMImageKind.RECON_TOMO.value, []), by_kind.get(ObjectKind.CT.value, []))]


def judge_study_tracer(acquisitions: Sequence[AnyAcquisition],
                       nm_headers: Sequence[Dataset]) -> tuple[list[AnyAcquisition], bool]:
    """The acquisitions with the whole study's "not a bone scan" reason where its NM headers give one
    (:func:`dicomnode.dicom.acquisitions.study_tracer_refusal`), and whether those headers say nothing of
    the tracer (then the image decides: :class:`~dicomnode.pipeline.kinds.StudyContext`)."""
    not_bone = study_tracer_refusal(nm_headers)
    if not_bone is not None:
        acquisitions = [a.refused(not_bone) for a in acquisitions]
    return list(acquisitions), not tracer_stated(nm_headers)


def process_acquisition(acquisition: Acquisition, models: NodeModels, options: ResultOptions,
                        result_set: int = 1, study: StudyContext | None = None) -> AcquisitionRun:
    """Segment one acquisition of any kind with its model and build its result objects (series
    numbers from ``result_set``): the steps of :data:`dicomnode.pipeline.kinds.KINDS`.

    Input that cannot be segmented (a refusal, views or geometry that cannot be read, not a bone
    scan, headers that result building cannot use even after repair) gives a run with its
    ``reason``; any other error propagates, so the job fails (or is retried) with its traceback.
    """
    if acquisition.refusal is not None:
        return AcquisitionRun(acquisition, reason=acquisition.refusal)
    steps = KINDS[acquisition.kind]
    try:
        segmented = steps.segment(acquisition, models.get(steps.model), study or StudyContext())
    except NotProcessable as exc:
        return AcquisitionRun(acquisition, reason=exc.reason)
    study_uid = str(acquisition.datasets[0].get("StudyInstanceUID", ""))
    return _built(acquisition, study_uid, lambda: steps.build(segmented, options, result_set), segmented.result)


def _built(acquisition: Acquisition, study_uid: str, build: Callable[[], list[tuple[ResultKind, Dataset]]],
           result: Any) -> AcquisitionRun:
    """The run of an acquisition whose result objects ``build`` makes, each encoded as a Part 10 file.

    Building and encoding are one step, so a header that cannot be written is a "not processable"
    reason (:data:`DATA_ERRORS`, with its message), never a retried crash. Library warnings raised
    meanwhile quote attribute values (patient names) and are only counted in the log.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            objects = build()
            encoded = tuple(encode(dataset) for _, dataset in objects)
        except DATA_ERRORS as exc:
            log.warning("result building failed: %s", exc, extra={"study_uid": study_uid, "error": type(exc).__name__})
            return AcquisitionRun(acquisition, result=result,
                                  reason=f"results cannot be built from these headers: {exc}")
        finally:
            if caught:
                log.info("library warnings while building results withheld (they may quote patient data)",
                         extra={"count": len(caught), "categories": sorted({w.category.__name__ for w in caught})})
    return AcquisitionRun(acquisition, result=result, objects=tuple(objects), encoded=encoded)


def process_study(datasets: Sequence[Dataset], models: NodeModels, options: ResultOptions,
                  first_result_set: int = 1) -> list[AcquisitionRun]:
    """Every acquisition of one study, each processed on its own as the worker does (``dicomnode segment``).

    The k-th processed acquisition gets result set ``first_result_set + k``. Raises
    :class:`UnreadableStudy` when the study holds no acquisition to segment at all.
    """
    by_kind: dict[str, list[Dataset]] = {}
    for ds in datasets:
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in RECEIVED:
            by_kind.setdefault(instance_kind(ds, sop_class)[0], []).append(ds)
    nm_headers = [ds for ds in datasets if ds.get("SOPClassUID") == NuclearMedicineImageStorage]
    acquisitions, unstated = judge_study_tracer(split_study(by_kind), nm_headers)  # as the worker decides
    if not acquisitions:
        raise UnreadableStudy(no_whole_body_reason(held_kinds(datasets)))
    study = StudyContext(tracer_unstated=unstated, unvalidated_results=models.config.unvalidated_results)
    runs = []
    for acquisition in acquisitions:
        run = process_acquisition(acquisition, models, options, first_result_set, study)
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
    return f"no whole-body NM acquisition or SPECT volume to segment (the study holds {held})"


def encode(dataset: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (PS3.10 §7: preamble, meta information, data set)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
