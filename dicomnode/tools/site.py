"""A simulated site for the learning loop (issue 26; docs/training.md, "The site's own model").

Simulated studies go through a real ``dicomnode serve`` by dcmtk ``storescu``; a "physician" corrects
each result the way a reader edits the AI SEG in a viewer (:func:`edit_result`: removes the AI's
false positives, adds the lesions it missed, redraws the contours of those it found one pixel
wider or narrower), and the corrections go back by ``storescu`` as SEGs made with highdicom
(:func:`correction_seg`: MANUAL segments, the viewer's Manufacturer, Content Creator's Name). Then
``dicomnode learn`` runs as the site would run it. Used by ``benchmarks/site_learning.py`` and the
slow test ``tests/test_learn_site.py``.

Outside the runtime path (docs/architecture.md, "Layout"): no part of the node imports it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage
from sqlalchemy import func, select

from dicomnode.dicom.sop import ResultKind
from dicomnode.store.db import Database, connect
from dicomnode.store.models import (
    Job,
    JobState,
    ResultObject,
    SiteLabel,
    Study,
    StudyState,
)
from dicomnode.synth.studies import write_studies
from dicomnode.tools.harness import HarnessError, dcmtk_binary, free_port, wait_for_port
from dicomnode.train.seglabels import read_seg_labels

VIEWER = "Site viewer"  # the correcting viewer's Manufacturer (not the node's)
READER = "Reader^Site"  # Content Creator's Name of the corrections
EIGHT = np.ones((3, 3), bool)


@dataclass
class Edits:
    """What the reader changed in one study's AI result."""

    added: int = 0  # truth lesions the AI missed
    removed: int = 0  # AI components on no truth lesion
    redrawn: int = 0  # AI-found lesions redrawn from the truth, one pixel wider or narrower

    def __iadd__(self, other: Edits) -> Edits:
        self.added, self.removed, self.redrawn = (self.added + other.added, self.removed + other.removed,
                                                  self.redrawn + other.redrawn)
        return self


def edit_result(ai: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Edits]:
    """The reader's corrected mask of one view, from the AI's mask and the truth (module docstring)."""
    edits = Edits()
    ai_labels, ai_count = ndimage.label(ai != 0, EIGHT)
    truth_labels, truth_count = ndimage.label(truth != 0, EIGHT)
    for label in range(1, ai_count + 1):
        if not truth[ai_labels == label].any():
            edits.removed += 1
    corrected = np.zeros(truth.shape, np.uint8)
    for label in range(1, truth_count + 1):
        lesion = truth_labels == label
        if not ai[lesion].any():
            edits.added += 1
            corrected |= lesion
            continue
        edits.redrawn += 1
        drawn = ndimage.binary_dilation(lesion, EIGHT) if rng.uniform() < 0.5 else ndimage.binary_erosion(lesion, EIGHT)
        corrected |= drawn if drawn.any() else lesion
    return corrected, edits


def _proxy(nm: Dataset) -> Dataset:
    """A single-frame NM image as highdicom takes a SEG source (as the node's own SEG does)."""
    proxy = copy.deepcopy(nm)
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
        proxy.pop(keyword, None)
    groups, measures = Dataset(), Dataset()
    measures.PixelSpacing = nm.PixelSpacing
    groups.PixelMeasuresSequence = [measures]
    proxy.SharedFunctionalGroupsSequence = [groups]
    return proxy


def correction_seg(nm: Dataset, mask: np.ndarray, *, series_uid: str, number: int) -> Dataset:
    """A reader's SEG of one single-view NM instance: one MANUAL bone-metastasis segment (CID 7150)."""
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Bone metastasis",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.NeoplasmSecondary, algorithm_type="MANUAL")
    return hd.seg.Segmentation(
        source_images=[_proxy(nm)], pixel_array=mask[np.newaxis].astype(np.uint8), segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=series_uid, series_number=700,
        sop_instance_uid=hd.UID(), instance_number=number, manufacturer=VIEWER,
        manufacturer_model_name="viewer", software_versions="1", device_serial_number="1",
        content_creator_name=READER, series_description="Corrected AI lesions", omit_empty_frames=False)


def write_config(path: Path, var_dir: Path, port: int, *, held_out_percent: int, threads: int,
                 bootstrap: int, weights: str = "default", folds: int = 3) -> Path:
    """The site's node.toml: ``[model] weights`` on the CPU, no destination (results stay in the spool)."""
    path.write_text("\n".join([
        "[node]", f"port = {port}", 'host = "127.0.0.1"',
        "[storage]", f'var_dir = "{var_dir}"', "min_free_bytes = 0",
        "[assembly]", "quiet_seconds = 1.0", "[queue]", "poll_seconds = 0.2",
        "[model]", f'weights = "{weights}"', 'device = "cpu"',
        "[retention]", "enabled = false",
        "[learn]", f"held_out_percent = {held_out_percent}", f"threads = {threads}", f"bootstrap = {bootstrap}",
        f"folds = {folds}",
    ]) + "\n")
    return path


def dicomnode(*args: str, log: Path, nice: bool = False) -> subprocess.CompletedProcess:
    """Run the ``dicomnode`` command as a site would (optionally under ``nice``), output to ``log``."""
    command = [sys.executable, "-c", "from dicomnode.cli import main; main()", *args]
    with log.open("ab") as handle:
        return subprocess.run((["nice", "-n", "10"] if nice else []) + command, stdout=subprocess.PIPE,
                              stderr=handle, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)


