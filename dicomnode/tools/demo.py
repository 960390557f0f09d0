"""``dicomnode demo``: the whole journey of a study on one machine, with nothing configured.

The journey is docs/architecture.md, "The journey of a study"; the parts shared with tests and
benchmarks are :mod:`dicomnode.tools.harness`.

1. a destination PACS starts on a free loopback port (:func:`~dicomnode.tools.harness.start_pacs`):
   dcmtk ``storescp`` when installed, else a small pynetdicom Storage SCP;
2. the node starts in this process on a free port with the built-in defaults (:mod:`dicomnode.config`)
   except a var directory in the output folder (SQLite + spool), the PACS as its only destination and
   a 0.2 s poll (the default 1 s poll is for a site, where a second does not matter);
3. ``dicomnode.synth`` simulates the studies as whole exams of the vendors in turn (``--vendor
   mixed``: whole body with each vendor's headers, statics, TOMO, RECON TOMO, a screen capture;
   :mod:`dicomnode.synth.vendors`) with their lesion truth;
4. each whole exam is sent by C-STORE as a camera would (:func:`dicomnode.dicom.scu.send_files`, calling AE
   ``CAMERA``), one after the other; the demo waits until the node's database says every result
   object of the study was delivered, then finds them at the PACS;
5. the node's log goes to ``node.log`` in the run's folder (``--verbose``: to stderr), so that the
   console holds only the progress lines and the table;
6. per study: lesions found per view and how many truth lesions they hit, the pixel DSC of the SEG
   received at the PACS against the simulator's truth (paper 001 Eq. 7, :mod:`dicomnode.segmentation.metrics`),
   and the seconds from the start of the C-STORE to the last result object's arrival at the PACS;
   two pictures per study: the Secondary Capture the PACS received, and the source views with the
   truth (red) and the received SEG (cyan) outlined.

The model is the configured default (``[model] weights = "default"``, the shipped weights); a missing
model is reported before anything starts (:class:`~dicomnode.tools.harness.HarnessError`, as is
everything else that keeps the demo from running here).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from scipy.ndimage import binary_erosion

from dicomnode.config import NodeConfig
from dicomnode.dicom.peers import Destination
from dicomnode.dicom.scu import send_files
from dicomnode.dicom.sop import ResultKind
from dicomnode.tools.harness import (
    HarnessError,
    Pacs,
    Received,
    delivered_results,
    describe_model,
    free_port,
    start_pacs,
)
from dicomnode.segmentation.device import resolve_device
from dicomnode.segmentation.metrics import lesion_scores, pixel_counts
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.views import load_scan

log = logging.getLogger(__name__)

CAMERA_AE = "CAMERA"
POLL_SECONDS = 0.2
#: The spool's free-space floor for the demo: the default 1 GiB would refuse studies on a small /tmp.
MIN_FREE_BYTES = 64 << 20
TRUTH_RGB, PREDICTION_RGB = (220, 20, 20), (0, 170, 220)
#: The node's log in the run's folder: the console keeps the progress lines and the table only.
LOG_FILE = "node.log"


# -- one study --------------------------------------------------------------------------------------


@dataclass
class DemoStudy:
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
    regions: list[str] = field(default_factory=list)  # each SR lesion's finding site (anatomy map)
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
    studies: list[DemoStudy]
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return bool(self.studies) and all(study.ok for study in self.studies)


def _evaluate(outcome: DemoStudy, sources: list[Dataset], truth: dict[str, np.ndarray],
              objects: Sequence[tuple[ResultKind, Received]], pictures: Path) -> None:
    """Score the whole-body SEGs at the PACS against the truth; write the pictures.

    A SEG on another source (the exam's SPECT reconstruction, segmented SPECT-only) has no planar
    truth and is not scored."""
    scan = load_scan(sources)
    by_frame = {(image.source.sop_instance_uid, image.source.frame_number): image for image in scan.views.values()}
    whole_body = {str(ds.SOPInstanceUID) for ds in sources}
    masks: dict[View, np.ndarray] = {}
    for kind, item in objects:
        if kind is ResultKind.SEG:
            seg = pydicom.dcmread(item.path)
            reference = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
            if str(reference.ReferencedSOPInstanceUID) not in whole_body:
                continue
            frame = (str(reference.ReferencedSOPInstanceUID), int(reference.get("ReferencedFrameNumber", 1)))
            image = by_frame.get(frame)
            if image is None:
                raise HarnessError(f"the SEG {item.sop_instance_uid} references a frame that was not sent")
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
    for kind, item in objects:
        if kind is ResultKind.SR:  # the planar SR's (a SPECT reconstruction's SR names "Bone")
            sr = pydicom.dcmread(item.path)
            evidence = {ref.ReferencedSOPInstanceUID for study_item in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
                        for series in study_item.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
            if evidence & whole_body:
                outcome.regions += finding_sites(sr)
        if kind is ResultKind.SC:
            sc = pydicom.dcmread(item.path)
            planar = any(str(ref.ReferencedSOPInstanceUID) in whole_body for ref in sc.get("SourceImageSequence", []))
            path = pictures / f"{outcome.name}_{'secondary_capture' if planar else 'spect_secondary_capture'}.png"
            Image.fromarray(sc.pixel_array).save(path)
            outcome.pictures.append(path)


FINDING_SITE, LATERALITY = "363698007", "272741003"  # SCT concept names (TID 1501, TID 1419)


def finding_sites(sr: Dataset) -> list[str]:
    """Every Finding Site of an SR's content tree, with its laterality, e.g. ["Left Rib", "Sacrum"]."""
    sites = []
    for item in sr.get("ContentSequence", []):
        if item.ConceptNameCodeSequence[0].CodeValue == FINDING_SITE:
            side = [m.ConceptCodeSequence[0].CodeMeaning for m in item.get("ContentSequence", [])
                    if m.ConceptNameCodeSequence[0].CodeValue == LATERALITY]
            sites.append(" ".join([*side, item.ConceptCodeSequence[0].CodeMeaning]))
        else:
            sites += finding_sites(item)
    return sites


def _regions_column(regions: list[str], width: int = 40) -> str:
    """E.g. ``2 Left Rib, Thoracic spine`` (most frequent first), clipped at ``width`` characters."""
    counts = Counter(regions)
    text = ", ".join(f"{n} {site}" if n > 1 else site for site, n in counts.most_common()) or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


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
                   pictures: Path) -> DemoStudy:
    outcome = DemoStudy(study["folder"], study["study_instance_uid"], study["layout"])
    files = [folder / item["file"] for item in study["files"]]
    started = time.time()
    sent = send_files(files, peer, calling_ae=CAMERA_AE)
    refused = [r for r in sent if not r.ok]
    if refused:
        outcome.error = f"the node refused {refused[0].path.name}: {refused[0].status_text} {refused[0].detail}"
        return outcome
    deadline = time.monotonic() + timeout
    while True:
        finished, error, delivered = delivered_results(node.database, outcome.study_instance_uid)
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
    missing = set(delivered) - set(at_pacs)
    if missing:
        outcome.error = f"{len(missing)} delivered object(s) not found at the PACS"
        return outcome
    objects = [(kind, at_pacs[uid]) for uid, kind in sorted(delivered.items())]
    outcome.seconds = max(item.arrived for _, item in objects) - started
    outcome.objects = sorted(kind.value for kind, _ in objects)
    with np.load(folder / study["truth"]) as archive:
        truth = {name: archive[name] for name in archive.files}
    whole_body = [folder / item["file"] for item in study["files"] if item.get("kind", "whole-body") == "whole-body"]
    _evaluate(outcome, [pydicom.dcmread(path) for path in whole_body], truth, objects, pictures)
    return outcome


