"""The ``dicomnode`` command line: one module per group of commands, registered on one application
(:mod:`dicomnode.cli.app`)."""

from __future__ import annotations

from dicomnode.cli import learn, model, network, node
from dicomnode.cli.app import app

__all__ = ["app", "learn", "main", "model", "network", "node"]


def main() -> None:
    app()