class Site:
    """A running node with its folders (module docstring); a context manager that stops the node."""

    def __init__(self, work: Path, *, held_out_percent: int = 30, threads: int = 2, bootstrap: int = 1000,
                 weights: str = "default", folds: int = 3) -> None:
        storescu = dcmtk_binary("storescu")
        if storescu is None:
            raise HarnessError("dcmtk storescu is not installed")
        self.storescu, self.work = storescu, work
        self.port = free_port()
        self.var = work / "var"
        self.config = write_config(work / "node.toml", self.var, self.port, held_out_percent=held_out_percent,
                                   threads=threads, bootstrap=bootstrap, weights=weights, folds=folds)
        self.log = work / "node.log"
        self.node: subprocess.Popen | None = None
        self.database: Database | None = None

    def __enter__(self) -> Site:
        with self.log.open("ab") as handle:
            self.node = subprocess.Popen([sys.executable, "-c", "from dicomnode.cli import main; main()", "serve",
                                          "--config", str(self.config)], stdout=handle, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        wait_for_port(self.port, self.node, timeout=120)
        self.database = connect(f"sqlite:///{(self.var / 'dicomnode.db').resolve()}", create=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.node is not None and self.node.poll() is None:
            self.node.terminate()
            self.node.wait(timeout=60)
        if self.database is not None:
            self.database.dispose()

    def send(self, files: list[Path]) -> None:
        """C-STORE ``files`` to the node with dcmtk ``storescu``."""
        run = subprocess.run([self.storescu, "-R", "-aet", "VIEWER", "-aec", "DICOMNODE", "127.0.0.1", str(self.port),
                              *map(str, files)], capture_output=True, text=True, timeout=300, check=False)
        if run.returncode != 0:
            raise HarnessError(f"storescu failed ({run.returncode}): {run.stderr[-500:]}")

    def wait(self, what: str, done, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.node is not None and self.node.poll() is not None:
                raise HarnessError(f"the node exited ({self.node.returncode}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise HarnessError(f"timed out waiting for {what}")
            time.sleep(0.5)

    def processed(self, study_uids: list[str]) -> bool:
        with self.database.session() as session:
            done = session.scalar(select(func.count()).select_from(Study).where(
                Study.study_instance_uid.in_(study_uids), Study.state == StudyState.PROCESSED))
        return done == len(study_uids)

    def labels(self) -> int:
        with self.database.session() as session:
            return int(session.scalar(select(func.count()).select_from(SiteLabel)))

    def ai_masks(self, study_uid: str) -> tuple[dict[str, np.ndarray], set[str]]:
        """The node's SEG masks of a study by source SOP Instance UID, and the Algorithm Versions it named."""
        with self.database.session() as session:
            paths = session.scalars(select(ResultObject.path).join(Job, Job.id == ResultObject.job_id)
                                    .join(Study, Study.id == Job.study_id)
                                    .where(Study.study_instance_uid == study_uid, Job.state == JobState.DONE,
                                           ResultObject.kind == ResultKind.SEG)).all()
        masks: dict[str, np.ndarray] = {}
        versions: set[str] = set()
        for path in paths:
            ds = pydicom.dcmread(self.var / "spool" / path)
            for segment in ds.SegmentSequence:
                for item in segment.get("SegmentationAlgorithmIdentificationSequence", []) or []:
                    versions.add(str(item.AlgorithmVersion))
            for label in read_seg_labels(ds, accept_automatic=True):
                masks[label.source_sop_instance_uid] = label.mask
        return masks, versions


def simulate(folder: Path, studies: int, seed: int, population: str = "adult") -> list[dict]:
    """``studies`` simulated whole-body studies (one instance per view) of ``population``
    (:data:`dicomnode.synth.patient.POPULATIONS`) with truth; their manifest entries."""
    return write_studies(folder, studies=studies, seed=seed, layout="split", png=False,
                         population=population)["studies"]


def correct(site: Site, synth: Path, entries: list[dict], out: Path, seed: int = 0) -> tuple[list[Path], Edits]:
    """The reader's corrections of each processed study (none where the AI result was already right)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    total = Edits()
    for entry in entries:
        folder = synth / entry["folder"]
        truth = np.load(folder / "truth.npz")
        ai, _ = site.ai_masks(entry["study_instance_uid"])
        series = hd.UID()
        pending = []
        changed = False
        for number, view in enumerate(("anterior", "posterior"), start=1):
            nm = pydicom.dcmread(folder / f"{view}.dcm")
            found = ai.get(str(nm.SOPInstanceUID), np.zeros((nm.Rows, nm.Columns), np.uint8))
            mask, edits = edit_result(found, truth[view], rng)
            total += edits
            changed |= bool(edits.added or edits.removed or truth[view].any())
            pending.append((view, correction_seg(nm, mask, series_uid=series, number=number)))
        if not changed:
            continue  # an untouched result: not a label unless [learn] reviewed_results_count
        for view, seg in pending:
            path = out / f"{entry['folder']}_{view}.dcm"
            seg.save_as(path)
            files.append(path)
    return files, total


def learn(site: Site, *extra: str) -> dict:
    """``nice dicomnode learn --json`` on the site; its report."""
    run = dicomnode("learn", "--config", str(site.config), "--json", *extra, log=site.work / "learn.log", nice=True)
    if run.returncode != 0:
        raise HarnessError(f"dicomnode learn failed ({run.returncode}); see {site.work / 'learn.log'}")
    return json.loads(run.stdout)