# -- the whole demo ---------------------------------------------------------------------------------


def node_config(out: Path, port: int, pacs: Pacs, weights: str, device: str) -> NodeConfig:
    """The built-in defaults, plus what a demo on one machine must set (see the module docstring)."""
    return NodeConfig(
        node={"host": "127.0.0.1", "port": port},
        storage={"var_dir": out / "var", "min_free_bytes": MIN_FREE_BYTES},
        queue={"poll_seconds": POLL_SECONDS},
        model={"weights": weights, "device": device, "unvalidated_results": True},  # the simulator's SPECT too
        destinations=[{"name": "demo-pacs", "host": "127.0.0.1", "port": pacs.port, "ae_title": pacs.aet}],
    )


def demo_folder(out: Path | None = None) -> Path:
    """The folder of a demo run: ``out`` (made if missing), or a new temporary folder (kept);
    a folder that holds a previous run is refused."""
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="dicomnode-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    if any((out / name).exists() for name in ("var", "pacs")):
        raise HarnessError(f"{out} holds a previous demo run (var/, pacs/): choose an empty folder")
    return out


def run_demo(out: Path | None = None, *, studies: int = 3, seed: int = 2025, weights: str = "default",
             device: str = "auto", pacs_kind: str = "auto", timeout: float = 120.0,
             progress: Callable[[str], None] = lambda line: None) -> DemoReport:
    """Run the demo (module docstring) into :func:`demo_folder` ``(out)``; ``progress`` gets one line
    per step, so a run without a terminal is not silent for minutes."""
    from dicomnode.ops.service import Node
    from dicomnode.synth import write_studies

    started = time.monotonic()
    if studies < 1:
        raise HarnessError("the demo needs at least one study")
    model = describe_model(weights)
    out = demo_folder(out)
    manifest = write_studies(out / "studies", studies=studies, seed=seed, layout="mixed", png=False, vendor="mixed")
    progress(f"simulated {studies} {'study' if studies == 1 else 'studies'} in {out / 'studies'}")
    pacs = start_pacs(out / "pacs" / "received", pacs_kind)
    progress(f"PACS started: {pacs.description}")
    try:
        port = free_port()
        node = Node(node_config(out, port, pacs, weights, device))
        try:
            try:
                node.start()
            except Exception as exc:  # e.g. --device cuda without a GPU: torch raises AssertionError
                raise HarnessError(f"the node did not start: {type(exc).__name__}: {exc}") from None
            progress(f"node started on port {port} with {model}")
            peer = Destination(name="node", host="127.0.0.1", port=port, ae_title=node.config.node.ae_title)
            outcomes = []
            for number, study in enumerate(manifest["studies"], start=1):
                progress(f"study {number}/{studies}: sending {study['folder']}, waiting for its results at the PACS")
                outcomes.append(_send_and_wait(study, out / "studies" / study["folder"], node, pacs, peer, timeout,
                                               out / "pictures"))
                last = outcomes[-1]
                progress(f"study {number}/{studies}: " + (f"failed: {last.error}" if last.error else
                                                          f"results at the PACS after {last.seconds:.1f} s"))
        finally:
            node.stop()
    finally:
        pacs.stop()
    return DemoReport(out, f"{pacs.description}, {pacs.aet}@127.0.0.1:{pacs.port}",
                      f"{model} on {resolve_device(device)}", outcomes, time.monotonic() - started)


