"""Alembic environment for the node's schema (``dicomnode.store.models``).

At run time :meth:`dicomnode.store.db.Database.migrate` hands an open connection in
``config.attributes["connection"]`` (already inside a transaction, so the whole upgrade is one
transaction on SQLite and PostgreSQL, both of which have transactional DDL). From the command line
(``alembic -c dicomnode/store/alembic.ini ...``) the URL comes from ``-x url=...``, else from the node's
configuration (``DICOMNODE_CONFIG`` / ``DICOMNODE_DATABASE__URL``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, pool

from dicomnode.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from dicomnode.config import load_config

    return load_config().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from dicomnode.store.db import connect

    database = connect(_url(), poolclass=pool.NullPool)
    try:
        with database.engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        database.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
