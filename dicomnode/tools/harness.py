"""A node and a PACS on one machine: what ``dicomnode demo``, the tests and the benchmarks share.

- the destination PACS, on a free loopback port: dcmtk ``storescp`` (:class:`DcmtkPacs`; Debian's
  binary: pynetdicom installs a Python script of the same name, so :func:`dcmtk_binary` checks the
  version banner) or a small pynetdicom Storage SCP (:class:`PynetdicomPacs`); :func:`start_pacs`
  chooses;
- :func:`delivered_results`: whether every result object of a study's latest job has reached its
  destination, read from the node's database;
- :func:`describe_model`: the model that ``[model] weights`` names, checked before anything starts.

Outside the runtime path (docs/architecture.md, "Layout"): no part of the node imports it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomnode.dicom.sop import ResultKind
from dicomnode.store.db import Database
from dicomnode.store.models import AcquisitionOutcome, AcquisitionState, ExportState, JobState, Study

PACS_AE = "PACS"


@dataclass(frozen=True)
class Received:
    """One object the PACS holds."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    arrived: float  # time.time() when it was stored


class Pacs(Protocol):
    aet: str
    port: int
    description: str

    def received(self) -> dict[str, Received]:
        """Every complete object received so far, by SOP Instance UID."""

    def stop(self) -> None: ...


class HarnessError(RuntimeError):
    """A node-and-PACS run cannot happen here (model missing, no port, the PACS does not start)."""


