"""The job queue: one row per (study, version) in the node's own database.

Step "queue" of docs/architecture.md, "The journey of a study"; the rows in "Data model".

Life of a job::

    QUEUED ──claim──▶ RUNNING (lease: owner + expiry, extended by heartbeats)
       ▲                 │ complete ─▶ DONE   (results + outbox rows in the same transaction)
       │   retry later   │ fail     ─▶ QUEUED (attempts left; held back by an exponential delay)
       ├─────────────────┤          ─▶ FAILED (attempts used up, or a permanent error; error kept)
       │   wait          │ release  ─▶ QUEUED (the environment failed: no disk space, no database;
       │                 │             not an attempt; held back ``environment_retry_seconds``)
       └─────────────────┤ lease expires (worker killed) ─▶ QUEUED again, not an attempt
                         │   (the same job lost its worker too often, too fast) ─▶ FAILED
    FAILED ──requeue_failed (dicomnode retry)──▶ QUEUED (attempts reset, last error kept)

Claiming is one ``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING`` statement. On PostgreSQL the
sub-select carries ``FOR UPDATE SKIP LOCKED``, so any number of workers on any number of hosts claim
concurrently and each job is handed to one of them; on SQLite it runs in a ``BEGIN IMMEDIATE``
transaction (``Database.session(write=True)``): SQLite has one writer at a time, and taking the write
lock up front serialises claimers. Every transition here is one such write transaction.

What counts against a job (``[queue]`` settings, :class:`QueuePolicy`):

- ``attempts``: a claim counts one; ``max_attempts`` attempts that end in an error (:func:`fail`)
  end the job FAILED with the last error.
- A lost worker is not the job's fault. Before each claim, :func:`recover_lost` puts every RUNNING
  job whose lease ran out back to QUEUED (claimable at once) and gives back the attempt it had
  taken; the loss is counted in ``worker_losses``. Power loss, the OOM killer killing a worker for
  its neighbour's memory, a restart loop: the job is simply run again.
- Poison pill: a job that is itself what kills its worker (a study that makes the process run out
  of memory or crash in native code) would otherwise take every worker down forever. When the same
  job has lost its worker ``max_worker_losses`` times (default 5) within
  ``worker_loss_window_seconds`` (default 1 h, counted from the first loss of the run of losses,
  each loss dated by its lease's expiry), it ends FAILED saying so. Losses further apart start a
  new count.
- The environment failing is not the job's fault either: a worker that meets "no space left on
  device" or an unavailable database calls :func:`release` (QUEUED, the attempt given back,
  ``waiting_for`` set, held back ``environment_retry_seconds``); workers pause while the spool is
  below its free-space floor (:mod:`dicomnode.pipeline.worker`).

A queued job that failed and waits for its retry is held back by ``lease_expires_at`` (with no
``lease_owner``): for a QUEUED row that column reads "not to be claimed before", so the one index
``(state, lease_expires_at)`` serves both kinds of waiting.

This module is the only writer of job states (``dicomnode retry`` included: :func:`requeue_failed`).
Only the lease holder can finish a job: :func:`complete`, :func:`fail` and :func:`heartbeat` update
the row ``WHERE lease_owner = <me> AND state = 'running'`` and raise :class:`LeaseLost` (or return
False) when another worker took the job over. :func:`complete` records the result objects and one
:class:`~dicomnode.store.models.Export` row per configured destination in the same transaction that marks
the job DONE, so a job is never done without its outbox. The result files are written durably before
that transaction; a crash in between leaves orphan files in the results area and no rows, which is
harmless (the job is reclaimed and writes new objects with new UIDs).

Times are computed by the caller's clock in UTC (``now`` parameters exist for tests); hosts that share
a database must keep their clocks in sync (NTP), as for any lease.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import and_, or_, select, update
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy.orm import Session

from dicomnode.dicom.sop import ResultKind
from dicomnode.store.db import DatabaseError
from dicomnode.store.models import (
    AcquisitionOutcome,
    AcquisitionState,
    Export,
    Job,
    JobState,
    ResultObject,
    Study,
    StudyState,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)


class Database(Protocol):
    """What the queue needs of :class:`dicomnode.store.db.Database`."""

    def session(self, *, write: bool = False): ...  # one transaction, committed when the block ends


#: What a job given back by :func:`release` waits for (``job.waiting_for``).
DISK_SPACE = "disk space"
DATABASE = "database"
WAITING_REASONS = (DISK_SPACE, DATABASE)
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def environment_problem(error: BaseException) -> str | None:
    """:data:`DISK_SPACE` or :data:`DATABASE` when ``error`` (or an error it was raised from) is the
    environment failing rather than the job: no space left on the device, or a database that cannot
    be reached or used right now. None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return DISK_SPACE
        if isinstance(current, sqlalchemy_errors.OperationalError) and "disk is full" in str(current.orig):
            return DISK_SPACE  # SQLite: SQLITE_FULL
        if isinstance(current, (sqlalchemy_errors.OperationalError, sqlalchemy_errors.InterfaceError,
                                sqlalchemy_errors.DisconnectionError, sqlalchemy_errors.TimeoutError,
                                DatabaseError)):
            return DATABASE
        if isinstance(current, sqlalchemy_errors.DBAPIError) and current.connection_invalidated:
            return DATABASE
        current = current.__cause__ or current.__context__
    return None


