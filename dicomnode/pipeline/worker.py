"""The worker: claim a job, segment the study, write its DICOM results, complete the job.

Step "worker" of docs/architecture.md, "The journey of a study".

For each claimed job (:mod:`dicomnode.pipeline.queue`):

1. read the study's current whole-body NM instances (not superseded) from the spool and split them
   into acquisitions (:func:`dicomnode.dicom.acquisitions.split_acquisitions`);
2. decide from all of the study's NM headers whether it is a bone scan at all
   (:func:`dicomnode.pipeline.processing.judge_study_tracer`: a stated radiopharmaceutical, the
   study and series descriptions, and where they say nothing the image); if not, every acquisition
   ends "not processable" with that reason;
   for each acquisition (:func:`dicomnode.pipeline.processing.split_study`: whole-body planar, then
   SPECT/CT and SPECT-only) that no earlier job handled with the same content (its fingerprint: a
   hash of its instances' SHA-256), :func:`dicomnode.pipeline.processing.process_acquisition` (its
   kind's model → DICOM results, in result set *n*: the study's n-th processed acquisition, which
   sets its series numbers), or its "not processable" reason;
3. write every result object durably under the spool's results area
   (``results/<study>/<series>/<sop>.dcm``, paths from validated UIDs only);
4. :func:`dicomnode.pipeline.queue.complete`: the result rows, their outbox rows and one
   :class:`~dicomnode.store.models.AcquisitionOutcome` per acquisition, one transaction.

A study without any whole-body acquisition (statics, TOMO, CT and screen captures only) ends DONE with
one "not processable" outcome that names what it holds. Statics and the rest are never segmented.

While it works, a heartbeat thread extends the lease every third of its length; a worker that dies
stops renewing it and any worker reclaims the job when it expires (not counted as an attempt:
:mod:`dicomnode.pipeline.queue`). A study with only one view is processed (the results say which
view is missing). Input that cannot be segmented (views that cannot be read, identity that
disagrees, not a bone scan) is an acquisition's "not processable" outcome, never a failed job; a
stored file that is no longer DICOM fails the job at once with the reason kept — retrying cannot
help.

The environment failing is not the study's fault
(:func:`~dicomnode.pipeline.queue.environment_problem`): "no space left on device" (``ENOSPC``,
``EDQUOT``, SQLite's "database or disk is full") and an unavailable database (SQLAlchemy's
``OperationalError`` / ``InterfaceError``, a lost connection) give the job back
(:func:`dicomnode.pipeline.queue.release`: QUEUED, no attempt used, tried again after
``[queue] environment_retry_seconds``), and the worker pauses: it claims nothing while the spool's
filesystem is below ``[storage] min_free_bytes`` (the floor under which the receiver answers
0xA700), and once paused until :func:`resume_headroom` more are free (hysteresis), and, after a
database error, until the database answers again. It resumes by itself. Any
other error is retried up to ``[queue] max_attempts`` with a growing delay.

The models are loaded once per process (:class:`dicomnode.pipeline.models.NodeModels`, ``[model]``);
the planar lesion model is looked up before each job when the service passes ``active_planar``
(the model registry's active model, :mod:`dicomnode.learn.active`), so an activation or a rollback
reads the next study.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import NuclearMedicineImageStorage
from sqlalchemy import select, true

from dicomnode.dicom.acquisitions import content_fingerprint
from dicomnode.dicom.sop import SEGMENTED_KINDS
from dicomnode.pipeline.kinds import StudyContext
from dicomnode.pipeline.models import PLANAR, NodeModels
from dicomnode.pipeline.processing import (
    AcquisitionRun,
    UnreadableStudy,
    judge_study_tracer,
    no_whole_body_reason,
    process_acquisition,
    split_study,
)
from dicomnode.pipeline.queue import (
    DISK_SPACE,
    ClaimedJob,
    LeaseLost,
    Outcome,
    QueuePolicy,
    StoredResult,
    claim,
    complete,
    environment_problem,
    fail,
    heartbeat,
    release,
    worker_name,
)
from dicomnode.pipeline.results import ResultOptions
from dicomnode.store.db import Database
from dicomnode.store.models import AcquisitionOutcome, AcquisitionState, Instance, Study
from dicomnode.store.spool import Spool

log = logging.getLogger(__name__)

#: Values larger than this (pixel data) are read from the spool only when used: acquisitions that an
#: earlier job already handled are grouped from their headers and skipped without reading their pixels.
DEFER_BYTES = 64 * 1024
#: A worker paused for disk space claims again only with an eighth of the floor more free (at least
#: 1 MiB, at most 64 MiB): without it, a floor of 0 and a full disk paused and resumed it every poll
#: (the job met ENOSPC at once).
RESUME_HEADROOM_BYTES = 64 << 20


def resume_headroom(min_free_bytes: int) -> int:
    """Free bytes above the floor a worker paused for disk space waits for (hysteresis)."""
    return min(RESUME_HEADROOM_BYTES, max(1 << 20, min_free_bytes // 8))


def store_results(spool: Spool, run: AcquisitionRun) -> list[StoredResult]:
    """Write each object of ``run`` durably under ``results/`` and describe it for :func:`queue.complete`."""
    stored = []
    for (kind, dataset), data in zip(run.objects, run.encoded, strict=True):
        study, series, sop = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                              str(dataset.SOPInstanceUID))
        written = spool.write(spool.result_path(study, series, sop), data)
        stored.append(StoredResult(kind=kind, sop_instance_uid=sop, sop_class_uid=str(dataset.SOPClassUID),
                                   series_instance_uid=series, path=written.path, size=written.size))
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
    """Processes jobs one at a time; one instance per process (it holds the loaded models)."""

    def __init__(self, database: Database, spool: Spool, models: NodeModels, options: ResultOptions,
                 destinations: Sequence[str], policy: QueuePolicy, owner: str | None = None, *,
                 active_planar: Callable[[], object] | None = None) -> None:
        self.database = database
        self.spool = spool
        self.models = models
        self.options = options
        self.destinations = tuple(destinations)
        self.policy = policy
        self.owner = owner or worker_name("worker")
        self.active_planar = active_planar  # the planar lesion model to read the next study with
        self.waiting_for: str | None = None  # the condition this worker is paused for, if any
        self._stop = threading.Event()

    def run_once(self) -> bool:
        """Claim and process one job; False when there was nothing to do (or the spool is below its
        free-space floor: nothing is claimed then)."""
        floor = self.spool.min_free_bytes
        if not self.spool.has_room(resume_headroom(floor) if self.waiting_for == DISK_SPACE else 0):
            self._pause(DISK_SPACE, f"{self.spool.free_bytes()} bytes free on the spool; claims again at "
                                    f"{floor + resume_headroom(floor)}")
            return False
        job = claim(self.database, self.owner, self.policy)
        self._resume()
        if job is None:
            return False
        if self.active_planar is not None:
            self.models.use(PLANAR, self.active_planar())
        self.process(job)
        return True

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Process jobs until ``stop`` is set, polling every ``poll_seconds`` when idle or paused."""
        self._stop = stop
        log.info("worker started", extra={"owner": self.owner})
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception as exc:  # database down, ...: keep the loop alive, try again later
                problem = environment_problem(exc)
                if problem is None:
                    log.exception("worker loop error")
                else:
                    self._pause(problem, f"{type(exc).__name__}: {exc}")
                busy = False
            if not busy:
                stop.wait(poll_seconds)
        log.info("worker stopped", extra={"owner": self.owner})

    def _pause(self, problem: str, detail: str) -> None:
        if self.waiting_for != problem:
            log.warning("worker paused: waiting for %s", problem, extra={"owner": self.owner, "error": detail})
        self.waiting_for = problem

    def _resume(self) -> None:
        if self.waiting_for is not None:
            log.info("worker resumed: %s is back", self.waiting_for, extra={"owner": self.owner})
        self.waiting_for = None

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
                stored, outcomes = self._segment(job)
            except UnreadableStudy as exc:
                fail(self.database, job, str(exc), self.policy, permanent=True)
                return
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                problem = environment_problem(exc)
                if problem is not None:
                    self._give_back(job, problem, detail)
                    return
                log.exception("job error", extra={"job": job.id})
                fail(self.database, job, detail, self.policy)
                return
        try:
            complete(self.database, job, stored, self.destinations, outcomes=outcomes)
        except LeaseLost:
            raise
        except Exception as exc:
            problem = environment_problem(exc)
            if problem is None:
                raise
            self._give_back(job, problem, f"{type(exc).__name__}: {exc}")

    def _give_back(self, job: ClaimedJob, problem: str, detail: str) -> None:
        """:func:`release` the job, pausing this worker; while the database itself is unavailable,
        keep trying every ``environment_retry_seconds`` (the lease is kept by the heartbeat when it
        can be; if it runs out meanwhile, :func:`release` raises LeaseLost and the job is another
        worker's)."""
        self._pause(problem, detail)
        while True:
            try:
                release(self.database, job, problem, detail, self.policy)
                return
            except LeaseLost:
                raise
            except Exception as exc:
                if environment_problem(exc) is None:
                    raise
                log.warning("job cannot be given back yet", extra={"job": job.id, "error": f"{type(exc).__name__}"})
                if self._stop.wait(self.policy.environment_retry_seconds):
                    return  # shutting down: the lease runs out and the job is recovered

    def _segment(self, job: ClaimedJob) -> tuple[list[StoredResult], list[Outcome]]:
        """Each acquisition of the study (:func:`split_study`) not processed before with the same content."""
        instances, kinds, processed_before, result_sets, nm_headers = self._study_contents(job)
        by_kind: dict[str, list[Dataset]] = {}
        for dataset, _, kind in instances.values():
            by_kind.setdefault(kind, []).append(dataset)
        # the whole study's evidence decides whether it is a bone scan, not each instance's
        acquisitions, unstated = judge_study_tracer(split_study(by_kind), nm_headers)
        if not acquisitions:
            reason = no_whole_body_reason(kinds)
            log.info("study not processable", extra={"job": job.id, "study_uid": job.study_instance_uid,
                                                     "reason": reason})
            return [], [Outcome("study", "study", NO_CONTENT, AcquisitionState.NOT_PROCESSABLE, reason)]
        study = StudyContext(tracer_unstated=unstated, unvalidated_results=self.models.config.unvalidated_results)
        digests = {uid: sha256 for uid, (_, sha256, _) in instances.items()}
        stored: list[StoredResult] = []
        outcomes: list[Outcome] = []
        for acquisition in acquisitions:
            fingerprint = content_fingerprint(acquisition, digests)
            if fingerprint in processed_before:
                log.info("acquisition unchanged since an earlier job's outcome; not processed again",
                         extra={"job": job.id, "study_uid": job.study_instance_uid})
                continue
            run = process_acquisition(acquisition, self.models, self.options, result_sets + 1, study)
            if run.processed:
                result_sets += 1
                stored.extend(store_results(self.spool, run))
                log.info("acquisition segmented", extra={
                    "job": job.id, "study_uid": job.study_instance_uid, "result_set": result_sets,
                    "kind": acquisition.kind.value, "objects": len(run.objects)})
                outcomes.append(Outcome(acquisition.key, acquisition.label, fingerprint, AcquisitionState.PROCESSED))
            else:
                log.info("acquisition not processable", extra={
                    "job": job.id, "study_uid": job.study_instance_uid, "reason": run.reason})
                outcomes.append(Outcome(acquisition.key, acquisition.label, fingerprint,
                                        AcquisitionState.NOT_PROCESSABLE, run.reason))
        return stored, outcomes

    def _study_contents(self, job: ClaimedJob) -> tuple[dict[str, tuple[Dataset, str, str]], dict[str, int],
                                                        set[str], int, list[Dataset]]:
        """The study's current instances that the node segments (SOP Instance UID → (data set, SHA-256,
        kind)), the count of its current instances per kind, the fingerprints of acquisitions an
        earlier job processed or found not processable (the same content gives the same outcome), how
        many result sets earlier jobs wrote, and the headers of all its NM images (the evidence of
        :func:`dicomnode.dicom.acquisitions.study_tracer_refusal`)."""
        with self.database.session() as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.path, Instance.sha256, Instance.kind, Instance.sop_class_uid)
                .where(Instance.study_id == job.study_id, Instance.superseded.is_(False),
                       Instance.purged_at.is_(None)).order_by(Instance.id)
            ).all()
            purged_at = session.scalar(select(Study.purged_at).where(Study.id == job.study_id))
            earlier = session.execute(
                select(AcquisitionOutcome.fingerprint, AcquisitionOutcome.state,
                       AcquisitionOutcome.created_at > purged_at if purged_at is not None else true())
                .where(AcquisitionOutcome.study_id == job.study_id, AcquisitionOutcome.job_id != job.id)
            ).all()
        kinds: dict[str, int] = {}
        instances: dict[str, tuple[Dataset, str, str]] = {}
        nm_headers: list[Dataset] = []
        for row in rows:
            kinds[row.kind] = kinds.get(row.kind, 0) + 1
            segmented = row.kind in SEGMENTED_KINDS
            if not segmented and row.sop_class_uid != NuclearMedicineImageStorage:
                continue
            try:
                dataset = pydicom.dcmread(self.spool.absolute(row.path), defer_size=DEFER_BYTES,
                                          stop_before_pixels=not segmented)
            except InvalidDicomError as exc:
                raise UnreadableStudy(f"instance {row.path} cannot be read: {exc}") from exc
            if segmented:
                instances[row.sop_instance_uid] = (dataset, row.sha256, row.kind)
            if row.sop_class_uid == NuclearMedicineImageStorage:
                nm_headers.append(dataset)
        processed = sum(state is AcquisitionState.PROCESSED for _, state, _ in earlier)
        # Outcomes from before retention deleted the study's files do not count: it is processed as
        # new (still numbered after them, so its results get new UIDs and series).
        return (instances, kinds, {fingerprint for fingerprint, _, current in earlier if current}, processed,
                nm_headers)


#: The fingerprint of a study's outcome when it holds nothing to segment (the hash of no content).
NO_CONTENT = hashlib.sha256(b"").hexdigest()
