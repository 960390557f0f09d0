"""Helpers shared by the processing-side tests (queue, assembly, worker, export, serve, status)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from hashlib import sha256
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.store.db import Database, connect
from dicomnode.store.models import Instance, Study, StudyState, utcnow
from tests.peers import dcmtk, wait_for_port


def sqlite_database(directory: Path, name: str = "node.db") -> Database:
    """A migrated SQLite database ``directory/name``."""
    database = connect(f"sqlite:///{directory / name}")
    database.migrate()
    return database


def postgres_database(url: str) -> Database:
    """A migrated PostgreSQL database at ``url`` (the ``postgres_url`` fixture)."""
    database = connect(url)
    database.migrate()
    return database


def add_study(database: Database, views: tuple[str, ...] = ("anterior", "posterior"), *,
              layout: str = "multiframe", state: StudyState = StudyState.RECEIVING,
              last_instance_at: datetime | None = None, version: int = 1) -> int:
    """Index a study with instances covering ``views`` (no files behind them); return its id.

    ``layout="multiframe"`` gives one instance holding every view, ``"split"`` one per view.
    """
    when = last_instance_at or utcnow()
    with database.session(write=True) as session:
        study = Study(study_instance_uid=generate_uid(), state=state, version=version,
                      received_at=when, last_instance_at=when)
        session.add(study)
        session.flush()
        groups = [views] if layout == "multiframe" else [(view,) for view in views]
        series = generate_uid()
        for group in groups:
            session.add(Instance(study_id=study.id, sop_instance_uid=generate_uid(),
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.20", series_instance_uid=series,
                                 views=",".join(group), path=f"none/{len(group)}.dcm",
                                 sha256="0" * 64, size=1, received_at=when))
        return study.id


def store_study(database: Database, spool, datasets, *, state: StudyState = StudyState.RECEIVING) -> int:
    """Put NM datasets into the spool and the index the way the receiver does; return the study id."""
    from dicomnode.dicom.sop import SEGMENTED_KIND, instance_kind
    from dicomnode.pipeline.processing import encode
    from dicomnode.segmentation.viewrules import stated_views

    with database.session(write=True) as session:
        uid = str(datasets[0].StudyInstanceUID)
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
        if study is None:
            study = Study(study_instance_uid=uid, state=state)
            session.add(study)
            session.flush()
        for ds in datasets:
            data = encode(ds)
            written = spool.write(spool.instance_path(uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                                      sha256(data).hexdigest()), data)
            kind = instance_kind(ds, str(ds.SOPClassUID))[0]
            views = ",".join(sorted({item[0].value for item in stated_views(ds) if item is not None})
                             if kind == SEGMENTED_KIND else [])
            session.add(Instance(study_id=study.id, sop_instance_uid=str(ds.SOPInstanceUID),
                                 sop_class_uid=str(ds.SOPClassUID), series_instance_uid=str(ds.SeriesInstanceUID),
                                 kind=kind, views=views, path=written.path, sha256=written.sha256, size=written.size))
        study.last_instance_at = utcnow()
        return study.id


# -- a real `dicomnode serve` / `dicomnode worker` process --------------------------------------------


def write_node_config(path: Path, *, var_dir: Path, port: int, destinations: list[tuple[str, int, str]],
                      database_url: str | None = None, spool_dir: Path | None = None,
                      quiet_seconds: float = 2.0, lease_seconds: float = 10.0, max_attempts: int = 3,
                      backoff: tuple[float, float] = (1.0, 4.0), dimse_timeout: float = 30.0,
                      weights: str = "threshold", unvalidated_results: bool = False) -> Path:
    """A node.toml for tests: threshold model on the CPU, short quiet period, lease and back-off;
    ``unvalidated_results`` sends the SPECT models' results (their cards record no real-scan validation)."""
    lines = [
        "[node]", f"port = {port}", 'host = "127.0.0.1"', f"dimse_timeout = {dimse_timeout}",
        "[storage]", f'var_dir = "{var_dir}"', "min_free_bytes = 0",
        *([f'spool_dir = "{spool_dir}"'] if spool_dir else []),
        *(["[database]", f'url = "{database_url}"'] if database_url else []),
        "[assembly]", f"quiet_seconds = {quiet_seconds}",
        "[queue]", f"lease_seconds = {lease_seconds}", f"max_attempts = {max_attempts}", "poll_seconds = 0.2",
        "[model]", f'weights = "{weights}"', 'device = "cpu"', f"unvalidated_results = {str(unvalidated_results).lower()}",
        "[export]", f"backoff_initial_seconds = {backoff[0]}", f"backoff_max_seconds = {backoff[1]}",
    ]
    for name, dest_port, aet in destinations:
        lines += ["[[destinations]]", f'name = "{name}"', 'host = "127.0.0.1"', f"port = {dest_port}",
                  f'ae_title = "{aet}"']
    path.write_text("\n".join(lines) + "\n")
    return path


