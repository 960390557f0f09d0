"""The worker: claim a job, segment the study, write its DICOM results, complete the job.

Step "worker" of docs/architecture.md, "The journey of a study".

For each claimed job (:mod:`dicomnode.pipeline.queue`):

1. read the study's current NM instances (not superseded) from the spool;
2. :func:`dicomnode.pipeline.processing.segment_study` (views → segmentation → DICOM results) with
   the job's study version (a re-processed study gets new series);
3. write every result object durably under the spool's results area
   (``results/<study>/<series>/<sop>.dcm``, paths from validated UIDs only);
4. :func:`dicomnode.pipeline.queue.complete`: the result rows and their outbox rows, one transaction.

While it works, a heartbeat thread extends the lease every third of its length; a worker that dies
stops renewing it and any worker reclaims the job when it expires. A study with only one view is
processed (the results say which view is missing). Unreadable input (views that cannot be read, a file that
is not DICOM, a study without NM instances) fails the job at once with the reason kept — retrying
cannot help; any other error is retried up to ``[queue] max_attempts`` with a growing delay.

The segmenter is loaded once per process (:func:`dicomnode.pipeline.processing.load_segmenter`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import NuclearMedicineImageStorage
from sqlalchemy import select

from dicomnode.dicom.sop import ResultKind
from dicomnode.pipeline.processing import UnreadableStudy, encode, segment_study
from dicomnode.pipeline.queue import (
    ClaimedJob,
    LeaseLost,
    QueuePolicy,
    StoredResult,
    claim,
    complete,
    fail,
    heartbeat,
    worker_name,
)
from dicomnode.pipeline.results import ResultOptions
from dicomnode.store.db import Database
from dicomnode.store.models import Instance
from dicomnode.store.spool import Spool
from segmentation.inference import Segmenter

log = logging.getLogger(__name__)


def store_results(spool: Spool, objects: Sequence[tuple[ResultKind, Dataset]]) -> list[StoredResult]:
    """Write each object durably under ``results/`` and describe it for :func:`queue.complete`."""
    stored = []
    for kind, dataset in objects:
        study, series, sop = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                              str(dataset.SOPInstanceUID))
        written = spool.write(spool.result_path(study, series, sop), encode(dataset))
        stored.append(StoredResult(kind=kind, sop_instance_uid=sop, sop_class_uid=str(dataset.SOPClassUID),
                                   series_instance_uid=series, path=written.path))
    return stored


class _Heartbeat:
    """Extends a job's lease every third of its length while the block runs."""

    def __init__(self, database: Database, job: ClaimedJob, policy: QueuePolicy) -> None:
        self._database, self._job, self._policy = database, job, policy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-job-{job.id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._policy.lease_seconds / 3):
            try:
                if not heartbeat(self._database, self._job, self._policy):
                    return
            except Exception:  # a database hiccup: the next beat tries again
                log.exception("heartbeat failed", extra={"job": self._job.id})

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """Processes jobs one at a time; one instance per process (it holds the loaded model)."""

    def __init__(self, database: Database, spool: Spool, segmenter: Segmenter, options: ResultOptions,
                 destinations: Sequence[str], policy: QueuePolicy, owner: str | None = None) -> None:
        self.database = database
        self.spool = spool
        self.segmenter = segmenter
        self.options = options
        self.destinations = tuple(destinations)
        self.policy = policy
        self.owner = owner or worker_name("worker")

    def run_once(self) -> bool:
        """Claim and process one job; False when there was nothing to do."""
        job = claim(self.database, self.owner, self.policy)
        if job is None:
            return False
        self.process(job)
        return True

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Process jobs until ``stop`` is set, polling every ``poll_seconds`` when idle."""
        log.info("worker started", extra={"owner": self.owner})
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # database down, ...: keep the loop alive, try again later
                log.exception("worker loop error")
                busy = False
            if not busy:
                stop.wait(poll_seconds)
        log.info("worker stopped", extra={"owner": self.owner})

    def process(self, job: ClaimedJob) -> None:
        """Segment the job's study and complete or fail the job (see the module docstring)."""
        try:
            self._process(job)
        except LeaseLost:
            log.warning("job taken over by another worker; this run's result files are orphans",
                        extra={"job": job.id, "owner": self.owner})

    def _process(self, job: ClaimedJob) -> None:
        with _Heartbeat(self.database, job, self.policy):
            try:
                datasets = self._read_instances(job)
                result, objects = segment_study(datasets, self.segmenter, self.options, job.study_version)
                stored = store_results(self.spool, objects)
            except UnreadableStudy as exc:
                fail(self.database, job, str(exc), self.policy, permanent=True)
                return
            except Exception as exc:
                log.exception("job error", extra={"job": job.id})
                fail(self.database, job, f"{type(exc).__name__}: {exc}", self.policy)
                return
        complete(self.database, job, stored, self.destinations)
        log.info("study segmented", extra={"job": job.id, "study_uid": job.study_instance_uid,
                                           "lesions": len(result.lesions),
                                           "missing": [view.value for view in result.missing]})

    def _read_instances(self, job: ClaimedJob) -> list[Dataset]:
        with self.database.session() as session:
            paths = session.scalars(
                select(Instance.path).where(Instance.study_id == job.study_id, Instance.superseded.is_(False),
                                            Instance.sop_class_uid == NuclearMedicineImageStorage)
                .order_by(Instance.id)
            ).all()
        datasets = []
        for path in paths:
            try:
                datasets.append(pydicom.dcmread(self.spool.absolute(path)))
            except InvalidDicomError as exc:
                raise UnreadableStudy(f"instance {path} cannot be read: {exc}") from exc
        return datasets