def render(report: DemoReport) -> list:
    """Rich renderables: one table row per study, and where the pictures are."""
    from rich.table import Table

    table = Table(title=f"dicomnode demo: {len(report.studies)} simulated studies → node → PACS "
                        f"({report.wall_seconds:.0f} s)")
    for column in ("study", "layout", "lesions found ant / post", "regions (SR)", "truth lesions hit",
                   "DSC ant / post", "results at the PACS", "send → delivered"):
        table.add_column(column, justify="right" if column.startswith(("truth", "DSC", "send")) else "left")
    for study in report.studies:
        if not study.ok:
            table.add_row(study.name, study.layout, f"[red]{study.error}[/red]", "", "", "", "", "")
            continue
        per_view = " / ".join(str(study.lesions[v]) if v in study.lesions else "-" for v in View)
        dsc = " / ".join(f"{study.dsc[v]:.2f}" if v in study.dsc else "-" for v in View)
        kinds = ", ".join(f"{study.objects.count(k)}×{k}" if study.objects.count(k) > 1 else k
                          for k in dict.fromkeys(study.objects))
        table.add_row(study.name, study.layout, per_view, _regions_column(study.regions),
                      f"{study.detected} of {study.truth_lesions}", dsc, kinds,
                      f"{study.seconds:.1f} s")
    lines = [f"PACS: {report.pacs}", f"model: {report.model}", table,
             f"pictures (truth red, AI cyan; and each study's Secondary Capture): {report.out / 'pictures'}",
             f"node state (SQLite, spool): {report.out / 'var'}; results as the PACS stored them: "
             f"{report.out / 'pacs' / 'received'}"]
    if (report.out / LOG_FILE).is_file():
        lines.append(f"the node's log (warnings about the simulated exams' headers among them): {report.out / LOG_FILE}")
    return lines