def dcmtk_binary(tool: str) -> str | None:
    """The path of dcmtk's ``tool`` (Debian's ``/usr/bin`` first), or None when dcmtk is not installed.

    pynetdicom puts Python scripts called ``storescp`` / ``storescu`` on PATH; only a program whose
    ``--version`` banner names dcmtk is taken.
    """
    for candidate in (f"/usr/bin/{tool}", shutil.which(tool)):
        if candidate and os.access(candidate, os.X_OK):
            try:
                banner = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "dcmtk" in banner.lower():
                return candidate
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``; :class:`HarnessError`
    if ``process`` exits first or nothing listens after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise HarnessError(f"the peer exited with status {process.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise HarnessError(f"nothing listens on port {port} after {timeout:.0f} s")


class DcmtkPacs:
    """dcmtk ``storescp`` writing each object under ``directory`` (file names chosen by dcmtk)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.aet, self.port, self.directory = PACS_AE, free_port(), directory
        directory.mkdir(parents=True, exist_ok=True)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
        self.description = f"dcmtk storescp {version[2] if len(version) > 2 else ''}".strip()
        self._headers: dict[Path, Dataset] = {}
        self._log = (directory.parent / "storescp.log").open("ab")
        # -uf: file names from SOP Instance UIDs; +xa: accept every transfer syntax. TCP_NODELAY:
        # without it each C-STORE response waits for a delayed ACK (~40 ms on loopback).
        self.process = subprocess.Popen([binary, "--aetitle", self.aet, "--output-directory", str(directory),
                                         "-uf", "+xa", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "TCP_NODELAY": "1"})
        wait_for_port(self.port, self.process)

    def received(self) -> dict[str, Received]:
        found = {}
        for path in sorted(p for p in self.directory.iterdir() if p.is_file()):
            header = self._headers.get(path)
            if header is None:
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True)
                except Exception:  # still being written: the next look sees it whole
                    continue
                self._headers[path] = header
            uid = str(header.SOPInstanceUID)
            found[uid] = Received(path, uid, str(header.SOPClassUID), str(header.StudyInstanceUID),
                                  path.stat().st_mtime)
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class PynetdicomPacs:
    """A pynetdicom Storage SCP for the result classes; files named by arrival order, never by UID."""

    def __init__(self, directory: Path, description: str = "pynetdicom Storage SCP") -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import (
            Comprehensive3DSRStorage,
            ComprehensiveSRStorage,
            GrayscaleSoftcopyPresentationStateStorage,
            MultiFrameTrueColorSecondaryCaptureImageStorage,
            SecondaryCaptureImageStorage,
            SegmentationStorage,
        )

        self.aet, self.port, self.directory = PACS_AE, free_port(), directory
        self.description = description
        directory.mkdir(parents=True, exist_ok=True)
        self._received: dict[str, Received] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title=self.aet)
        for sop_class in (SegmentationStorage, GrayscaleSoftcopyPresentationStateStorage, ComprehensiveSRStorage,
                          Comprehensive3DSRStorage, SecondaryCaptureImageStorage,
                          MultiFrameTrueColorSecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        ds = event.dataset
        with self._lock:
            path = self.directory / f"{len(self._received) + 1:06d}.dcm"
            path.write_bytes(event.encoded_dataset())
            uid = str(ds.SOPInstanceUID)
            self._received[uid] = Received(path, uid, str(ds.SOPClassUID), str(ds.StudyInstanceUID), time.time())
        return 0x0000

    def received(self) -> dict[str, Received]:
        with self._lock:
            return dict(self._received)

    def stop(self) -> None:
        self._server.shutdown()


def start_pacs(directory: Path, kind: str = "auto") -> Pacs:
    """``kind``: ``auto`` (dcmtk when installed), ``dcmtk`` or ``pynetdicom``."""
    if kind not in ("auto", "dcmtk", "pynetdicom"):
        raise HarnessError(f"unknown PACS kind {kind!r}: use auto, dcmtk or pynetdicom")
    binary = dcmtk_binary("storescp") if kind != "pynetdicom" else None
    if binary is not None:
        return DcmtkPacs(binary, directory)
    if kind == "dcmtk":
        raise HarnessError("dcmtk storescp is not installed (apt-get install dcmtk), or use --pacs pynetdicom")
    if kind == "auto":
        return PynetdicomPacs(directory, "pynetdicom Storage SCP (dcmtk storescp is not installed)")
    return PynetdicomPacs(directory)


# -- the node's side -------------------------------------------------------------------------------


def delivered_results(database: Database, study_uid: str) -> tuple[bool, str | None, dict[str, ResultKind]]:
    """(finished, error, the delivered result objects by SOP Instance UID) of the study.

    Finished when the job of the study's latest version is done and every result object of its done
    jobs is delivered (a study whose new content waits for its quiet window, with no job for its
    current version yet, is not finished) (a later job handles only what changed: its acquisitions' results may come
    from an earlier job); an error when the latest job failed, an export was refused or failed, or
    no job wrote any result (then the "not processable" reasons).
    """
    with database.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one_or_none()
        if study is None or not study.jobs:
            return False, None, {}
        job = max(study.jobs, key=lambda j: j.study_version)
        if job.study_version < study.version:  # re-opened: the current version's job is still to come
            return False, None, {}
        if job.state is JobState.FAILED:
            return True, f"processing failed: {job.error}", {}
        if job.state is not JobState.DONE:
            return False, None, {}
        results = [result for done in study.jobs if done.state is JobState.DONE for result in done.results]
        if not results:
            reasons = session.scalars(select(AcquisitionOutcome.reason).where(
                AcquisitionOutcome.study_id == study.id,
                AcquisitionOutcome.state == AcquisitionState.NOT_PROCESSABLE)).all()
            return True, "not processable: " + ("; ".join(r or "" for r in reasons) or "no result objects"), {}
        exports = [(result, export) for result in results for export in result.exports]
        refused = [e for _, e in exports if e.state in (ExportState.REFUSED, ExportState.FAILED)]
        if refused:
            return True, f"export {refused[0].state.value}: {refused[0].last_status} {refused[0].last_error}", {}
        done = bool(exports) and all(e.state is ExportState.DELIVERED for _, e in exports)
        return done, None, {result.sop_instance_uid: result.kind for result, _ in exports} if done else {}


def describe_model(weights: str) -> str:
    """The model ``[model] weights`` names, as "name version (network)".

    Raises :class:`HarnessError`, saying what to do, when it is not there (checked before anything starts).
    """
    from dicomnode.segmentation.inference import DEFAULT_CARD, WEIGHTS_DIR
    from dicomnode.segmentation.modelcard import ModelCardError, load_card

    if weights == "default" and not DEFAULT_CARD.is_file():
        raise HarnessError(f"the shipped default model is missing ({DEFAULT_CARD} does not exist); reinstall "
                           f"dicomnode, or run the demo with the network-free baseline: --weights threshold "
                           f"({WEIGHTS_DIR / 'threshold.json'})")
    path = {"default": DEFAULT_CARD, "threshold": WEIGHTS_DIR / "threshold.json"}.get(weights, Path(weights))
    try:
        card = load_card(path)
    except (FileNotFoundError, ModelCardError) as exc:
        raise HarnessError(f"model {weights}: {exc}") from None
    return f"{card.name} {card.version} ({card.network})"
