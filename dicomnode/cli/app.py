"""The ``dicomnode`` command's application and what its commands share: the node configuration and
database, each failure an exit status 2 with the reason (docs/architecture.md, "Operations").

Each command is a thin wrapper: it parses options and calls the module that does the work, imported
inside the command so that ``dicomnode status`` does not pay for importing torch.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    name="dicomnode",
    help="A DICOM-native AI node for whole-body bone scintigraphy.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts name TOML sections like "[model] weights": print them as written
)


@app.callback()
def _root() -> None:
    """A DICOM-native AI node for whole-body bone scintigraphy."""


CONFIG = typer.Option(None, "--config", help="Node configuration (default $DICOMNODE_CONFIG).")


def node_config(config: Path | None):
    """Load the node configuration or exit 2 with the reasons (docs/architecture.md, "Operations")."""
    from dicomnode.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def open_database(node):
    """The node's database, which must have been initialised by ``serve`` (exit 2 otherwise)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.store.db import DatabaseError, connect

    try:
        database = connect(node.database_url, create=False)
        revision = database.current_revision()
    except (DatabaseError, SQLAlchemyError) as exc:
        typer.echo(f"error: database {node.database_url}: {exc}", err=True)
        raise typer.Exit(2) from None
    if revision is None:
        typer.echo(f"error: database {database.url} is empty (start the node with `dicomnode serve` first)", err=True)
        raise typer.Exit(2)
    return database
