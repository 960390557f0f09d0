"""``dicomnode demo``: the whole journey of DESIGN §1 on one machine, with nothing configured.

1. a destination PACS starts on a free loopback port: dcmtk ``storescp`` when installed (Debian's
   binary: pynetdicom installs a Python script of the same name, so the version banner is checked),
   else a small pynetdicom Storage SCP;
2. the node starts in this process on a free port with the built-in defaults (:mod:`dicomnode.config`)
   except a var directory in the output folder (SQLite + spool), the PACS as its only destination and
   a 0.2 s poll (the default 1 s poll is for a site, where a second does not matter);
3. ``dicomnode.synth`` simulates the studies (the mixed layout: one two-frame instance or two
   single-frame ones) with their lesion truth;
4. each study is sent by C-STORE as a camera would (:func:`dicomnode.scu.send_files`, calling AE
   ``CAMERA``), one after the other; the demo waits until the node's database says every result
   object of the study was delivered, then finds them at the PACS;
5. per study: lesions found per view and how many truth lesions they hit, the pixel DSC of the SEG
   received at the PACS against the simulator's truth (paper 001 Eq. 7, :mod:`segmentation.metrics`),
   and the seconds from the start of the C-STORE to the last result object's arrival at the PACS;
   two pictures per study: the Secondary Capture the PACS received, and the source views with the
   truth (red) and the received SEG (cyan) outlined.

The model is the configured default (``[model] weights = "default"``, the shipped weights); a missing
model is reported before anything starts (:class:`DemoError`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from scipy.ndimage import binary_erosion
from sqlalchemy import select

from dicomnode.config import Destination, NodeConfig
from dicomnode.models import ExportState, JobState, Study
from dicomnode.scu import send_files
from segmentation.metrics import lesion_scores, pixel_counts
from segmentation.scan import View
from segmentation.views import load_scan

log = logging.getLogger(__name__)

PACS_AE = "PACS"
CAMERA_AE = "CAMERA"
POLL_SECONDS = 0.2
#: The spool's free-space floor for the demo: the default 1 GiB would refuse studies on a small /tmp.
MIN_FREE_BYTES = 64 << 20
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SC_STORAGE = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4")  # PS3.4 B.5
KIND_BY_CLASS = {SEG_STORAGE: "SEG", "1.2.840.10008.5.1.4.1.1.11.1": "GSPS", "1.2.840.10008.5.1.4.1.1.88.33": "SR",
                 **{uid: "SC" for uid in SC_STORAGE}}
TRUTH_RGB, PREDICTION_RGB = (220, 20, 20), (0, 170, 220)


class DemoError(RuntimeError):
    """The demo cannot run here (model missing, no port, the PACS does not start)."""


# -- the destination PACS -----------------------------------------------------------------------------


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


def _wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DemoError(f"the PACS exited with status {process.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise DemoError(f"the PACS does not listen on port {port} after {timeout:.0f} s")


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
        _wait_for_port(self.port, self.process)

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
                          SecondaryCaptureImageStorage, MultiFrameTrueColorSecondaryCaptureImageStorage):
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
        raise DemoError(f"unknown PACS kind {kind!r}: use auto, dcmtk or pynetdicom")
    binary = dcmtk_binary("storescp") if kind != "pynetdicom" else None
    if binary is not None:
        return DcmtkPacs(binary, directory)
    if kind == "dcmtk":
        raise DemoError("dcmtk storescp is not installed (apt-get install dcmtk), or use --pacs pynetdicom")
    if kind == "auto":
        return PynetdicomPacs(directory, "pynetdicom Storage SCP (dcmtk storescp is not installed)")
    return PynetdicomPacs(directory)


# -- one study --------------------------------------------------------------------------------------


@dataclass
class StudyOutcome:
    """What the demo saw for one simulated study."""

    name: str  # the simulator's folder name, e.g. study_0001
    study_instance_uid: str
    layout: str
    seconds: float | None = None  # C-STORE start → last result object at the PACS
    objects: list[str] = field(default_factory=list)  # result kinds at the PACS, e.g. SEG, SEG, GSPS, SR, SC
    lesions: dict[View, int] = field(default_factory=dict)  # predicted lesions per view (SEG components)
    truth_lesions: int = 0
    detected: int = 0
    dsc: dict[View, float] = field(default_factory=dict)
    pictures: list[Path] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None


@dataclass
class DemoReport:
    out: Path
    pacs: str
    model: str
    studies: list[StudyOutcome]
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return bool(self.studies) and all(study.ok for study in self.studies)


def delivered_results(database, study_uid: str) -> tuple[bool, str | None, set[str]]:
    """(finished, error, SOP Instance UIDs of the delivered results) of the study's latest job."""
    with database.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one_or_none()
        if study is None or not study.jobs:
            return False, None, set()
        job = max(study.jobs, key=lambda j: j.study_version)
        if job.state is JobState.FAILED:
            return True, f"processing failed: {job.error}", set()
        if job.state is not JobState.DONE:
            return False, None, set()
        exports = [(result.sop_instance_uid, export) for result in job.results for export in result.exports]
        refused = [e for _, e in exports if e.state in (ExportState.REFUSED, ExportState.FAILED)]
        if refused:
            return True, f"export {refused[0].state.value}: {refused[0].last_status} {refused[0].last_error}", set()
        done = bool(exports) and all(e.state is ExportState.DELIVERED for _, e in exports)
        return done, None, {uid for uid, _ in exports} if done else set()


