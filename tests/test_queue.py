"""The job queue on a real database: leases, reclaim, attempts, terminal failure, outbox atomicity,
and concurrent claimers on SQLite and PostgreSQL (each job runs exactly once); a lost worker and an
environment that failed do not count as attempts, a poison pill does end the job."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy.exc
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicomnode.pipeline import queue
from dicomnode.store.db import connect
from dicomnode.store.models import (
    Export,
    ExportState,
    Job,
    JobState,
    ResultKind,
    ResultObject,
    Study,
    StudyState,
    utcnow,
)
from tests.processing_helpers import add_study, postgres_database, sqlite_database

POLICY = queue.QueuePolicy(lease_seconds=60, max_attempts=3, retry_delay_seconds=10,
                           retry_delay_max_seconds=25)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request, tmp_path):
    if request.param == "sqlite":
        db = sqlite_database(tmp_path)
    else:
        db = postgres_database(request.getfixturevalue("postgres_url"))
    yield db
    db.dispose()


def queued_study(database, **kwargs) -> int:
    study_id = add_study(database, **kwargs)
    with database.session(write=True) as session:
        assert queue.enqueue(session, session.get(Study, study_id)) is not None
    return study_id


def result(kind: ResultKind = ResultKind.SEG, sop_uid: str | None = None) -> queue.StoredResult:
    return queue.StoredResult(kind=kind, sop_instance_uid=sop_uid or generate_uid(),
                              sop_class_uid="1.2.840.10008.5.1.4.1.66.4",
                              series_instance_uid=generate_uid(), path="results/x.dcm")


def job_row(database, job_id: int) -> Job:
    with database.session() as session:
        return session.get(Job, job_id)


def study_state(database, study_id: int) -> StudyState:
    with database.session() as session:
        return session.get(Study, study_id).state


def test_enqueue_is_once_per_version(database):
    study_id = queued_study(database)
    with database.session(write=True) as session:
        study = session.get(Study, study_id)
        assert study.state is StudyState.READY and study.ready_at is not None
        assert queue.enqueue(session, study) is None  # same version: no second job
        study.version = 2
        assert queue.enqueue(session, study).study_version == 2
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2


def test_claim_leases_one_job_and_counts_the_attempt(database):
    first, second = queued_study(database), queued_study(database)
    a = queue.claim(database, "a", POLICY)
    b = queue.claim(database, "b", POLICY)
    assert (a.study_id, b.study_id) == (first, second)  # oldest first
    assert a.attempts == 1 and a.owner == "a"
    assert queue.claim(database, "c", POLICY) is None  # both leased
    row = job_row(database, a.id)
    assert row.state is JobState.RUNNING and row.lease_owner == "a"
    assert queue.as_utc(row.lease_expires_at) == a.lease_expires_at


def test_expired_lease_is_reclaimed_and_the_old_owner_cannot_finish(database):
    queued_study(database)
    lost = queue.claim(database, "killed-worker", POLICY)
    assert queue.claim(database, "other", POLICY, now=utcnow() + timedelta(seconds=30)) is None
    later = utcnow() + timedelta(seconds=61)
    taken = queue.claim(database, "other", POLICY, now=later)
    assert taken.id == lost.id and taken.attempts == 1  # the lost worker's attempt is not counted
    assert job_row(database, taken.id).worker_losses == 1
    assert not queue.heartbeat(database, lost, POLICY)
    with pytest.raises(queue.LeaseLost):
        queue.complete(database, lost, [result()], ["PACS"])
    with pytest.raises(queue.LeaseLost):
        queue.fail(database, lost, "boom", POLICY)
    assert queue.heartbeat(database, taken, POLICY, now=later)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(ResultObject)) == 0


def test_heartbeat_keeps_the_job_from_being_reclaimed(database):
    queued_study(database)
    job = queue.claim(database, "w", POLICY)
    assert queue.heartbeat(database, job, POLICY, now=utcnow() + timedelta(seconds=50))
    assert queue.claim(database, "x", POLICY, now=utcnow() + timedelta(seconds=70)) is None
    assert queue.claim(database, "x", POLICY, now=utcnow() + timedelta(seconds=111)) is not None


def test_complete_records_results_and_one_export_per_destination(database):
    study_id = queued_study(database)
    job = queue.claim(database, "w", POLICY)
    results = [result(ResultKind.SEG), result(ResultKind.SR)]
    queue.complete(database, job, results, ["PACS", "ARCHIVE"])
    with database.session() as session:
        row = session.get(Job, job.id)
        assert row.state is JobState.DONE and row.lease_owner is None and row.finished_at is not None
        exports = session.scalars(select(Export)).all()
        pairs = {(e.result.sop_instance_uid, e.destination) for e in exports}
        assert pairs == {(r.sop_instance_uid, d) for r in results for d in ("PACS", "ARCHIVE")}
        assert all(e.state is ExportState.PENDING for e in exports)
    assert study_state(database, study_id) is StudyState.PROCESSED


def test_complete_is_all_or_nothing(database):
    """A failure while recording results leaves no partial outbox and the job still leased."""
    queued_study(database)
    queued_study(database)
    first = queue.claim(database, "w", POLICY)
    second = queue.claim(database, "w", POLICY)
    shared = generate_uid()
    queue.complete(database, first, [result(sop_uid=shared)], ["PACS"])
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        queue.complete(database, second, [result(), result(sop_uid=shared)], ["PACS"])
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(ResultObject)) == 1
        assert session.scalar(select(func.count()).select_from(Export)) == 1
    assert job_row(database, second.id).state is JobState.RUNNING


def test_failure_is_retried_with_backoff_then_ends_failed_with_the_error(database):
    study_id = queued_study(database)
    start = utcnow()
    job = queue.claim(database, "w", POLICY, now=start)
    assert queue.fail(database, job, "first", POLICY, now=start) is JobState.QUEUED
    assert queue.claim(database, "w", POLICY, now=start + timedelta(seconds=9)) is None  # 10 s delay
    job = queue.claim(database, "w", POLICY, now=start + timedelta(seconds=11))
    assert job.attempts == 2
    assert queue.fail(database, job, "second", POLICY, now=start + timedelta(seconds=11)) is JobState.QUEUED
    assert queue.claim(database, "w", POLICY, now=start + timedelta(seconds=30)) is None  # 20 s delay
    job = queue.claim(database, "w", POLICY, now=start + timedelta(seconds=32))
    assert job.attempts == 3
    assert queue.fail(database, job, "third: disk on fire", POLICY) is JobState.FAILED
    row = job_row(database, job.id)
    assert row.state is JobState.FAILED and row.error == "third: disk on fire" and row.attempts == 3
    assert study_state(database, study_id) is StudyState.FAILED
    assert queue.claim(database, "w", POLICY, now=utcnow() + timedelta(days=1)) is None


def test_retry_delay_is_exponential_and_capped():
    assert [POLICY.retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [10, 20, 25, 25]


def test_permanent_failure_is_not_retried(database):
    study_id = queued_study(database)
    job = queue.claim(database, "w", POLICY)
    assert queue.fail(database, job, "ViewError: no view", POLICY, permanent=True) is JobState.FAILED
    assert job_row(database, job.id).attempts == 1
    assert study_state(database, study_id) is StudyState.FAILED


def test_a_lost_worker_does_not_use_up_the_failure_budget(database):
    """Three crashes during one job (issue 17) and then two errors: the job is still tried a third
    time, and the crashes are counted apart."""
    study_id = queued_study(database)
    now = utcnow()
    for crash in range(1, 4):
        job = queue.claim(database, f"crashing-{crash}", POLICY, now=now)
        assert job.attempts == 1
        now += timedelta(seconds=61)  # in quick succession, yet fewer than max_worker_losses (5)
    job = queue.claim(database, "w", POLICY, now=now)
    assert job.attempts == 1
    row = job_row(database, job.id)
    assert (row.worker_losses, row.recent_losses) == (3, 3) and "worker lost" in row.error
    assert queue.fail(database, job, "first", POLICY, now=now) is JobState.QUEUED
    now += timedelta(seconds=11)
    job = queue.claim(database, "w", POLICY, now=now)
    assert job.attempts == 2 and queue.fail(database, job, "second", POLICY, now=now) is JobState.QUEUED
    now += timedelta(seconds=21)
    job = queue.claim(database, "w", POLICY, now=now)
    assert job.attempts == 3
    queue.complete(database, job, [result()], ["PACS"], now=now)
    assert study_state(database, study_id) is StudyState.PROCESSED


def test_a_job_that_kills_its_worker_repeatedly_in_a_short_time_ends_failed(database):
    """Poison pill: ``max_worker_losses`` lost workers within ``worker_loss_window_seconds``."""
    policy = queue.QueuePolicy(lease_seconds=60, max_worker_losses=3, worker_loss_window_seconds=600)
    study_id = queued_study(database)
    now = utcnow()
    for crash in range(1, 4):
        job = queue.claim(database, f"doomed-{crash}", policy, now=now)
        assert job is not None and job.attempts == 1
        now += timedelta(seconds=61)  # the lease has run out: the worker is found lost
    assert queue.claim(database, "next", policy, now=now) is None
    row = job_row(database, job.id)
    assert row.state is JobState.FAILED and row.worker_losses == 3
    assert "lost 3 times within 122 s" in row.error and "poison pill" in row.error
    assert study_state(database, study_id) is StudyState.FAILED
    assert queue.requeue_failed(database) == 1  # dicomnode retry: a fresh count
    assert queue.claim(database, "again", policy, now=now) is not None
    assert job_row(database, job.id).recent_losses == 0


def test_losses_further_apart_than_the_window_start_a_new_count(database):
    policy = queue.QueuePolicy(lease_seconds=60, max_worker_losses=2, worker_loss_window_seconds=100)
    queued_study(database)
    now = utcnow()
    for crash in range(1, 6):
        job = queue.claim(database, f"unlucky-{crash}", policy, now=now)
        assert job is not None, f"failed after {crash - 1} losses spread over time"
        now += timedelta(seconds=200)
    row = job_row(database, job.id)
    assert row.state is JobState.RUNNING and row.worker_losses == 4 and row.recent_losses == 1


def test_a_job_given_back_for_the_environment_waits_without_using_an_attempt(database):
    """``release`` (no disk space, no database): QUEUED, held back, attempt given back, reason kept."""
    policy = queue.QueuePolicy(lease_seconds=60, max_attempts=1, environment_retry_seconds=15)
    queued_study(database)
    now = utcnow()
    for _ in range(4):
        job = queue.claim(database, "w", policy, now=now)
        assert job.attempts == 1
        queue.release(database, job, "disk space", "OSError: [Errno 28] No space left on device", policy, now=now)
        row = job_row(database, job.id)
        assert row.state is JobState.QUEUED and row.waiting_for == "disk space" and row.attempts == 0
        assert "No space left" in row.error
        assert queue.claim(database, "w", policy, now=now + timedelta(seconds=14)) is None
        now += timedelta(seconds=16)
    job = queue.claim(database, "w", policy, now=now)
    assert job_row(database, job.id).waiting_for is None
    with pytest.raises(queue.LeaseLost):
        queue.release(database, dataclasses.replace(job, owner="someone else"), "database", "gone", policy)


def test_a_new_version_is_not_settled_by_the_old_job(database):
    study_id = queued_study(database)
    job = queue.claim(database, "w", POLICY)
    with database.session(write=True) as session:  # what ingest does when new content arrives
        study = session.get(Study, study_id)
        study.version, study.state = 2, StudyState.RECEIVING
    queue.complete(database, job, [result()], ["PACS"])
    assert study_state(database, study_id) is StudyState.RECEIVING


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_concurrent_workers_run_each_job_exactly_once(backend, tmp_path, request):
    """Four workers with their own connections race for 40 jobs; every job runs once and ends done."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'node.db'}"
        sqlite_database(tmp_path).dispose()
    else:
        url = request.getfixturevalue("postgres_url")
        postgres_database(url).dispose()
    setup = connect(url)
    for _ in range(40):
        queued_study(setup)
    runs: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        database = connect(url)
        try:
            while (job := queue.claim(database, name, POLICY)) is not None:
                with lock:
                    runs.append((job.id, name))
                queue.complete(database, job, [result()], ["PACS"])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            database.dispose()

    threads = [threading.Thread(target=work, args=(f"worker-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    per_job = Counter(job_id for job_id, _ in runs)
    assert len(per_job) == 40 and set(per_job.values()) == {1}
    with setup.session() as session:
        states = session.scalars(select(Job.state)).all()
        attempts = session.scalars(select(Job.attempts)).all()
    assert states == [JobState.DONE] * 40 and set(attempts) == {1}
    setup.dispose()


def test_what_counts_as_the_environment_failing():
    """ENOSPC / EDQUOT (also as the cause of another error) and SQLite's "database or disk is full"
    are disk space; other operational database errors are the database; anything else is the job's."""
    import errno
    import sqlite3

    def raised_from(cause: BaseException) -> BaseException:
        try:
            raise RuntimeError("writing the SEG failed") from cause
        except RuntimeError as error:
            return error

    assert queue.environment_problem(OSError(errno.ENOSPC, "No space left on device")) == queue.DISK_SPACE
    assert queue.environment_problem(raised_from(OSError(errno.EDQUOT, "Disk quota exceeded"))) == queue.DISK_SPACE
    full = sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
    assert queue.environment_problem(full) == queue.DISK_SPACE
    locked = sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))
    assert queue.environment_problem(locked) == queue.DATABASE
    assert queue.environment_problem(OSError(errno.EACCES, "Permission denied")) is None
    assert queue.environment_problem(ValueError("no anterior view")) is None
    assert queue.environment_problem(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("unique"))) is None
