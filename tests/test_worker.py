"""The worker on real files and a real database with the network-free threshold segmenter: results
written to the spool and queued for export, one-view studies, permanent vs retried failures, new
series for a new version, and no results recorded by a worker that lost its lease."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np
import pydicom
from pydicom.uid import SegmentationStorage
import pytest
from sqlalchemy import select

from dicomnode.ops.status import collect, render
from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
from dicomnode.pipeline.models import NodeModels, load_segmenter
from dicomnode.pipeline.queue import QueuePolicy, claim
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.worker import Worker
from dicomnode.store.models import (
    AcquisitionOutcome,
    AcquisitionState,
    Export,
    Instance,
    Job,
    JobState,
    ResultKind,
    ResultObject,
    Study,
    StudyState,
    utcnow,
)
from dicomnode.store.spool import Spool
from dicomnode.segmentation.scan import View
from tests.nm_factory import nm_study, phantom_counts
from tests.processing_helpers import sqlite_database, store_study
from tests.processing_helpers import threshold_segmenter  # noqa: F401 (the "segmenter" fixture)

POLICY = QueuePolicy(lease_seconds=60, max_attempts=2, retry_delay_seconds=5)
OPTIONS = ResultOptions(kinds=(ResultKind.SEG,))


@pytest.fixture
def node(tmp_path, segmenter):
    database = sqlite_database(tmp_path)
    with Spool(tmp_path / "spool") as spool:
        worker = Worker(database, spool, NodeModels(planar=segmenter), OPTIONS, ["PACS", "ARCHIVE"], POLICY, owner="test-worker")
        yield database, spool, worker
    database.dispose()


def counts(rows=256, columns=64):
    return phantom_counts(rows=rows, columns=columns, seed=3)


def process(database, worker) -> Job:
    assemble(database, AssemblyPolicy(quiet_seconds=0))
    assert worker.run_once()
    with database.session() as session:
        return session.scalars(select(Job).order_by(Job.id.desc())).first()


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_a_study_is_segmented_and_its_results_queued_for_every_destination(node, layout):
    database, spool, worker = node
    datasets = nm_study(counts(), layout=layout)
    study_id = store_study(database, spool, datasets)
    job = process(database, worker)
    assert job.state is JobState.DONE and job.attempts == 1 and job.error is None
    with database.session() as session:
        assert session.get(Study, study_id).state is StudyState.PROCESSED
        results = session.scalars(select(ResultObject).where(ResultObject.job_id == job.id)).all()
        exports = session.scalars(select(Export)).all()
        assert sorted((e.result_id, e.destination) for e in exports) == sorted(
            (r.id, d) for r in results for d in ("PACS", "ARCHIVE"))
        rows = [(r.kind, r.sop_instance_uid, r.sop_class_uid, r.series_instance_uid, r.path) for r in results]
    assert len(rows) == 2  # one SEG per view
    referenced = set()
    for kind, sop_uid, sop_class, series_uid, path in rows:
        ds = pydicom.dcmread(spool.absolute(path))
        assert kind is ResultKind.SEG and ds.SOPClassUID == sop_class == SegmentationStorage
        assert (ds.SOPInstanceUID, ds.SeriesInstanceUID) == (sop_uid, series_uid)
        assert ds.StudyInstanceUID == datasets[0].StudyInstanceUID
        referenced |= {item.ReferencedSOPInstanceUID
                       for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(d.SOPInstanceUID) for d in datasets}


def test_a_study_with_one_view_is_processed_with_what_arrived(node):
    database, spool, worker = node
    anterior_only = {View.ANTERIOR: counts()[View.ANTERIOR]}
    datasets = nm_study(anterior_only, layout="split")
    store_study(database, spool, datasets)
    job = process(database, worker)
    assert job.state is JobState.DONE
    with database.session() as session:
        (path,) = session.scalars(select(ResultObject.path)).all()
    seg = pydicom.dcmread(spool.absolute(path))
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        datasets[0].SOPInstanceUID


def test_unreadable_views_end_the_acquisition_not_processable_at_once(node):
    database, spool, worker = node
    study = nm_study(counts(), layout="multiframe")
    # Both detectors claim to be the anterior view: views cannot be decided; retrying cannot help.
    items = study[0].DetectorInformationSequence
    items[1].ViewCodeSequence = items[0].ViewCodeSequence
    study_id = store_study(database, spool, study)
    job = process(database, worker)
    assert job.state is JobState.DONE and job.attempts == 1 and job.error is None
    with database.session() as session:
        assert session.get(Study, study_id).state is StudyState.PROCESSED
        assert session.scalars(select(ResultObject)).all() == []
        (outcome,) = session.scalars(select(AcquisitionOutcome)).all()
    assert outcome.state is AcquisitionState.NOT_PROCESSABLE and "two anterior views" in outcome.reason


def test_an_unexpected_error_is_retried_then_fails(node):
    database, spool, worker = node
    store_study(database, spool, nm_study(counts()))
    with database.session() as session:
        path = session.scalars(select(Instance.path)).one()
    spool.absolute(path).unlink()  # the file vanished from under the index
    job = process(database, worker)
    assert job.state is JobState.QUEUED and job.attempts == 1
    assert job.error.startswith("FileNotFoundError")
    later = claim(database, "w2", POLICY, now=utcnow() + timedelta(seconds=6))
    assert later is not None and later.attempts == 2
    worker.process(later)  # the lease owner is "w2" now; attempt 2 of 2 fails terminally
    with database.session() as session:
        job = session.get(Job, job.id)
    assert job.state is JobState.FAILED and job.error.startswith("FileNotFoundError")


def test_a_second_acquisition_gets_results_in_new_series_and_the_first_is_not_redone(node):
    database, spool, worker = node
    datasets = nm_study(counts())
    study_id = store_study(database, spool, datasets)
    first = process(database, worker)
    # A second whole-body scan of the same study (a later phase) arrives after processing.
    later = nm_study(phantom_counts(rows=256, columns=64, seed=4), study_uid=str(datasets[0].StudyInstanceUID))
    with database.session(write=True) as session:  # new content arrived (what ingest does)
        study = session.get(Study, study_id)
        study.version, study.state = 2, StudyState.RECEIVING
    store_study(database, spool, later)
    second = process(database, worker)
    assert (first.study_version, second.study_version) == (1, 2) and second.state is JobState.DONE
    with database.session() as session:
        series = {job_id: set(session.scalars(select(ResultObject.series_instance_uid)
                                              .where(ResultObject.job_id == job_id)).all())
                  for job_id in (first.id, second.id)}
        assert session.get(Study, study_id).state is StudyState.PROCESSED
        outcomes = {job_id: session.scalars(select(AcquisitionOutcome.key)
                                            .where(AcquisitionOutcome.job_id == job_id)).all()
                    for job_id in (first.id, second.id)}
        sources = [session.scalars(select(ResultObject.path).where(ResultObject.job_id == second.id)).first()]
    assert series[first.id] and series[second.id] and not series[first.id] & series[second.id]
    assert len(outcomes[first.id]) == 1 and len(outcomes[second.id]) == 1  # the first is not redone
    assert outcomes[first.id] != outcomes[second.id]
    seg = pydicom.dcmread(spool.absolute(sources[0]))
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        later[0].SOPInstanceUID
    assert int(seg.SeriesNumber) == OPTIONS.series_number_base + 10 + 1  # result set 2


def test_a_worker_that_lost_its_lease_records_nothing(node):
    database, spool, worker = node
    store_study(database, spool, nm_study(counts()))
    assemble(database, AssemblyPolicy(quiet_seconds=0))
    stale = claim(database, worker.owner, POLICY)
    taken = claim(database, "other", POLICY, now=utcnow() + timedelta(seconds=61))
    assert taken.id == stale.id
    worker.process(stale)
    with database.session() as session:
        job = session.get(Job, stale.id)
        assert job.state is JobState.RUNNING and job.lease_owner == "other"
        assert session.scalars(select(ResultObject)).all() == []


def test_the_masks_written_are_the_segmenters(node, segmenter):
    """The SEG frames on disk equal the segmenter's mask for the same study (nothing lost on the way)."""
    database, spool, worker = node
    rng = np.random.default_rng(0)
    views = counts()
    views[View.ANTERIOR][60:66, 20:26] += rng.poisson(400, (6, 6))  # a clear hot spot
    datasets = nm_study(views)
    store_study(database, spool, datasets)
    process(database, worker)
    from dicomnode.segmentation.views import load_scan

    expected = segmenter.segment(load_scan(datasets)).views[View.ANTERIOR].mask
    assert expected.any()
    with database.session() as session:
        paths = session.scalars(select(ResultObject.path)).all()
    masks = [pydicom.dcmread(spool.absolute(p)).pixel_array for p in paths]
    assert any(mask.shape == expected.shape and np.array_equal(mask, expected) for mask in masks)


