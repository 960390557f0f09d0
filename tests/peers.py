"""Real DICOM peers for tests: dcmtk ``storescp`` and Orthanc as the PACS, PostgreSQL databases.

A peer that is not installed skips its test with a message, except in CI, where it fails it
(:func:`require`). Nothing here is a mock: each class starts the real program on a free loopback
port, waits until it answers, and stops it (SIGTERM, then SIGKILL) on exit. A peer can be stopped
and started again on the same port, which is how "PACS down, then up" is tested.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.tools.harness import dcmtk_binary, free_port, wait_for_port


def require(available: bool, what: str, install: str) -> None:
    """Go on only if ``what`` is there. In a test, a missing peer skips the test with a message on a
    developer's machine and fails it in CI, where the environment variable ``CI`` is set to anything
    but ``""``, ``0``, ``false`` or ``no`` (.ci/run sets ``CI=true``) and `make test` has installed
    and started every peer (README.md, "The external parts"); outside pytest (the benchmarks) it
    raises ``RuntimeError``."""
    if available:
        return
    message = f"{what} is not available here ({install})"
    if "PYTEST_CURRENT_TEST" not in os.environ:
        raise RuntimeError(message)
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message}; CI requires it (make test installs and starts it)")
    pytest.skip(message)


def dcmtk(tool: str) -> str:
    """The path of a dcmtk command-line tool (``storescu``, ``storescp``, ``echoscu`` ...), or
    :func:`require`'s skip / failure when dcmtk is not installed.

    pynetdicom installs Python apps with the same names on PATH; tests must use dcmtk's own binaries
    (:func:`dicomnode.tools.harness.dcmtk_binary` checks the version banner).
    """
    binary = dcmtk_binary(tool)
    require(binary is not None, f"dcmtk {tool}", "apt-get install dcmtk")
    return binary


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Peer:
    """A program listening on a fixed port that can be started, stopped and started again."""

    aet: str
    port: int
    process: subprocess.Popen | None = None

    def command(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def ready_port(self) -> int:
        return self.port

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.log = open(self.workdir / "peer.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir)
        wait_for_port(self.ready_port(), process=self.process)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None
        if getattr(self, "log", None) is not None:
            self.log.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StoreSCP(_Peer):
    """dcmtk ``storescp`` writing every received object into ``directory``."""

    def __init__(self, aet: str = "PACS", port: int | None = None, workdir: Path | None = None) -> None:
        self.binary = dcmtk("storescp")
        self.aet = aet
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="storescp-"))
        self.directory = self.workdir / "received"
        self.directory.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        # -uf: file names from SOP Instance UIDs; +xa: accept all transfer syntaxes
        return [self.binary, "--aetitle", self.aet, "--output-directory", str(self.directory),
                "-uf", "+xa", str(self.port)]

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def received_sop_instance_uids(self) -> set[str]:
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.files()}


class Orthanc(_Peer):
    """A real Orthanc server (Debian's package) with its own storage and REST API on loopback."""

    def __init__(self, aet: str = "ORTHANC", port: int | None = None, workdir: Path | None = None) -> None:
        binary = shutil.which("Orthanc") or shutil.which("orthanc")
        require(binary is not None, "Orthanc", "apt-get install orthanc")
        self.binary = binary
        self.aet = aet
        self.port = port or free_port()
        self.http_port = free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicomnode-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": aet,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,  # the node queries and retrieves corrections (dicomnode.learn.pull)
            "DicomAlwaysAllowGet": True,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "Plugins": [],
        }
        self.config_path = self.workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def start(self) -> None:
        super().start()
        wait_for_port(self.http_port, process=self.process)

    def rest(self, path: str) -> Any:
        """GET a path of Orthanc's REST API and decode the JSON answer."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as reply:
            return json.loads(reply.read())

    def sop_instance_uids(self) -> set[str]:
        uids = set()
        for instance in self.rest("/instances?expand"):
            uids.add(instance["MainDicomTags"]["SOPInstanceUID"])
        return uids


def postgres_available() -> bool:
    """Whether the local PostgreSQL server that .ci/run starts answers on its socket."""
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(dbname="postgres", connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def postgres_database():
    """Create a fresh, empty PostgreSQL database; yield its SQLAlchemy URL; drop it afterwards."""
    import psycopg

    name = f"dicomnode_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    host = os.environ.get("PGHOST", "/var/run/postgresql")
    try:
        yield f"postgresql+psycopg:///{name}?host={host}"
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