class LeaseLost(RuntimeError):
    """The job (or export) is no longer leased to this owner: another worker reclaimed it."""


def capped_backoff(initial_seconds: float, max_seconds: float, attempts: int) -> timedelta:
    """``initial * 2**(attempts-1)``, capped at ``max_seconds``: the wait after ``attempts`` failures.

    Shared by job retries and the export outbox's back-off.
    """
    seconds = initial_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, max_seconds))


@dataclass(frozen=True)
class QueuePolicy:
    """Lease length, attempt limit and retry delay (config ``[queue]``)."""

    lease_seconds: float = 600.0
    max_attempts: int = 3  # attempts ending in an error; a lost worker is not one
    retry_delay_seconds: float = 10.0  # delay before attempt n+1 is retry_delay * 2**(n-1) ...
    retry_delay_max_seconds: float = 600.0  # ... capped here
    max_worker_losses: int = 5  # poison pill: this many lost workers ...
    worker_loss_window_seconds: float = 3600.0  # ... within this long fail the job
    environment_retry_seconds: float = 15.0  # a job released for want of disk or database waits this long

    def retry_delay(self, attempts: int) -> timedelta:
        """Exponential delay after ``attempts`` failed attempts, capped."""
        return capped_backoff(self.retry_delay_seconds, self.retry_delay_max_seconds, attempts)


@dataclass(frozen=True)
class ClaimedJob:
    """A job leased to ``owner`` (a plain value: it outlives the session that claimed it)."""

    id: int
    study_id: int
    study_instance_uid: str
    study_version: int
    attempts: int
    owner: str
    lease_expires_at: datetime


@dataclass(frozen=True)
class Outcome:
    """What a job did with one acquisition of its study (an :class:`AcquisitionOutcome` row)."""

    key: str
    label: str
    fingerprint: str
    state: AcquisitionState
    reason: str | None = None


@dataclass(frozen=True)
class StoredResult:
    """A result object already written durably under the spool (path relative to the spool root)."""

    kind: ResultKind
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    path: str
    size: int | None = None  # bytes of the file (kept in the index: retention reports and frees it)