class SlowSegmenter:
    """The threshold segmenter taking ``seconds`` longer, like a big network on a CPU."""

    def __init__(self, segmenter, seconds: float) -> None:
        self._segmenter, self._seconds = segmenter, seconds
        self.algorithm, self.card = segmenter.algorithm, segmenter.card

    def segment(self, scan):
        time.sleep(self._seconds)
        return self._segmenter.segment(scan)


def test_the_heartbeat_keeps_a_long_job_from_being_taken_over(tmp_path, segmenter, spool):
    database = sqlite_database(tmp_path)
    # a 1.5 s lease: a heartbeat may be late by a second on a loaded machine and still be in time
    policy = QueuePolicy(lease_seconds=1.5, max_attempts=3)
    worker = Worker(database, spool, NodeModels(planar=SlowSegmenter(segmenter, 4.0)), OPTIONS, ["PACS"], policy, owner="slow")
    store_study(database, spool, nm_study(counts()))
    assemble(database, AssemblyPolicy(quiet_seconds=0))
    thieves: list = []
    stop = threading.Event()

    def steal() -> None:  # another worker polling all the time
        while not stop.is_set():
            job = claim(database, "thief", policy)
            if job is not None:
                thieves.append(job)
            time.sleep(0.05)

    job = claim(database, worker.owner, policy)
    thread = threading.Thread(target=steal)
    thread.start()
    try:
        worker.process(job)  # 4 s of work under a 1.5 s lease
    finally:
        stop.set()
        thread.join()
    database.dispose()
    assert thieves == []
    with database.session() as session:
        job = session.scalars(select(Job)).one()
    assert job.state is JobState.DONE and job.attempts == 1


