"""Retention (issue 28): delivered studies' files leave the spool, oldest first, never before delivery;
the index rows stay; a SIGKILLed ``dicomnode purge --apply`` leaves no row counted as present
whose file is gone; a study sent again after its files were deleted is processed as new."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.config import RetentionSection
from dicomnode.dicom.peers import Destination
from dicomnode.dicom.sop import ResultKind
from dicomnode.ops.status import collect, render
from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
from dicomnode.pipeline.export import Exporter, ExportPolicy
from dicomnode.pipeline.models import NodeModels
from dicomnode.pipeline.queue import QueuePolicy
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.worker import Worker
from dicomnode.store.models import (
    AcquisitionOutcome,
    AcquisitionState,
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    LabelKind,
    ResultObject,
    SiteLabel,
    Study,
    StudyState,
    utcnow,
)
from dicomnode.store.retention import purge
from dicomnode.store.spool import Spool, sha256_hex
from tests.nm_factory import nm_study, phantom_counts
from tests.processing_helpers import (
    sqlite_database,
    threshold_segmenter,  # noqa: F401 (the "segmenter" fixture)
)
from tests.receiver_helpers import running_node, storescu, write_files

DAY = RetentionSection(delete_after_hours=24, early_free_bytes=0)


def settled_study(database, spool: Spool, *, settled_hours_ago: float, export_state: ExportState = ExportState.DELIVERED,
                  study_state: StudyState = StudyState.PROCESSED, files: int = 2) -> int:
    """A study whose ``files`` instances and one result are in the spool, its export in ``export_state``
    (delivered ``settled_hours_ago``); return its id. Sizes are those of the files written."""
    when = utcnow() - timedelta(hours=settled_hours_ago)
    study_uid, series_uid = generate_uid(), generate_uid()
    with database.session(write=True) as session:
        study = Study(study_instance_uid=study_uid, state=study_state, processed_at=when, received_at=when,
                      last_instance_at=when)
        session.add(study)
        session.flush()
        for _ in range(files):
            data = os.urandom(4096)
            sop = generate_uid()
            written = spool.write(spool.instance_path(study_uid, series_uid, sop, sha256_hex(data)), data)
            session.add(Instance(study_id=study.id, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
                                 series_instance_uid=series_uid, path=written.path, sha256=written.sha256,
                                 size=written.size, received_at=when))
        job = Job(study_id=study.id, study_version=1, state=JobState.DONE, finished_at=when)
        session.add(job)
        session.flush()
        result_uid, result_series = generate_uid(), generate_uid()
        written = spool.write(spool.result_path(study_uid, result_series, result_uid), os.urandom(2048))
        result = ResultObject(job_id=job.id, kind=ResultKind.SEG, sop_instance_uid=result_uid,
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", series_instance_uid=result_series,
                              path=written.path, size=written.size)
        session.add(result)
        session.flush()
        session.add(Export(result_id=result.id, destination="PACS", state=export_state,
                           delivered_at=when if export_state is ExportState.DELIVERED else None))
        return study.id


def present_rows_without_file(database, spool: Spool) -> list[str]:
    """Rows the index counts as present (``purged_at`` NULL) whose file is missing: must always be empty."""
    with database.session() as session:
        paths = list(session.scalars(select(Instance.path).where(Instance.purged_at.is_(None))))
        paths += session.scalars(select(ResultObject.path).where(ResultObject.purged_at.is_(None)))
    return [path for path in paths if not spool.absolute(path).is_file()]


def files_of(database, spool: Spool, study_id: int) -> list[bool]:
    with database.session() as session:
        paths = list(session.scalars(select(Instance.path).where(Instance.study_id == study_id)))
        paths += session.scalars(select(ResultObject.path).join(Job).where(Job.study_id == study_id))
    return [spool.absolute(path).is_file() for path in paths]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path):
    """A migrated SQLite or PostgreSQL database."""
    from tests.processing_helpers import postgres_database

    migrated = (postgres_database(request.getfixturevalue("postgres_url")) if request.param == "postgresql"
                else sqlite_database(tmp_path))
    yield migrated
    migrated.dispose()


def test_only_delivered_studies_past_the_period_go_oldest_first_and_rows_stay(tmp_path: Path, database) -> None:
    with Spool(tmp_path / "spool") as spool:
        old = settled_study(database, spool, settled_hours_ago=50)
        older = settled_study(database, spool, settled_hours_ago=80)
        recent = settled_study(database, spool, settled_hours_ago=2)
        pending = settled_study(database, spool, settled_hours_ago=90, export_state=ExportState.PENDING)
        refused = settled_study(database, spool, settled_hours_ago=90, export_state=ExportState.REFUSED)
        failed = settled_study(database, spool, settled_hours_ago=90, study_state=StudyState.FAILED)

        dry = purge(database, spool, DAY)  # the default: only says
        assert (dry.studies, dry.bytes) == (2, 2 * (2 * 4096 + 2048))
        assert [c.study_id for c in dry.plan.due] == [older, old]  # oldest first
        assert all(all(files_of(database, spool, s)) for s in (old, older, recent, pending, refused, failed))

        report = collect(database, spool_root=spool.root, retention=DAY)["retention"]
        assert (report["due_studies"], report["later_studies"], report["held_studies"]) == (2, 1, 3)
        assert report["spool_bytes"] == 6 * (2 * 4096 + 2048)
        text = render(collect(database, spool_root=spool.root, retention=DAY))
        assert "frees 2 studies (20.0 KiB) now, 1 (10.0 KiB) from" in text and "3 not delivered yet" in text

        done = purge(database, spool, DAY, dry_run=False)
        assert done.studies == 2
        assert files_of(database, spool, old) == files_of(database, spool, older) == [False] * 3
        for kept in (recent, pending, refused, failed):
            assert all(files_of(database, spool, kept))
        with database.session() as session:
            rows = session.scalars(select(Instance).where(Instance.study_id.in_([old, older]))).all()
            assert len(rows) == 4 and all(r.purged_at is not None and r.size == 4096 for r in rows)
            assert session.get(Study, old).purged_at is not None and not session.get(Study, old).purge_pending
        assert len(list((spool.root / "instances").iterdir())) == 4  # the deleted studies' folders are gone
        assert present_rows_without_file(database, spool) == []
        assert purge(database, spool, DAY, dry_run=False).studies == 0  # nothing twice


def test_short_free_space_deletes_delivered_studies_early_but_never_undelivered_ones(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path)
    with Spool(tmp_path / "spool") as spool:
        recent = settled_study(database, spool, settled_hours_ago=1)
        pending = settled_study(database, spool, settled_hours_ago=1, export_state=ExportState.PENDING)
        short = RetentionSection(delete_after_hours=24, early_free_bytes=1 << 62)  # never enough room
        done = purge(database, spool, short, dry_run=False)
        assert done.plan.early and done.studies == 1
        assert files_of(database, spool, recent) == [False] * 3 and all(files_of(database, spool, pending))


def correction(database, spool: Spool, study_id: int, label: LabelKind | None) -> int:
    """A viewer's SEG stored for the study, examined as ``label`` (None: not examined yet); its instance id."""
    data = os.urandom(1024)
    with database.session(write=True) as session:
        study_uid = session.get(Study, study_id).study_instance_uid
        sop, series = generate_uid(), generate_uid()
        written = spool.write(spool.instance_path(study_uid, series, sop, sha256_hex(data)), data)
        instance = Instance(study_id=study_id, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                            series_instance_uid=series, path=written.path, sha256=written.sha256, size=written.size,
                            received_at=utcnow(), kind="seg")
        session.add(instance)
        session.flush()
        if label is not None:
            session.add(SiteLabel(instance_id=instance.id, study_id=study_id, kind=label, reason="test"))
        return instance.id