def _evaluate(outcome: StudyOutcome, sources: list[Dataset], truth: dict[str, np.ndarray],
              objects: Sequence[Received], pictures: Path) -> None:
    """Score the SEGs at the PACS against the truth; write the pictures."""
    scan = load_scan(sources)
    by_frame = {(image.source.sop_instance_uid, image.source.frame_number): image for image in scan.views.values()}
    masks: dict[View, np.ndarray] = {}
    for item in objects:
        if item.sop_class_uid == SEG_STORAGE:
            seg = pydicom.dcmread(item.path)
            reference = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
            frame = (str(reference.ReferencedSOPInstanceUID), int(reference.get("ReferencedFrameNumber", 1)))
            image = by_frame.get(frame)
            if image is None:
                raise DemoError(f"the SEG {item.sop_instance_uid} references a frame that was not sent")
            masks[image.view] = np.asarray(seg.pixel_array, dtype=np.uint8).reshape(image.source.rows,
                                                                                      image.source.columns)
    for view, mask in masks.items():
        scores = lesion_scores(truth[view.value], mask)
        outcome.lesions[view] = scores.predicted
        outcome.truth_lesions += scores.truth
        outcome.detected += scores.detected
        outcome.dsc[view] = pixel_counts(truth[view.value], mask).dsc
    pictures.mkdir(parents=True, exist_ok=True)
    comparison = pictures / f"{outcome.name}_vs_truth.png"
    comparison_picture(scan, masks, truth, outcome.name).save(comparison)
    outcome.pictures.append(comparison)
    for item in objects:
        if item.sop_class_uid in SC_STORAGE:
            path = pictures / f"{outcome.name}_secondary_capture.png"
            Image.fromarray(pydicom.dcmread(item.path).pixel_array).save(path)
            outcome.pictures.append(path)


def comparison_picture(scan, masks: dict[View, np.ndarray], truth: dict[str, np.ndarray], title: str) -> Image.Image:
    """Each view as stored, inverted grey windowed to the 99th count percentile, truth red, SEG cyan."""
    panels = []
    for view, image in scan.views.items():
        counts = image.source.to_stored(image.counts)
        top = float(np.percentile(counts, 99.0)) or 1.0
        grey = (255.0 * (1.0 - np.clip(counts / top, 0.0, 1.0))).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for mask, colour in ((truth[view.value] > 0, TRUTH_RGB), (masks.get(view, np.zeros_like(grey)) > 0,
                                                                     PREDICTION_RGB)):
            rgb[mask & ~binary_erosion(mask)] = colour
        panels += [rgb, np.full((rgb.shape[0], 8, 3), 128, dtype=np.uint8)]
    picture = Image.fromarray(np.concatenate(panels[:-1], axis=1))
    scale = 2 if picture.width < 800 else 1  # a 256-column view is too small to read at 1:1
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (picture.width, picture.height + 16), (255, 255, 255))
    canvas.paste(picture, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), f"{title}: {' | '.join(v.value for v in scan.views)} as stored; "
                                        "red truth, cyan AI (SEG at the PACS)", fill=(0, 0, 0))
    return canvas


def _send_and_wait(study: dict, folder: Path, node, pacs: Pacs, peer: Destination, timeout: float,
                   pictures: Path) -> StudyOutcome:
    outcome = StudyOutcome(study["folder"], study["study_instance_uid"], study["layout"])
    files = [folder / item["file"] for item in study["files"]]
    started = time.time()
    sent = send_files(files, peer, calling_ae=CAMERA_AE)
    refused = [r for r in sent if not r.ok]
    if refused:
        outcome.error = f"the node refused {refused[0].path.name}: {refused[0].status_text} {refused[0].detail}"
        return outcome
    deadline = time.monotonic() + timeout
    while True:
        finished, error, uids = delivered_results(node.database, outcome.study_instance_uid)
        if finished:
            break
        if time.monotonic() > deadline:
            outcome.error = f"no results at the PACS after {timeout:.0f} s"
            return outcome
        time.sleep(POLL_SECONDS / 4)
    if error:
        outcome.error = error
        return outcome
    at_pacs = pacs.received()
    missing = uids - set(at_pacs)
    if missing:
        outcome.error = f"{len(missing)} delivered object(s) not found at the PACS"
        return outcome
    objects = [at_pacs[uid] for uid in sorted(uids)]
    outcome.seconds = max(item.arrived for item in objects) - started
    outcome.objects = sorted(KIND_BY_CLASS.get(item.sop_class_uid, item.sop_class_uid) for item in objects)
    with np.load(folder / study["truth"]) as archive:
        truth = {name: archive[name] for name in archive.files}
    _evaluate(outcome, [pydicom.dcmread(path) for path in files], truth, objects, pictures)
    return outcome


