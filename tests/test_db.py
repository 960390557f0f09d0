"""Database: migrations give exactly the models' schema on SQLite and PostgreSQL; SQLite durability settings."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from dicomnode.store.db import Database, DatabaseError, connect
from dicomnode.store.models import Base, Instance, Study

REPO = Path(__file__).resolve().parents[1]


def _schema_differences(database: Database) -> list:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def _check_migrated(database: Database) -> None:
    assert database.current_revision() is None  # really empty before
    assert database.migrate() == Database.head_revision()
    assert _schema_differences(database) == []
    assert set(inspect(database.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert database.migrate() == Database.head_revision()  # a second start changes nothing


def test_sqlite_migrates_to_the_models_schema(tmp_path: Path) -> None:
    database = connect(f"sqlite:///{tmp_path / 'var' / 'node.db'}")  # the folder is created
    try:
        _check_migrated(database)
    finally:
        database.dispose()


@pytest.mark.postgres
def test_postgresql_migrates_to_the_models_schema(postgres_url: str) -> None:
    database = connect(postgres_url)
    try:
        assert database.dialect == "postgresql"
        _check_migrated(database)
    finally:
        database.dispose()


def test_alembic_command_line_uses_the_packaged_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "dicomnode" / "store" / "alembic.ini"), "-x", f"url={url}",
         "upgrade", "head"], capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    database = connect(url)
    try:
        assert database.current_revision() == Database.head_revision()
        assert _schema_differences(database) == []
    finally:
        database.dispose()


def test_sqlite_pragmas_on_every_connection(tmp_path: Path) -> None:
    database = connect(f"sqlite:///{tmp_path / 'node.db'}")
    try:
        for _ in range(2):
            with database.engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        database.dispose()


def test_session_commits_or_rolls_back(tmp_path: Path) -> None:
    database = connect(f"sqlite:///{tmp_path / 'node.db'}")
    database.migrate()
    try:
        with database.session() as session:
            session.add(Study(study_instance_uid="1.2.3"))
        with pytest.raises(RuntimeError), database.session() as session:
            session.add(Study(study_instance_uid="1.2.4"))
            session.flush()
            raise RuntimeError("abort")
        with database.session() as session:
            assert session.scalars(select(Study.study_instance_uid)).all() == ["1.2.3"]
        with pytest.raises(IntegrityError), database.session() as session:  # foreign keys are enforced
            session.add(Instance(study_id=999, sop_instance_uid="1", sop_class_uid="1", series_instance_uid="1",
                                 path="x", sha256="0" * 64, size=1))
    finally:
        database.dispose()


def test_sqlite_write_session_takes_the_write_lock_first(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    database = connect(f"sqlite:///{path}")
    database.migrate()
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    try:
        with database.session() as session:  # a reader holds no write lock
            session.scalars(select(Study)).all()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        with database.session(write=True) as session:
            session.scalars(select(Study)).all()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
        database.dispose()


def test_core_transaction_commits_rolls_back_and_takes_the_write_lock_first(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    database = connect(f"sqlite:///{path}")
    database.migrate()
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    study = Study.__table__
    try:
        with database.transaction() as connection:  # a reader holds no write lock
            connection.execute(select(study.c.id)).all()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        with database.transaction(write=True) as connection:
            connection.execute(study.insert().values(study_instance_uid="1.2.3"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        with pytest.raises(RuntimeError), database.transaction(write=True) as connection:
            connection.execute(study.insert().values(study_instance_uid="1.2.4"))
            raise RuntimeError("abort")
        assert [row[0] for row in other.execute("SELECT study_instance_uid FROM study")] == ["1.2.3"]
    finally:
        other.close()
        database.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'node.db'}"


def test_concurrent_starts_migrate_once(any_url: str) -> None:
    url = any_url
    databases = [connect(url) for _ in range(3)]
    errors: list[BaseException] = []

    def start(database: Database) -> None:
        try:
            database.migrate()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,)) for d in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert _schema_differences(databases[0]) == []
    finally:
        for database in databases:
            database.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(DatabaseError, match=message):
        connect(url)


def test_a_database_of_the_first_schema_upgrades_with_its_jobs(tmp_path: Path) -> None:
    """0001 → head keeps existing jobs: no worker losses yet, waiting for nothing (0003)."""
    from alembic import command
    from sqlalchemy import text

    from dicomnode.store.db import alembic_config
    from dicomnode.store.models import Job

    database = connect(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        with database.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
            connection.execute(text("INSERT INTO study (id, study_instance_uid, state, version, received_at, "
                                    "last_instance_at) VALUES (1, '1.2.3', 'ready', 1, '2026-11-01', '2026-11-01')"))
            connection.execute(text("INSERT INTO job (study_id, study_version, state, attempts, created_at) "
                                    "VALUES (1, 1, 'queued', 2, '2026-11-01')"))
        assert database.migrate() == Database.head_revision()
        with database.session() as session:
            job = session.scalars(select(Job)).one()
        assert (job.attempts, job.worker_losses, job.recent_losses, job.waiting_for) == (2, 0, 0, None)
    finally:
        database.dispose()
