"""``dicomnode status [--json]`` and ``dicomnode retry`` on a database holding every kind of trouble:
a failed job, a job whose worker died, refused and failed exports, a destination in back-off."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydicom.uid import SegmentationStorage, generate_uid
from sqlalchemy import select
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.ops.status import RetryCounts, retry
from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
from dicomnode.pipeline.queue import QueuePolicy, StoredResult, claim, complete, fail
from dicomnode.store.models import Export, ExportState, Job, JobState, ResultKind, StudyState, utcnow
from tests.processing_helpers import add_study, sqlite_database

POLICY = QueuePolicy(lease_seconds=60, max_attempts=3)


@pytest.fixture
def node(tmp_path):
    """A config file and its migrated database, filled with one of each situation."""
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nvar_dir = "{tmp_path / "var"}"\n[assembly]\nquiet_seconds = 10\n')
    database = sqlite_database(tmp_path / "var", name="dicomnode.db")  # where the config puts it
    studies = [add_study(database) for _ in range(4)]
    add_study(database, ("anterior",), last_instance_at=utcnow() - timedelta(minutes=5))  # not assembled
    assemble(database, AssemblyPolicy(quiet_seconds=1e9))
    failed = claim(database, "w", POLICY)
    fail(database, failed, "ViewError: two anterior views", POLICY, permanent=True)
    done = claim(database, "w", POLICY)
    results = [StoredResult(kind=ResultKind.SEG, sop_instance_uid=generate_uid(),
                            sop_class_uid=SegmentationStorage, series_instance_uid=generate_uid(),
                            path="results/x.dcm") for _ in range(3)]
    complete(database, done, results, ["PACS", "ARCHIVE"])
    dying = claim(database, "dead-worker", POLICY, now=utcnow() - timedelta(minutes=2))  # lease expired
    with database.session(write=True) as session:
        exports = session.scalars(select(Export).order_by(Export.id)).all()
        exports[0].state, exports[0].last_status = ExportState.REFUSED, "association rejected (permanent)"
        exports[1].state, exports[1].last_status = ExportState.FAILED, "0xA700"
        for export in exports[2:4]:
            export.attempts, export.last_status = 2, "no association"
            export.next_attempt_at = utcnow() + timedelta(minutes=3)
        exports[4].state = ExportState.DELIVERED
    yield config, database, {"failed": failed, "dying": dying, "studies": studies}
    database.dispose()


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_status_json_counts_and_lists_what_needs_attention(node):
    config, database, jobs = node
    result = run("status", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["studies"] == {"receiving": 1, "ready": 2, "processed": 1, "failed": 1}
    assert report["jobs"] == {"queued": 1, "running": 1, "done": 1, "failed": 1}
    assert report["exports"] == {"pending": 3, "sending": 0, "delivered": 1, "refused": 1, "failed": 1}
    assert report["destinations"]["PACS"]["refused"] + report["destinations"]["ARCHIVE"]["refused"] == 1
    (failed,) = report["failed_jobs"]
    assert failed["job"] == jobs["failed"].id and failed["error"] == "ViewError: two anterior views"
    (stuck,) = report["stuck"]["jobs_with_expired_lease"]
    assert stuck["job"] == jobs["dying"].id and stuck["owner"] == "dead-worker"
    assert len(report["stuck"]["studies_not_assembled"]) == 1
    assert [e["last_status"] for e in report["refused_exports"]] == ["association rejected (permanent)"]
    assert [e["last_status"] for e in report["failed_exports"]] == ["0xA700"]
    assert sum(item["pending"] for item in report["backing_off"]) == 2
    assert report["needs_attention"] is True


def test_status_text_names_each_problem(node):
    config, _, jobs = node
    result = run("status", "--config", str(config))
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"failed job {jobs['failed'].id}" in text and "two anterior views" in text
    assert f"stuck job {jobs['dying'].id}" in text and "dead-worker" in text
    assert "refused export" in text and "association rejected (permanent)" in text
    assert "backing off" in text and "no association" in text
    assert "still receiving" in text


def test_retry_puts_failed_work_back_in_line(node):
    config, database, jobs = node
    result = run("retry", "--config", str(config), "--no-failed")
    assert result.exit_code == 0, result.output
    assert "1 job(s) queued again, 1 export(s) pending again" in result.output
    with database.session() as session:
        job = session.get(Job, jobs["failed"].id)
        assert job.state is JobState.QUEUED and job.attempts == 0
        assert job.study.state is StudyState.READY
        states = sorted(e.state.value for e in session.scalars(select(Export)))
    assert states == ["delivered", "failed", "pending", "pending", "pending", "pending"]
    result = run("retry", "--config", str(config), "--no-jobs", "--waiting", "--destination", "PACS")
    assert result.exit_code == 0, result.output
    with database.session() as session:
        rows = session.scalars(select(Export).where(Export.destination == "PACS")).all()
    assert all(row.state in (ExportState.PENDING, ExportState.DELIVERED) for row in rows)
    assert all(row.next_attempt_at.replace(tzinfo=None) <= utcnow().replace(tzinfo=None)
               for row in rows if row.state is ExportState.PENDING)
    with database.session() as session:  # the other destination's back-off is untouched
        waiting = session.scalars(select(Export).where(Export.destination == "ARCHIVE", Export.attempts == 2)).one()
    assert waiting.next_attempt_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None) + timedelta(minutes=1)


def test_retry_goes_through_the_transitions_and_leaves_leased_work_alone(node):
    _, database, jobs = node
    with database.session(write=True) as session:  # an exporter holds the refused row again
        leased = session.scalars(select(Export).where(Export.state == ExportState.REFUSED)).one()
        leased.state, leased.lease_owner = ExportState.SENDING, "exporter"
    assert retry(database, study_uid="1.2.3.4.5.6.7.8.9").jobs == 0  # no such study: nothing
    counts = retry(database, waiting=True)
    assert counts == RetryCounts(jobs=1, exports=3)  # the failed job; the failed export and two waiting
    with database.session() as session:
        assert session.get(Export, leased.id).state is ExportState.SENDING
        assert session.get(Job, jobs["dying"].id).state is JobState.RUNNING  # its lease is the queue's


def test_status_of_a_database_never_started_is_a_clear_error(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nvar_dir = "{tmp_path / "empty"}"\n')
    result = run("status", "--config", str(config))
    assert result.exit_code == 2
    assert "does not exist" in result.output and "dicomnode serve" in result.output
    assert not (tmp_path / "empty").exists()  # a read-only command creates no state


def test_status_of_an_empty_database_is_a_clear_error(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nvar_dir = "{tmp_path / "var"}"\n')
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dicomnode.db").touch()
    result = run("status", "--config", str(config))
    assert result.exit_code == 2
    assert "is empty" in result.output and "dicomnode serve" in result.output


def test_a_healthy_node_needs_nothing(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nvar_dir = "{tmp_path / "var"}"\n')
    sqlite_database(tmp_path / "var", name="dicomnode.db").dispose()
    result = run("status", "--config", str(config), "--json")
    report = json.loads(result.output)
    assert report["needs_attention"] is False and report["studies"]["receiving"] == 0
    assert "nothing needs attention" in run("status", "--config", str(config)).output


@pytest.mark.parametrize("minutes, attention", [(5, False), (45, True)])
def test_a_destination_backing_off_needs_attention_after_the_threshold(tmp_path, minutes, attention):
    from dicomnode.ops.status import ATTENTION_AFTER_SECONDS, collect, render
    from dicomnode.store.models import ExportAttempt

    database = sqlite_database(tmp_path / "var", name="dicomnode.db")
    add_study(database)
    assemble(database, AssemblyPolicy(quiet_seconds=0))
    job = claim(database, "w", POLICY)
    complete(database, job, [StoredResult(kind=ResultKind.SEG, sop_instance_uid=generate_uid(),
                                          sop_class_uid=SegmentationStorage, series_instance_uid=generate_uid(),
                                          path="results/x.dcm")], ["PACS"])
    first_failure = utcnow() - timedelta(minutes=minutes)
    with database.session(write=True) as session:
        export = session.scalars(select(Export)).one()
        export.attempts, export.last_status = 3, "no association"
        export.next_attempt_at = utcnow() + timedelta(minutes=1)
        session.add(ExportAttempt(export_id=export.id, at=first_failure, status="no association"))
    report = collect(database)
    database.dispose()
    (item,) = report["backing_off"]
    assert item["needs_attention"] is attention and report["needs_attention"] is attention
    assert ATTENTION_AFTER_SECONDS == 30 * 60
    text = render(report)
    assert ("needs attention: is the destination down?" in text) is attention
    assert ("nothing needs attention yet (retrying for under 30 min)" in text) is not attention