# -- the whole demo ---------------------------------------------------------------------------------


def node_config(out: Path, port: int, pacs: Pacs, weights: str, device: str) -> NodeConfig:
    """The built-in defaults, plus what a demo on one machine must set (see the module docstring)."""
    return NodeConfig(
        node={"host": "127.0.0.1", "port": port},
        storage={"var_dir": out / "var", "min_free_bytes": MIN_FREE_BYTES},
        queue={"poll_seconds": POLL_SECONDS},
        model={"weights": weights, "device": device},
        destinations=[{"name": "demo-pacs", "host": "127.0.0.1", "port": pacs.port, "ae_title": pacs.aet}],
    )


def describe_model(weights: str) -> str:
    """The model ``[model] weights`` names, as "name version (network)".

    Raises :class:`DemoError`, saying what to do, when it is not there (checked before anything starts).
    """
    from segmentation.inference import DEFAULT_CARD, WEIGHTS_DIR
    from segmentation.modelcard import ModelCardError, load_card

    if weights == "default" and not DEFAULT_CARD.is_file():
        raise DemoError(f"the shipped default model is missing ({DEFAULT_CARD} does not exist); reinstall "
                        f"dicomnode, or run the demo with the network-free baseline: --weights threshold "
                        f"({WEIGHTS_DIR / 'threshold.json'})")
    path = {"default": DEFAULT_CARD, "threshold": WEIGHTS_DIR / "threshold.json"}.get(weights, Path(weights))
    try:
        card = load_card(path)
    except (FileNotFoundError, ModelCardError) as exc:
        raise DemoError(f"model {weights}: {exc}") from None
    return f"{card.name} {card.version} ({card.network})"


def resolved_device(device: str) -> str:
    """``auto`` is CUDA when present, else the CPU (as :func:`dicomnode.worker.load_segmenter`)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_demo(out: Path | None = None, *, studies: int = 3, seed: int = 2025, weights: str = "default",
             device: str = "auto", pacs_kind: str = "auto", timeout: float = 120.0) -> DemoReport:
    """Run the demo (module docstring) into ``out`` (default: a new temporary folder, kept)."""
    from dicomnode.service import Node
    from dicomnode.synth import write_studies

    started = time.monotonic()
    if studies < 1:
        raise DemoError("the demo needs at least one study")
    model = describe_model(weights)
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="dicomnode-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    if any((out / name).exists() for name in ("var", "pacs")):
        raise DemoError(f"{out} holds a previous demo run (var/, pacs/): choose an empty folder")
    manifest = write_studies(out / "studies", studies=studies, seed=seed, layout="mixed", png=False)
    pacs = start_pacs(out / "pacs" / "received", pacs_kind)
    try:
        port = free_port()
        node = Node(node_config(out, port, pacs, weights, device))
        try:
            try:
                node.start()
            except Exception as exc:  # e.g. --device cuda without a GPU: torch raises AssertionError
                raise DemoError(f"the node did not start: {type(exc).__name__}: {exc}") from None
            peer = Destination(name="node", host="127.0.0.1", port=port, ae_title=node.config.node.ae_title)
            outcomes = [_send_and_wait(study, out / "studies" / study["folder"], node, pacs, peer, timeout,
                                       out / "pictures") for study in manifest["studies"]]
        finally:
            node.stop()
    finally:
        pacs.stop()
    return DemoReport(out, f"{pacs.description}, {pacs.aet}@127.0.0.1:{pacs.port}",
                      f"{model} on {resolved_device(device)}", outcomes, time.monotonic() - started)


def render(report: DemoReport) -> list:
    """Rich renderables: one table row per study, and where the pictures are."""
    from rich.table import Table

    table = Table(title=f"dicomnode demo: {len(report.studies)} simulated studies → node → PACS "
                        f"({report.wall_seconds:.0f} s)")
    for column in ("study", "layout", "lesions found ant / post", "truth lesions hit", "DSC ant / post",
                   "results at the PACS", "send → delivered"):
        table.add_column(column, justify="right" if column.startswith(("truth", "DSC", "send")) else "left")
    for study in report.studies:
        if not study.ok:
            table.add_row(study.name, study.layout, f"[red]{study.error}[/red]", "", "", "", "")
            continue
        per_view = " / ".join(str(study.lesions[v]) if v in study.lesions else "-" for v in View)
        dsc = " / ".join(f"{study.dsc[v]:.2f}" if v in study.dsc else "-" for v in View)
        kinds = ", ".join(f"{study.objects.count(k)}×{k}" if study.objects.count(k) > 1 else k
                          for k in dict.fromkeys(study.objects))
        table.add_row(study.name, study.layout, per_view, f"{study.detected} of {study.truth_lesions}", dsc, kinds,
                      f"{study.seconds:.1f} s")
    lines = [f"PACS: {report.pacs}", f"model: {report.model}", table,
             f"pictures (truth red, AI cyan; and each study's Secondary Capture): {report.out / 'pictures'}",
             f"node state (SQLite, spool): {report.out / 'var'}; results as the PACS stored them: "
             f"{report.out / 'pacs' / 'received'}"]
    return lines