@pytest.mark.without_gpu
def test_a_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        load_segmenter("threshold", device="cuda")


# -- the environment failing is not the job's fault (issue 17) ------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs that the test may fill (root only: skipped elsewhere, failed in CI)."""
    from tests.processing_helpers import require_tmpfs, unmount

    disk = tmp_path / "disk"
    require_tmpfs(disk, 16)
    yield disk
    unmount(disk)


def test_a_full_disk_gives_the_job_back_and_the_worker_resumes_when_space_returns(tmp_path, small_disk, segmenter):
    """Below the floor the worker claims nothing; a real ENOSPC while writing results gives the job
    back (no attempt used, however often); when space returns the job is done at its first attempt."""
    from tests.processing_helpers import fill

    database = sqlite_database(tmp_path)  # on the big disk: only the spool fills up
    policy = QueuePolicy(lease_seconds=60, max_attempts=1, environment_retry_seconds=0.05)
    with Spool(small_disk / "spool", min_free_bytes=1 << 20) as spool:
        worker = Worker(database, spool, NodeModels(planar=segmenter), OPTIONS, ["PACS"], policy, owner="w")
        store_study(database, spool, nm_study(counts()))
        assemble(database, AssemblyPolicy(quiet_seconds=0))
        ballast = fill(small_disk)  # the disk is full after acknowledgement, before processing
        assert not worker.run_once() and worker.waiting_for == "disk space"  # paused below the floor
        spool.min_free_bytes = 0  # no floor: a worker claims and meets ENOSPC itself
        for _ in range(3):  # more often than max_attempts; a fresh worker each time (a paused one waits)
            fresh = Worker(database, spool, NodeModels(planar=segmenter), OPTIONS, ["PACS"], policy, owner="w")
            assert fresh.run_once()
            with database.session() as session:
                job = session.scalars(select(Job)).one()
            assert (job.state, job.attempts, job.waiting_for) == (JobState.QUEUED, 0, "disk space")
            assert "No space left on device" in job.error
            time.sleep(0.1)
            assert not fresh.run_once() and fresh.waiting_for == "disk space"  # hysteresis: no pause-resume flapping
        report = collect(database, spool_root=spool.root, min_free_bytes=1 << 20)  # dicomnode status
        assert report["disk"]["below_floor"] and report["needs_attention"]
        (waiting,) = report["waiting_jobs"]
        assert waiting["waiting_for"] == "disk space" and "waits for disk space" in render(report)
        ballast.unlink()
        spool.min_free_bytes = 1 << 20
        assert worker.run_once() and worker.waiting_for is None
    with database.session() as session:
        job = session.scalars(select(Job)).one()
        assert (job.state, job.attempts, job.waiting_for) == (JobState.DONE, 1, None)
        assert session.scalars(select(Study.state)).one() is StudyState.PROCESSED
    database.dispose()