def test_labelled_studies_keep_their_files_even_when_space_is_short_unless_the_site_lets_them_go(
        tmp_path: Path, database) -> None:
    short = RetentionSection(delete_after_hours=24, early_free_bytes=1 << 62)  # never enough room: all settled go
    with Spool(tmp_path / "spool") as spool:
        positive, negative, ignored, waiting, plain = (settled_study(database, spool, settled_hours_ago=50)
                                                       for _ in range(5))
        correction(database, spool, positive, LabelKind.POSITIVE)
        correction(database, spool, negative, LabelKind.NEGATIVE)
        correction(database, spool, ignored, LabelKind.IGNORED)  # examined: not a label
        pending = correction(database, spool, waiting, None)  # the corrections pass has not seen it yet

        plan = purge(database, spool, short).plan
        assert {c.study_id for c in plan.labelled} == {positive, negative, waiting}
        text = render(collect(database, spool_root=spool.root, retention=short))
        assert "3 labelled by the site" in text and "kept for learning" in text

        done = purge(database, spool, short, dry_run=False)
        assert done.studies == 2
        assert not any(files_of(database, spool, ignored)) and not any(files_of(database, spool, plain))
        for kept in (positive, negative, waiting):
            assert all(files_of(database, spool, kept))

        with database.session(write=True) as session:  # the pass examined it: not a label
            session.add(SiteLabel(instance_id=pending, study_id=waiting, kind=LabelKind.IGNORED, reason="test"))
        assert purge(database, spool, short, dry_run=False).studies == 1
        assert not any(files_of(database, spool, waiting))

        letting_go = RetentionSection(delete_after_hours=24, early_free_bytes=0, keep_labelled=False)
        assert purge(database, spool, letting_go, dry_run=False).studies == 2
        assert not any(files_of(database, spool, positive)) and not any(files_of(database, spool, negative))
        assert present_rows_without_file(database, spool) == []


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[storage]\nvar_dir = "{tmp_path / "var"}"\nmin_free_bytes = 0\n'
                    "[retention]\ndelete_after_hours = 1\nearly_free_bytes = 0\n")
    return path


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_purge_leaves_no_present_row_without_its_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    database = sqlite_database(tmp_path / "var", "dicomnode.db")
    studies = 150
    with Spool(tmp_path / "var" / "spool") as spool:
        ids = [settled_study(database, spool, settled_hours_ago=2 + i / 100, files=3) for i in range(studies)]
        kept = settled_study(database, spool, settled_hours_ago=5, export_state=ExportState.PENDING)
    command = [sys.executable, "-c", "from dicomnode.cli import main; main()", "purge", "--apply", "--config", str(config)]
    rng = random.Random(28)
    kills, mid_purge = 0, 0

    def purged() -> int:
        with database.session() as session:
            return len(session.scalars(select(Study.id).where(Study.purged_at.is_not(None))).all())

    for _ in range(8):
        # Kill once the purge has marked a few more studies: timed by the purge's own progress, not
        # by the clock, so a fast or a slow machine both see the kill land mid-purge.
        target, process = purged() + rng.randint(1, 12), subprocess.Popen(command, stdout=subprocess.PIPE,
                                                                          stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while process.poll() is None and purged() < target and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        with Spool(tmp_path / "var" / "spool") as spool:
            assert present_rows_without_file(database, spool) == []  # the invariant, after every kill
        with database.session() as session:
            gone = session.scalar(select(Study.id).where(Study.purged_at.is_not(None)).limit(1)) is not None
            left = session.scalar(select(Study.id).where(Study.purged_at.is_(None), Study.id.in_(ids)).limit(1))
        mid_purge += gone and left is not None
    assert kills >= 1 and mid_purge >= 1, "no kill landed in the middle of a purge"
    final = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert final.returncode == 0, final.stdout + final.stderr
    with Spool(tmp_path / "var" / "spool") as spool, database.session() as session:
        assert not any(any(files_of(database, spool, s)) for s in ids)
        assert all(files_of(database, spool, kept))
        assert session.scalar(select(Study.id).where(Study.purge_pending.is_(True)).limit(1)) is None
        assert len(session.scalars(select(Instance.id)).all()) == 3 * studies + 2  # every row kept
        assert present_rows_without_file(database, spool) == []


@pytest.mark.network
def test_a_study_sent_again_after_its_files_were_deleted_is_processed_as_new(tmp_path, segmenter, storescp) -> None:
    files = write_files(nm_study(phantom_counts(rows=256, columns=64, seed=3), layout="multiframe"), tmp_path / "cam")
    with running_node(tmp_path) as node:
        database, spool = node.database, node.spool
        worker = Worker(database, spool, NodeModels(planar=segmenter), ResultOptions(kinds=(ResultKind.SEG,)), ["PACS"], QueuePolicy())
        exporter = Exporter(database, spool, [Destination(name="PACS", host="127.0.0.1", port=storescp.port,
                                                          ae_title=storescp.aet)], "DICOMNODE", ExportPolicy(), timeout=10)

        def process_and_deliver() -> None:
            assemble(database, AssemblyPolicy(quiet_seconds=0))
            assert worker.run_once()
            while exporter.run_once():
                pass

        assert storescu(node.port, files).statuses == [0x0000]
        process_and_deliver()
        now = RetentionSection(delete_after_hours=0, early_free_bytes=0)
        assert purge(database, spool, now, dry_run=False).studies == 1
        (study,) = node.studies()
        assert not any(files_of(database, spool, study.id))

        assert storescu(node.port, files).statuses == [0x0000]  # the same bytes again
        (instance,) = node.instances()
        assert instance.purged_at is None and spool.absolute(instance.path).is_file()
        (study,) = node.studies()
        assert (study.state, study.version) == (StudyState.RECEIVING, 2)
        process_and_deliver()
        with database.session() as session:
            outcomes = session.execute(select(AcquisitionOutcome.state, Job.study_version).join(Job)).all()
            delivered = session.scalars(select(Export.state)).all()
        assert sorted(outcomes, key=lambda o: o[1]) == [(AcquisitionState.PROCESSED, 1), (AcquisitionState.PROCESSED, 2)]
        assert set(delivered) == {ExportState.DELIVERED} and len(delivered) >= 2  # both versions' results
        assert present_rows_without_file(database, spool) == []


def test_the_purge_command_is_a_dry_run_unless_told_and_status_shows_what_goes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicomnode.cli import app

    config = _config(tmp_path)
    database = sqlite_database(tmp_path / "var", "dicomnode.db")
    with Spool(tmp_path / "var" / "spool") as spool:
        due = settled_study(database, spool, settled_hours_ago=3)
        kept = settled_study(database, spool, settled_hours_ago=3, export_state=ExportState.PENDING)
    runner = CliRunner()
    status = runner.invoke(app, ["status", "--config", str(config)])
    assert status.exit_code == 0 and "retention (1 h after delivery) frees 1 studies (10.0 KiB) now" in status.output
    dry = runner.invoke(app, ["purge", "--config", str(config)])
    assert dry.exit_code == 0 and dry.output.startswith("would delete (dry run; --apply deletes): 1 studies")
    with Spool(tmp_path / "var" / "spool") as spool:
        assert all(files_of(database, spool, due))
    done = runner.invoke(app, ["purge", "--apply", "--config", str(config)])
    assert done.exit_code == 0 and done.output.startswith("deleted: 1 studies (10.0 KiB)"), done.output
    assert "1 studies not delivered yet are kept" in done.output
    with Spool(tmp_path / "var" / "spool") as spool:
        assert not any(files_of(database, spool, due)) and all(files_of(database, spool, kept))
