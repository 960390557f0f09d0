"""Shared fixtures: real peers and databases (see tests/peers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import Orthanc, StoreSCP, postgres_available, postgres_database


def _require(condition: bool, what: str) -> None:
    """Skip when a real peer is missing on a developer's machine; fail in CI, where .ci/run installs it."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (.ci/run installs and starts it)")
    pytest.skip(f"{what} is not available here")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A real dcmtk storescp as the PACS, on a free port."""
    with StoreSCP(workdir=tmp_path / "pacs") as peer:
        yield peer


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A real Orthanc as the PACS, on free DICOM and HTTP ports."""
    with Orthanc(workdir=tmp_path / "orthanc") as peer:
        yield peer


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    _require(postgres_available(), "a local PostgreSQL server")
    with postgres_database() as url:
        yield url
