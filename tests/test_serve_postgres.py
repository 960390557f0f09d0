"""Scale-out on PostgreSQL: ``dicomnode serve`` plus two ``dicomnode worker`` processes share one
database and one spool; studies sent by dcmtk storescu are each processed by exactly one worker
process, once, and all results reach the PACS."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from sqlalchemy import select

from dicomnode.store.db import connect
from dicomnode.store.models import Job, JobState, ResultObject
from dicomnode.synth import write_studies
from tests.peers import free_port
from tests.processing_helpers import NodeProcess, pacs_objects, storescu, wait_until, write_node_config

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.postgres]

STUDIES = 6
CLAIMED = re.compile(r"job claimed job=(\d+) .*owner=(\S+)")


def test_three_worker_processes_run_each_job_exactly_once(tmp_path, storescp, postgres_url):
    manifest = write_studies(tmp_path / "studies", studies=STUDIES, seed=31, layout="mixed", png=False)
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               database_url=postgres_url, spool_dir=tmp_path / "shared-spool",
                               destinations=[("PACS", storescp.port, storescp.aet)], lease_seconds=30)
    node = NodeProcess(config, tmp_path / "serve.log", port=port)
    workers = [NodeProcess(config, tmp_path / f"worker-{n}.log", command="worker") for n in range(2)]
    try:
        node.start()  # migrates the database before the workers connect
        for worker in workers:
            worker.start()
        wait_until(lambda: all("worker started" in w.log() for w in workers), 90, "the extra workers")
        for study in manifest["studies"]:
            files = [tmp_path / "studies" / study["folder"] / f["file"] for f in study["files"]]
            assert storescu(files, port).returncode == 0
        wait_until(lambda: len(pacs_objects(storescp)) >= 5 * STUDIES, 240, "every study's results at the PACS")
        for process in (node, *workers):
            assert process.terminate() == 0
    finally:
        for process in (node, *workers):
            process.kill()
    claims = [match.groups() for process in (node, *workers) for match in CLAIMED.finditer(process.log())]
    per_job = Counter(job for job, _ in claims)
    assert len(per_job) == STUDIES and set(per_job.values()) == {1}, claims
    owners = Counter(owner.split(":")[1] for _, owner in claims)  # by process id
    assert len(owners) >= 2, f"only one process did any work: {owners}"
    database = connect(postgres_url)
    try:
        with database.session() as session:
            jobs = session.scalars(select(Job)).all()
            results = session.scalars(select(ResultObject.job_id)).all()
    finally:
        database.dispose()
    assert [(job.state, job.attempts) for job in jobs] == [(JobState.DONE, 1)] * STUDIES
    assert Counter(results) == {job.id: 5 for job in jobs}  # one set of results per job, no duplicates
    print(f"\njobs per worker process: {dict(owners)}")