@pytest.mark.postgres
def test_an_unavailable_database_pauses_the_worker_until_it_answers(postgres_url, tmp_path, segmenter):
    """The database refuses connections (``ALLOW_CONNECTIONS false`` and its sessions ended, as in a
    failover): the worker waits for it instead of dying or failing the job, then does the job."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.processing_helpers import postgres_database

    name = make_url(postgres_url).database
    database = postgres_database(postgres_url)
    with Spool(tmp_path / "spool") as spool:
        worker = Worker(database, spool, NodeModels(planar=segmenter), OPTIONS, ["PACS"], POLICY, owner="w")
        store_study(database, spool, nm_study(counts()))
        assemble(database, AssemblyPolicy(quiet_seconds=0))
        stop = threading.Event()
        with psycopg.connect(dbname="postgres", autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            thread = threading.Thread(target=worker.run, args=(stop, 0.05))
            thread.start()
            try:
                deadline = time.monotonic() + 30
                while worker.waiting_for != "database" and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert worker.waiting_for == "database" and thread.is_alive()
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                deadline = time.monotonic() + 30
                while worker.waiting_for is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
                while time.monotonic() < deadline:
                    with database.session() as session:
                        if session.scalars(select(Job.state)).one() is JobState.DONE:
                            break
                    time.sleep(0.1)
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                stop.set()
                thread.join(30)
    with database.session() as session:
        job = session.scalars(select(Job)).one()
    assert (job.state, job.attempts) == (JobState.DONE, 1)
    database.dispose()


@pytest.mark.postgres
def test_a_database_lost_during_a_job_gets_the_job_back_once_it_answers(postgres_url, tmp_path, segmenter):
    """The database goes away while the study is being segmented: the results cannot be recorded,
    the worker keeps trying to give the job back until the database answers, and the job, never
    failed and not counted as an attempt, is done on its next claim."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.processing_helpers import postgres_database

    name = make_url(postgres_url).database
    database = postgres_database(postgres_url)
    policy = QueuePolicy(lease_seconds=60, max_attempts=1, environment_retry_seconds=0.2)

    def connections(allowed: bool) -> None:
        with psycopg.connect(dbname="postgres", autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    class LosingTheDatabase(SlowSegmenter):
        def segment(self, scan):
            connections(False)  # gone while the network runs; back 2 s later
            threading.Timer(2.0, connections, (True,)).start()
            return super().segment(scan)

    try:
        with Spool(tmp_path / "spool") as spool:
            worker = Worker(database, spool, NodeModels(planar=LosingTheDatabase(segmenter, 0.2)), OPTIONS, ["PACS"], policy, owner="w")
            store_study(database, spool, nm_study(counts()))
            assemble(database, AssemblyPolicy(quiet_seconds=0))
            job = claim(database, "w", policy)
            started = time.monotonic()
            worker.process(job)  # returns once the job is given back
            assert time.monotonic() - started >= 1.5 and worker.waiting_for == "database"
            with database.session() as session:
                row = session.get(Job, job.id)
                assert (row.state, row.attempts, row.waiting_for) == (JobState.QUEUED, 0, "database")
            time.sleep(0.3)
            worker.models = NodeModels(planar=segmenter)
            assert worker.run_once() and worker.waiting_for is None
        with database.session() as session:
            row = session.get(Job, job.id)
        assert (row.state, row.attempts, row.waiting_for) == (JobState.DONE, 1, None)
    finally:
        connections(True)
        database.dispose()
