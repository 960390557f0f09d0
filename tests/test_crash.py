"""Crash test: the node is SIGKILLed at random moments while studies stream in and are processed,
restarted, and in the end every study acknowledged by C-STORE success has its results at the PACS
(duplicates allowed, losses not). The PACS is also down for part of the run, then up again.

The node is ``dicomnode serve`` as a real process; the camera is dcmtk ``storescu`` (one process
per study; a study counts as acknowledged when storescu exits 0 having seen a success response for
every file); the PACS is dcmtk ``storescp``. Kill times are drawn from a seeded generator. A study
that was not acknowledged is sent again in a later round, as a camera would.

A ``dicomnode worker`` process killed again and again during one job: the job is not failed for it
(a lost worker is not an attempt), unless it kills its worker too often too fast (poison pill).

"Has its results" is checked at the PACS itself: for an acknowledged study, the SEGs there must
reference every source instance of the study, and a GSPS, an SR and a Secondary Capture must be
there too.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pydicom
import pytest

from dicomnode.ops.status import collect
from dicomnode.store.db import connect
from dicomnode.synth import write_studies
from tests.peers import StoreSCP, free_port
from tests.processing_helpers import NodeProcess, pacs_objects, storescu, wait_until, write_node_config

pytestmark = [pytest.mark.network, pytest.mark.slow]

SEED = 20240611
STUDIES = 8
ROUNDS = 5  # node lives killed in the middle of things; a final round then runs to quiescence
PACS_DOWN_ROUNDS = {1, 2}  # the PACS is stopped during these rounds and started again after
SEG, GSPS, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"}


class Camera:
    """Sends studies one after another with storescu until told to stop; records acknowledgements."""

    def __init__(self, studies: dict[str, list[Path]], port: int, rng: random.Random) -> None:
        self.studies, self.port, self.rng = studies, port, rng
        self.acknowledged: set[str] = set()
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, order: list[str]) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._send, args=(order,), daemon=True)
        self._thread.start()

    def _send(self, order: list[str]) -> None:
        for uid in order:
            if self._stop.is_set():
                return
            files = self.studies[uid]
            result = storescu(files, self.port)
            self.sent += 1
            successes = result.stdout.count("Received Store Response (Success)") + \
                result.stderr.count("Received Store Response (Success)")
            if result.returncode == 0 and successes == len(files):
                self.acknowledged.add(uid)
            self._stop.wait(self.rng.uniform(0.2, 1.5))  # the next patient comes off the camera

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def finish(self, order: list[str]) -> None:
        """Send ``order`` to the end (the final round)."""
        self.start(order)
        self._thread.join(timeout=300)


def delivered(pacs: StoreSCP, studies: dict[str, list[Path]], uids: set[str]) -> set[str]:
    """The studies among ``uids`` whose complete results are at the PACS (see the module docstring)."""
    grouped: dict[str, list] = {}
    for ds in pacs_objects(pacs):
        grouped.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    complete = set()
    for uid in uids:
        objects = grouped.get(uid, [])
        classes = {str(ds.SOPClassUID) for ds in objects}
        referenced = {str(item.ReferencedSOPInstanceUID) for ds in objects if ds.SOPClassUID == SEG
                      for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        sources = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in studies[uid]}
        if sources <= referenced and {GSPS, SR} <= classes and classes & SECONDARY_CAPTURE:
            complete.add(uid)
    return complete


def snapshot(url: str) -> str:
    """What the node was doing when it was killed (read from its database after the kill)."""
    database = connect(url)
    try:
        report = collect(database)
    finally:
        database.dispose()
    busy = {f"{section} {state}": count for section in ("studies", "jobs", "exports")
            for state, count in report[section].items()
            if count and state in ("receiving", "ready", "running", "queued", "sending", "pending")}
    return ", ".join(f"{key} {count}" for key, count in busy.items()) or "idle"


def test_sigkill_at_random_moments_loses_no_acknowledged_study(tmp_path, capsys):
    rng = random.Random(SEED)
    manifest = write_studies(tmp_path / "studies", studies=STUDIES, seed=SEED % 1000, layout="mixed", png=False)
    studies = {s["study_instance_uid"]: [tmp_path / "studies" / s["folder"] / f["file"] for f in s["files"]]
               for s in manifest["studies"]}
    pacs = StoreSCP(port=free_port(), workdir=tmp_path / "pacs")
    pacs.start()
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", pacs.port, pacs.aet)], quiet_seconds=2,
                               lease_seconds=6, max_attempts=20, backoff=(0.5, 2.0), dimse_timeout=5)
    node = NodeProcess(config, tmp_path / "node.log", port=port)
    camera = Camera(studies, port, random.Random(rng.random()))
    database_url = f"sqlite:///{tmp_path / 'var' / 'dicomnode.db'}"
    moments: list[str] = []
    kills = 0
    try:
        for round_number in range(ROUNDS):
            if round_number in PACS_DOWN_ROUNDS:
                pacs.stop()
            node.start()
            waiting = [uid for uid in studies if uid not in camera.acknowledged]
            rng.shuffle(waiting)
            camera.start(waiting)
            time.sleep(rng.uniform(0.3, 6.0))  # receiving, assembling, segmenting or exporting
            node.kill()
            kills += 1
            camera.stop()
            moments.append(snapshot(database_url))
            if round_number + 1 not in PACS_DOWN_ROUNDS:
                pacs.start()
        node.start()
        camera.finish([uid for uid in studies if uid not in camera.acknowledged])
        acknowledged = set(camera.acknowledged)
        assert acknowledged, "no study was acknowledged at all"
        wait_until(lambda: delivered(pacs, studies, acknowledged) == acknowledged, 240,
                   "the results of every acknowledged study at the PACS")
        assert node.terminate() == 0
        got = delivered(pacs, studies, acknowledged)
    finally:
        camera.stop()
        node.kill()
        pacs.stop()
    lost = acknowledged - got
    with capsys.disabled():
        print(f"\ncrash test: studies {len(studies)}, storescu runs {camera.sent}, SIGKILLs {kills}, "
              f"acknowledged {len(acknowledged)}, delivered {len(got)}, lost {len(lost)}, "
              f"objects at the PACS {len(pacs.files())}")
        for number, moment in enumerate(moments, start=1):
            print(f"  kill {number}: {moment}")
    assert len(acknowledged) == len(studies)  # the final round, with the node alive, acknowledges all
    assert not lost


def _kill_while_running(tmp_path, kills: int, queue_extra: str = "") -> tuple:
    """A ``dicomnode worker`` process SIGKILLed ``kills`` times while it runs the same job (each
    time once the job is RUNNING under its lease), then left to run; returns the job row and the log."""
    from sqlalchemy import select

    from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
    from dicomnode.store.models import Job, JobState
    from dicomnode.store.spool import Spool
    from tests.processing_helpers import sqlite_database, store_study

    var = tmp_path / "var"
    config = write_node_config(tmp_path / "node.toml", var_dir=var, port=free_port(), destinations=[],
                               lease_seconds=2)
    config.write_text(config.read_text().replace("[queue]\n", f"[queue]\n{queue_extra}"))
    database = sqlite_database(var, name="dicomnode.db")
    manifest = write_studies(tmp_path / "studies", studies=1, seed=5, layout="multiframe", png=False)
    study = manifest["studies"][0]
    with Spool(var / "spool") as spool:
        store_study(database, spool, [pydicom.dcmread(tmp_path / "studies" / study["folder"] / f["file"])
                                      for f in study["files"]])
    assemble(database, AssemblyPolicy(quiet_seconds=0))
    worker = NodeProcess(config, tmp_path / "worker.log", command="worker")

    def job() -> Job:
        with database.session() as session:
            return session.scalars(select(Job)).one()

    try:
        for _ in range(kills):
            worker.start()
            deadline = time.monotonic() + 120
            while job().state is not JobState.RUNNING or f":{worker.process.pid}:" not in (job().lease_owner or ""):
                assert job().state is not JobState.DONE, "the job finished before it could be killed"
                assert time.monotonic() < deadline, "the worker never claimed the job"
                time.sleep(0.01)
            worker.kill()
        worker.start()
        wait_until(lambda: job().state in (JobState.DONE, JobState.FAILED), 120, "the job to end")
    finally:
        worker.kill()
        database.dispose()
    return job(), worker.log()


def test_a_worker_killed_three_times_during_one_job_does_not_fail_it(tmp_path):
    """Issue 17: three crashes during one job used to end it FAILED ("lease expired on attempt 3 of
    3"). A dead worker is not the job's fault: it is done at its first attempt, the losses counted."""
    from dicomnode.store.models import JobState

    job, log = _kill_while_running(tmp_path, kills=3)
    assert job.state is JobState.DONE, (job.error, log[-3000:])
    assert (job.attempts, job.worker_losses) == (1, 3)


def test_a_job_that_kills_its_worker_again_and_again_is_stopped(tmp_path):
    """Poison pill: with ``[queue] max_worker_losses = 2`` the second loss within the window ends it."""
    from dicomnode.store.models import JobState

    job, log = _kill_while_running(tmp_path, kills=2, queue_extra="max_worker_losses = 2\n")
    assert job.state is JobState.FAILED and job.worker_losses == 2, log[-3000:]
    assert "poison pill" in job.error and "lost 2 times" in job.error
