"""The receiver's index transaction (dicomnode.store.ingest) on SQLite and PostgreSQL, without the network.

The network tests (test_scp.py) show duplicates and new versions end to end; these pin down the
statements themselves: the study upsert fills in identity it still lacks and never overwrites it,
a duplicate changes nothing, new NM content re-opens a processed study, a SEG never touches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import NuclearMedicineImageStorage, SegmentationStorage
from sqlalchemy import select, update

from dicomnode.dicom.parse import Refusal
from dicomnode.dicom.validate import ReceivedInstance
from dicomnode.store.db import Database, connect
from dicomnode.store.ingest import Ingested, StorageOutcome
from dicomnode.store.ingest import ingest as ingest_staged
from dicomnode.store.models import Instance, Study, StudyState
from dicomnode.store.spool import Spool

STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.11"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def nm(sop: str, **fields: object) -> ReceivedInstance:
    instance = ReceivedInstance(sop_class_uid=NuclearMedicineImageStorage, sop_instance_uid=sop, study_instance_uid=STUDY,
                                series_instance_uid=SERIES, views=("anterior",))
    return replace(instance, **fields)


def ingest(database: Database, spool: Spool, instance: ReceivedInstance, data: bytes, calling_ae: str,
           now: datetime | None = None) -> Ingested:
    """As the receiver does: stage the bytes, then ingest them."""
    with spool.stage(data) as staged:
        return ingest_staged(database, spool, instance, staged, calling_ae, now=now)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else \
        f"sqlite:///{tmp_path / 'node.db'}"
    database = connect(url)
    database.migrate()
    yield database
    database.dispose()


def study_row(database: Database) -> Study:
    """The one study, its times as aware UTC (SQLite's DateTime reads back naive)."""
    with database.session() as session:
        study = session.scalars(select(Study)).one()
    for name in ("received_at", "last_instance_at", "ready_at"):
        value = getattr(study, name)
        if value is not None and value.tzinfo is None:
            setattr(study, name, value.replace(tzinfo=UTC))
    return study


def test_study_identity_is_filled_in_once_and_never_overwritten(database: Database, spool: Spool) -> None:
    first = ingest(database, spool, nm("1.2.3.1"), b"first", "CAMERA", now=T0)
    assert (study_row(database).patient_id, study_row(database).accession_number) == (None, None)
    second = ingest(database, spool, nm("1.2.3.2", patient_id="P1", accession_number="A1"), b"second", "CAMERA",
                    now=T0 + timedelta(seconds=1))
    ingest(database, spool, nm("1.2.3.3", patient_id="P2", accession_number="A2"), b"third", "CAMERA",
           now=T0 + timedelta(seconds=2))
    study = study_row(database)
    assert (study.patient_id, study.accession_number) == ("P1", "A1")
    assert first.study_id == second.study_id == study.id
    assert [first.outcome, second.outcome] == [StorageOutcome.STORED, StorageOutcome.STORED]
    assert study.last_instance_at == T0 + timedelta(seconds=2) and study.received_at == T0


def test_duplicate_changes_nothing_and_new_bytes_supersede(database: Database, spool: Spool) -> None:
    stored = ingest(database, spool, nm("1.2.3.1"), b"version one", "CAMERA", now=T0)
    again = ingest(database, spool, nm("1.2.3.1"), b"version one", "OTHER", now=T0 + timedelta(minutes=5))
    assert again.outcome is StorageOutcome.DUPLICATE
    assert (again.instance_id, again.path, again.sha256) == (stored.instance_id, stored.path, stored.sha256)
    assert study_row(database).last_instance_at == T0  # a duplicate is not new content
    newer = ingest(database, spool, nm("1.2.3.1"), b"version two", "CAMERA", now=T0 + timedelta(minutes=6))
    assert newer.outcome is StorageOutcome.NEW_VERSION
    with database.session() as session:
        rows = session.scalars(select(Instance).order_by(Instance.id)).all()
    assert [(row.id, row.superseded, row.calling_ae) for row in rows] == [
        (stored.instance_id, True, "CAMERA"), (newer.instance_id, False, "CAMERA")]
    assert rows[1].size == len(b"version two") and spool.absolute(rows[1].path).read_bytes() == b"version two"
    assert list((spool.root / "tmp").iterdir()) == []  # the duplicate's staged copy was dropped


def test_new_content_reopens_a_processed_study(database: Database, spool: Spool) -> None:
    ingest(database, spool, nm("1.2.3.1"), b"anterior", "CAMERA", now=T0)
    with database.session(write=True) as session:
        session.execute(update(Study).values(state=StudyState.PROCESSED, ready_at=T0 + timedelta(seconds=10)))
    late = ingest(database, spool, nm("1.2.3.2", views=("posterior",)), b"posterior", "CAMERA",
                  now=T0 + timedelta(minutes=1))
    study = study_row(database)
    assert late.study_version == study.version == 2
    assert (study.state, study.ready_at, study.last_instance_at) == (StudyState.RECEIVING, None,
                                                                     T0 + timedelta(minutes=1))
    ingest(database, spool, nm("1.2.3.3"), b"still receiving", "CAMERA", now=T0 + timedelta(minutes=2))
    assert study_row(database).version == 2  # no bump while nothing was processed


def test_a_seg_is_stored_without_touching_the_study(database: Database, spool: Spool) -> None:
    ingest(database, spool, nm("1.2.3.1"), b"image", "CAMERA", now=T0)
    with database.session(write=True) as session:
        session.execute(update(Study).values(state=StudyState.PROCESSED))
    seg = ReceivedInstance(sop_class_uid=SegmentationStorage, sop_instance_uid="1.2.3.9", study_instance_uid=STUDY,
                           kind="seg",
                           series_instance_uid="1.2.3.8", referenced_sop_instance_uids=frozenset({"1.2.3.1"}))
    label = ingest(database, spool, seg, b"seg", "VIEWER", now=T0 + timedelta(hours=1))
    assert label.outcome is StorageOutcome.STORED and label.study_version == 1
    study = study_row(database)
    assert (study.state, study.version, study.last_instance_at) == (StudyState.PROCESSED, 1, T0)
    unknown = replace(seg, sop_instance_uid="1.2.3.10", referenced_sop_instance_uids=frozenset({"1.2.3.99"}))
    with pytest.raises(Refusal, match="references no instance"):
        ingest(database, spool, unknown, b"other seg", "VIEWER")
    assert list((spool.root / "tmp").iterdir()) == []  # the refused SEG's staged copy was removed