def worker_name(role: str = "worker") -> str:
    """A lease owner name unique to this process: ``host:pid:role:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}:{uuid.uuid4().hex[:8]}"


def enqueue(session: Session, study: Study, now: datetime | None = None) -> Job | None:
    """Mark ``study`` READY and queue a job for its current version, in the caller's transaction.

    Returns the new job, or ``None`` when a job for this version already exists (the unique
    constraint ``uq_job_study_version``: one job per version). The caller commits.
    """
    now = now or utcnow()
    study.state = StudyState.READY
    study.ready_at = now
    existing = session.scalar(
        select(Job.id).where(Job.study_id == study.id, Job.study_version == study.version)
    )
    if existing is not None:
        return None
    job = Job(study_id=study.id, study_version=study.version, state=JobState.QUEUED, created_at=now)
    session.add(job)
    session.flush()
    log.info("job queued", extra={"job": job.id, "study_uid": study.study_instance_uid,
                                  "study_version": study.version})
    return job


def claim(database: Database, owner: str, policy: QueuePolicy, now: datetime | None = None) -> ClaimedJob | None:
    """Lease the oldest claimable job to ``owner``; ``None`` when there is nothing to do.

    Claimable: QUEUED and not held back; jobs whose worker was lost are QUEUED again first
    (:func:`recover_lost`).
    """
    now = now or utcnow()
    recover_lost(database, policy, now)
    claimable = and_(Job.state == JobState.QUEUED,
                     or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now))
    pick = (
        select(Job.id).where(claimable).order_by(Job.id).limit(1)
        .with_for_update(skip_locked=True).scalar_subquery()
    )
    lease_expires_at = now + timedelta(seconds=policy.lease_seconds)
    with database.session(write=True) as session:
        row = session.execute(
            update(Job).where(Job.id == pick)
            .values(state=JobState.RUNNING, lease_owner=owner, lease_expires_at=lease_expires_at,
                    attempts=Job.attempts + 1, started_at=now, waiting_for=None)
            .returning(Job.id, Job.study_id, Job.study_version, Job.attempts)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if row is None:
            return None
        study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == row.study_id))
    job = ClaimedJob(id=row.id, study_id=row.study_id, study_instance_uid=study_uid,
                     study_version=row.study_version, attempts=row.attempts, owner=owner,
                     lease_expires_at=lease_expires_at)
    log.info("job claimed", extra={"job": job.id, "study_uid": study_uid, "attempt": job.attempts,
                                   "owner": owner})
    return job


def heartbeat(database: Database, job: ClaimedJob, policy: QueuePolicy, now: datetime | None = None) -> bool:
    """Extend ``job``'s lease; False when the lease was lost (the work must not be completed)."""
    now = now or utcnow()
    with database.session(write=True) as session:
        changed = session.execute(
            update(Job).where(Job.id == job.id, Job.lease_owner == job.owner, Job.state == JobState.RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=policy.lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
    if changed != 1:
        log.warning("job lease lost", extra={"job": job.id, "owner": job.owner})
    return changed == 1


def complete(database: Database, job: ClaimedJob, results: Sequence[StoredResult],
             destinations: Sequence[str], now: datetime | None = None,
             outcomes: Sequence[Outcome] = ()) -> None:
    """Mark ``job`` DONE with its result objects, their outbox rows and what became of each of the
    study's acquisitions (``outcomes``), in one transaction.

    One :class:`Export` row per (result, destination). The study becomes PROCESSED when the job is
    for its current version. Raises :class:`LeaseLost` (and records nothing) when the job is no
    longer leased to ``job.owner``.
    """
    now = now or utcnow()
    with database.session(write=True) as session:
        _take_over(session, job, state=JobState.DONE, finished_at=now, error=None,
                   lease_owner=None, lease_expires_at=None)
        for stored in results:
            result = ResultObject(job_id=job.id, kind=stored.kind, sop_instance_uid=stored.sop_instance_uid,
                                  sop_class_uid=stored.sop_class_uid,
                                  series_instance_uid=stored.series_instance_uid, path=stored.path,
                                  size=stored.size, created_at=now)
            session.add(result)
            session.flush()
            for destination in destinations:
                session.add(Export(result_id=result.id, destination=destination, next_attempt_at=now))
        for outcome in outcomes:
            session.add(AcquisitionOutcome(job_id=job.id, study_id=job.study_id, key=outcome.key[:160],
                                           label=outcome.label[:128], fingerprint=outcome.fingerprint,
                                           state=outcome.state, reason=outcome.reason, created_at=now))
        _settle_study(session, job, StudyState.PROCESSED, now)
    log.info("job done", extra={"job": job.id, "study_uid": job.study_instance_uid,
                                "results": len(results), "destinations": len(destinations)})


def fail(database: Database, job: ClaimedJob, error: str, policy: QueuePolicy, *,
         permanent: bool = False, now: datetime | None = None) -> JobState:
    """Record a failed attempt: back to QUEUED after a delay, or FAILED (error kept) when permanent
    or out of attempts. Returns the new state; raises :class:`LeaseLost` when not the lease holder.
    """
    now = now or utcnow()
    terminal = permanent or job.attempts >= policy.max_attempts
    with database.session(write=True) as session:
        if terminal:
            _take_over(session, job, state=JobState.FAILED, error=error, finished_at=now,
                       lease_owner=None, lease_expires_at=None)
            _settle_study(session, job, StudyState.FAILED, now)
        else:
            _take_over(session, job, state=JobState.QUEUED, error=error, lease_owner=None,
                       lease_expires_at=now + policy.retry_delay(job.attempts))
    state = JobState.FAILED if terminal else JobState.QUEUED
    log.warning("job failed", extra={"job": job.id, "study_uid": job.study_instance_uid,
                                     "attempt": job.attempts, "state": state.value, "error": error})
    return state


def recover_lost(database: Database, policy: QueuePolicy, now: datetime | None = None) -> int:
    """Every RUNNING job whose lease expired (its worker was lost: killed, out of memory, power cut)
    back to QUEUED, claimable now, without using up an attempt; or FAILED when it is a poison pill
    (see the module docstring). Returns how many jobs were recovered or failed.

    One write transaction; on PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``, so two
    workers recovering at once each take different rows.
    """
    now = now or utcnow()
    window = timedelta(seconds=policy.worker_loss_window_seconds)
    with database.session(write=True) as session:
        rows = session.execute(
            select(Job.id, Job.study_id, Job.study_version, Job.lease_owner, Job.lease_expires_at,
                   Job.recent_losses, Job.recent_losses_since)
            .where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
            .order_by(Job.id).with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            lost_at = as_utc(row.lease_expires_at)
            since = as_utc(row.recent_losses_since)
            if since is None or lost_at - since > window:
                recent, since = 1, lost_at
            else:
                recent = row.recent_losses + 1
            values: dict = {"worker_losses": Job.worker_losses + 1, "recent_losses": recent,
                            "recent_losses_since": since, "lease_owner": None, "lease_expires_at": None}
            if recent >= policy.max_worker_losses:
                values.update(state=JobState.FAILED, finished_at=now,
                              error=f"the worker was lost {recent} times within "
                                    f"{(lost_at - since).total_seconds():.0f} s while processing this job "
                                    f"(poison pill: [queue] max_worker_losses = {policy.max_worker_losses} "
                                    f"within worker_loss_window_seconds = {policy.worker_loss_window_seconds:g})")
            else:
                values.update(state=JobState.QUEUED, attempts=Job.attempts - 1,
                              error=f"worker lost (lease of {row.lease_owner} expired "
                                    f"{lost_at.isoformat(timespec='seconds')}); not counted as an attempt")
            session.execute(update(Job).where(Job.id == row.id).values(**values)
                            .execution_options(synchronize_session=False))
            if recent >= policy.max_worker_losses:
                _settle_study(session, row, StudyState.FAILED, now)
                log.error("job failed: it lost its worker %d times", recent,
                          extra={"job": row.id, "owner": row.lease_owner})
            else:
                log.warning("job's worker was lost; queued again", extra={
                    "job": row.id, "owner": row.lease_owner, "recent_losses": recent})
    return len(rows)


def release(database: Database, job: ClaimedJob, waiting_for: str, detail: str, policy: QueuePolicy,
            now: datetime | None = None) -> None:
    """Give ``job`` back because the environment failed (``waiting_for``: "disk space", "database"):
    QUEUED, the attempt not counted, held back ``environment_retry_seconds``, the reason kept in
    ``waiting_for`` and ``error``. Raises :class:`LeaseLost` when not the lease holder."""
    now = now or utcnow()
    with database.session(write=True) as session:
        _take_over(session, job, state=JobState.QUEUED, attempts=Job.attempts - 1, waiting_for=waiting_for,
                   error=f"waiting for {waiting_for}: {detail}", lease_owner=None,
                   lease_expires_at=now + timedelta(seconds=policy.environment_retry_seconds))
    log.warning("job waits for %s", waiting_for, extra={"job": job.id, "study_uid": job.study_instance_uid,
                                                        "error": detail})


def requeue_failed(database: Database, *, study_uid: str | None = None) -> int:
    """``dicomnode retry`` for jobs: every FAILED job (of the study ``study_uid`` only, when given)
    back to QUEUED with its attempts and recent worker losses reset and its last error kept; its study goes back from FAILED to
    READY when the job is for the study's current version. A FAILED job holds no lease, so nothing a
    worker is doing is touched. One transaction; returns how many jobs were queued again."""
    condition = [Job.state == JobState.FAILED, Job.lease_owner.is_(None)]
    if study_uid is not None:
        condition.append(Job.study_id.in_(select(Study.id).where(Study.study_instance_uid == study_uid)))
    with database.session(write=True) as session:
        rows = session.execute(
            update(Job).where(*condition)
            .values(state=JobState.QUEUED, attempts=0, recent_losses=0, recent_losses_since=None,
                    lease_expires_at=None, finished_at=None)
            .returning(Job.id, Job.study_id, Job.study_version)
            .execution_options(synchronize_session=False)
        ).all()
        for row in rows:
            _settle_study(session, row, StudyState.READY, utcnow(), current=StudyState.FAILED)
    for row in rows:
        log.info("job queued again", extra={"job": row.id})
    return len(rows)


def _take_over(session: Session, job: ClaimedJob, **values) -> None:
    """Update ``job`` only if it is still leased to its owner; :class:`LeaseLost` otherwise."""
    changed = session.execute(
        update(Job).where(Job.id == job.id, Job.lease_owner == job.owner, Job.state == JobState.RUNNING)
        .values(**values).execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        raise LeaseLost(f"job {job.id} is no longer leased to {job.owner}")


def _settle_study(session: Session, job, state: StudyState, now: datetime, *,
                  current: StudyState = StudyState.READY) -> None:
    """Move the study to ``state`` if ``job`` was for its current version and it is still ``current``.

    A study whose version was bumped meanwhile (new content, state RECEIVING) is left alone: its
    new version gets its own job.
    """
    values: dict = {"state": state}
    if state is StudyState.PROCESSED:
        values["processed_at"] = now
    session.execute(
        update(Study).where(Study.id == job.study_id, Study.version == job.study_version,
                            Study.state == current)
        .values(**values).execution_options(synchronize_session=False)
    )