class NodeProcess:
    """``dicomnode serve`` (or ``worker``) as a real subprocess, its output appended to ``log``."""

    def __init__(self, config: Path, log: Path, command: str = "serve", port: int | None = None) -> None:
        self.config, self.log_path, self.command, self.port = config, log, command, port
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-c", "from dicomnode.cli import main; main()",
                                             self.command, "--config", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
        if self.port is not None:
            wait_for_port(self.port, timeout=timeout, process=self.process)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> NodeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def storescu(files, port: int, aet: str = "DICOMNODE", timeout: float = 60.0) -> subprocess.CompletedProcess:
    """dcmtk storescu (the camera) sending ``files`` in one association; verbose output kept."""
    return subprocess.run([dcmtk("storescu"), "-v", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "TCP_NODELAY": "1"})


def status_report(config: Path) -> dict:
    """``dicomnode status --config CONFIG --json``, as a dict (the command must succeed)."""
    from typer.testing import CliRunner

    from dicomnode.cli import app

    result = CliRunner().invoke(app, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def pacs_objects(peer) -> list:
    """Headers of every complete object a storescp peer holds (one being written is skipped)."""
    import pydicom

    headers = []
    for path in peer.files():
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception:  # still being written: the next poll sees it whole
            continue
    return headers


@pytest.fixture(scope="module", name="segmenter")
def threshold_segmenter():
    """The network-free threshold segmenter, loaded once per test module (import it as ``segmenter``)."""
    import torch

    from dicomnode.pipeline.models import load_segmenter

    torch.set_num_threads(1)
    return load_segmenter("threshold", "cpu")


# -- a small filesystem that can be filled ------------------------------------------------------------


def mount_tmpfs(path: Path, megabytes: int) -> bool:
    """Mount a tmpfs of ``megabytes`` at ``path`` (created); False where this machine does not allow
    it (not root, no mount permission in the container). Unmount with :func:`unmount`."""
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def require_tmpfs(path: Path, megabytes: int) -> None:
    """:func:`mount_tmpfs`, or :func:`tests.peers.require`'s skip (a failure in CI, which runs as root)."""
    from tests.peers import require

    require(mount_tmpfs(path, megabytes), "mount -t tmpfs (root)", "run the tests as root, as CI does")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Write a ballast file in ``path`` until at most ``leave_bytes`` remain free (0: until ENOSPC);
    delete it to give the space back."""
    ballast = path / "ballast"
    stats = os.statvfs(path)
    room = stats.f_bavail * stats.f_frsize - leave_bytes
    with ballast.open("wb", buffering=0) as handle:
        chunk = b"\0" * (1 << 20)
        try:
            while room > 0 or leave_bytes == 0:
                written = handle.write(chunk[:room] if leave_bytes else chunk)
                if not written:
                    break
                room -= written
        except OSError:  # ENOSPC: full
            pass
    return ballast
