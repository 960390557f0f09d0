"""The node's database connection: engine, sessions, and Alembic migrations applied at start.

The database of docs/architecture.md, "Data model".

API (stable; other modules depend on it)::

    database = connect(config.database_url)      # Database; creates the SQLite file's folder if needed
    database.migrate()                            # alembic upgrade head from the packaged migrations
    with database.session() as session:          # one transaction: commit on success, rollback on error
        ...
    with database.session(write=True) as session: # SQLite: BEGIN IMMEDIATE (takes the write lock first)
        ...
    with database.transaction(write=True) as connection:  # the same transaction, Core only (no ORM)
        ...
    database.dialect                              # "sqlite" or "postgresql"
    database.dispose()

Queue code chooses its claiming strategy from :attr:`Database.dialect`: ``SELECT … FOR UPDATE SKIP
LOCKED`` on PostgreSQL; on SQLite a ``session(write=True)`` transaction, because SQLite has one writer
at a time and ``BEGIN IMMEDIATE`` makes a claim atomic without the deferred-lock upgrade failure
("database is locked") that a plain ``BEGIN`` followed by a write can hit.

:meth:`Database.transaction` is the same transaction on a Core ``Connection``: for the receiver's
hot path (:mod:`dicomnode.store.ingest`), where an ORM session's unit of work, identity map and flush
would cost more CPU than the few statements it runs.

SQLite settings (every connection): ``journal_mode=WAL`` (readers do not block the writer),
``synchronous=FULL`` (a committed transaction survives power loss: the receiver answers 0x0000 only
after the index row is committed, so the commit must be durable), ``busy_timeout`` (writers wait
for each other instead of failing), ``foreign_keys=ON``. pysqlite's own implicit transaction handling
is switched off and SQLAlchemy emits ``BEGIN`` itself (SQLAlchemy's documented recipe, "Serializable
isolation / Savepoints / Transactional DDL"), so a transaction really starts at ``session()`` and
Alembic's DDL is transactional.

PostgreSQL uses psycopg 3 (``postgresql+psycopg://``); :meth:`Database.migrate` holds an advisory
lock so that several hosts starting at once do not race each other's migrations.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# pg_advisory_lock key held while migrating ("dicomnode" in ASCII, truncated to a bigint).
_PG_MIGRATION_LOCK = 0x6469636F6D6E6F64

Dialect = Literal["sqlite", "postgresql"]
_BEGIN_OPTION = "dicomnode_sqlite_begin"


class DatabaseError(RuntimeError):
    """The database cannot be used (bad URL, unreachable server, migration failure)."""


class Database:
    """An engine, its session factory, and the migrations that shape its schema."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect: Dialect = _dialect(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        if self.dialect == "sqlite":
            self._write_engine = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
            self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)
        else:
            self._write_engine = engine
            self._write_sessions = self._sessions

    @property
    def url(self) -> str:
        """The URL with any password hidden (safe to log)."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises.

        ``write=True`` on SQLite starts with ``BEGIN IMMEDIATE`` (the write lock up front); on
        PostgreSQL it is an ordinary transaction.
        """
        factory = self._write_sessions if write else self._sessions
        with factory() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction on a Core connection: committed when the block ends, rolled back if it raises.

        ``write`` as for :meth:`session` (``BEGIN IMMEDIATE`` on SQLite).
        """
        engine = self._write_engine if write else self.engine
        with engine.begin() as connection:
            yield connection

    def migrate(self) -> str:
        """Apply the packaged Alembic migrations up to head; return the revision now current."""
        from alembic import command

        with self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}).connect() as connection:
            if self.dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                connection.commit()
            try:
                with connection.begin():
                    command.upgrade(alembic_config(connection), "head")
            finally:
                if self.dialect == "postgresql":
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK})
                    connection.commit()
        revision = self.current_revision()
        log.info("database at revision %s (%s)", revision, self.url)
        return revision or ""

    def current_revision(self) -> str | None:
        """The Alembic revision stamped in the database (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        """The newest revision shipped with this code."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert head is not None, "the packaged migrations have no head"
        return head

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    """An Alembic ``Config`` for the packaged migrations, without an ``alembic.ini`` file.

    ``connection`` (preferred) is handed to ``migrations/env.py`` through ``Config.attributes``;
    ``url`` is for offline SQL generation.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _dialect(engine: Engine) -> Dialect:
    name = engine.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database dialect {name!r}: use SQLite or PostgreSQL")
    return name  # type: ignore[return-value]


def _use_wal(cursor: Any) -> None:
    """Put the database file in WAL mode (a property of the file, kept once set).

    Switching needs the file to itself, and SQLite answers "database is locked" at once, without
    its busy handler, while another connection is writing (several processes starting together on a
    new file, one of them migrating it). A file already in WAL mode needs no switch; otherwise the
    switch is retried for up to the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION)
        connection.exec_driver_sql(f"BEGIN {mode}" if mode else "BEGIN")


def connect(url: str, *, create: bool = True, **engine_options: Any) -> Database:
    """Open the database at ``url`` (``sqlite:///PATH`` or ``postgresql+psycopg://…``).

    The schema is not touched; call :meth:`Database.migrate` at start. With ``create`` false (the
    read-only commands: ``status``, ``retry``) a SQLite file that does not exist is an error, not a
    new empty database in a new folder. Raises :class:`DatabaseError` with a clear message for an
    unusable URL.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends
        raise DatabaseError(f"not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise DatabaseError("an in-memory SQLite database cannot be shared by the node's processes; give a file path")
        if not create and not Path(database).is_file():
            raise DatabaseError(f"{database} does not exist (start the node with `dicomnode serve` first)")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **engine_options)
        _configure_sqlite(engine)
    elif backend == "postgresql":
        if parsed.get_driver_name() not in ("psycopg", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_pre_ping=True, **engine_options)
    else:
        raise DatabaseError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql+psycopg://…")
    return Database(engine)
