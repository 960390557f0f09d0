"""``dicomnode demo``: simulated studies → C-STORE → the node → a real PACS, with a table per study.

The end-to-end test runs the README's command as a process (the shipped default model when it is
there) and checks the PACS's own files, not the demo's word for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

import dicomnode.segmentation.inference
from dicomnode.cli import app
from dicomnode.pipeline.models import load_segmenter
from dicomnode.tools.demo import run_demo
from dicomnode.tools.harness import HarnessError, dcmtk_binary
from dicomnode.segmentation.metrics import pixel_counts
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.views import load_scan
from tests.peers import dcmtk

KIND = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.11.1": "GSPS",
        "1.2.840.10008.5.1.4.1.1.88.33": "SR", "1.2.840.10008.5.1.4.1.1.88.34": "SR3D", "1.2.840.10008.5.1.4.1.1.7": "SC"}
#: What one vendor exam gets: the whole-body scan's SEG per view, GSPS, SR and SC, and its SPECT
#: reconstruction (no CT in the exam) segmented SPECT-only: a SEG on the NM volume, a 3-D SR and an SC.
PER_EXAM = Counter(SEG=3, GSPS=1, SR=1, SR3D=1, SC=2)


def pacs_kinds(folder) -> dict[str, Counter]:
    """Result kinds per Study Instance UID among the files a PACS stored."""
    found: dict[str, Counter] = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.setdefault(str(ds.StudyInstanceUID), Counter())[KIND[str(ds.SOPClassUID)]] += 1
    return found


@pytest.mark.slow
@pytest.mark.network
def test_demo_command_end_to_end(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-c", "from dicomnode.cli import main; main()", "demo", "--out", str(out)]
    shipped = dicomnode.segmentation.inference.DEFAULT_CARD.is_file()
    if not shipped:  # until the default weights are committed, the same journey with the baseline
        command += ["--weights", "threshold"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout + run.stderr

    rows = re.findall(r"^│ (study_\d{4}) +│ vendor:(generic|siemens|ge) .*│ +(\d+\.\d) s │$", run.stdout, re.MULTILINE)
    assert [(name, vendor) for name, vendor, _ in rows] == [
        ("study_0001", "generic"), ("study_0002", "siemens"), ("study_0003", "ge")], run.stdout
    assert all(0 < float(seconds) < 120 for _, _, seconds in rows)
    assert "PACS: dcmtk storescp" in run.stdout
    # The console holds the progress lines and the table; the node's log (library and receiver
    # warnings included) is in node.log, which the demo names.
    log = out / "node.log"
    assert not re.search(r" (WARNING|ERROR) ", run.stderr), run.stderr
    assert f"the node's log: {log}" in run.stderr
    assert re.search(r"^\S+ \S+ INFO dicomnode\.", log.read_text(), re.MULTILINE), log.read_text()[:2000]
    assert ("(threshold)" not in run.stdout) == shipped  # the shipped model when present

    manifest = json.loads((out / "studies" / "manifest.json").read_text())
    at_pacs = pacs_kinds(out / "pacs" / "received")
    assert set(at_pacs) == {study["study_instance_uid"] for study in manifest["studies"]}
    for study in manifest["studies"]:
        assert at_pacs[study["study_instance_uid"]] == PER_EXAM, study["folder"]
    for name, _, _ in rows:
        for suffix in ("vs_truth", "secondary_capture"):
            with Image.open(out / "pictures" / f"{name}_{suffix}.png") as picture:
                assert picture.mode == "RGB" and picture.height > 1024
        with Image.open(out / "pictures" / f"{name}_spect_secondary_capture.png") as picture:
            assert picture.mode == "RGB"


@pytest.mark.network
def test_demo_with_the_pynetdicom_pacs_scores_each_view(tmp_path):
    lines: list[str] = []
    report = run_demo(tmp_path / "run", studies=1, seed=3, weights="threshold", device="cpu", pacs_kind="pynetdicom",
                      progress=lines.append)
    assert report.ok, [study.error for study in report.studies]
    # one line per step, whatever the output is (a run without a terminal is not silent)
    assert lines[0].startswith("simulated 1 study") and lines[1].startswith("PACS started")
    assert lines[2].startswith("node started on port") and lines[-1].startswith("study 1/1: results at the PACS after")
    assert report.pacs.startswith("pynetdicom Storage SCP")
    (study,) = report.studies
    assert sorted(study.objects) == ["GSPS", "SC", "SC", "SEG", "SEG", "SEG", "SR", "SR"]
    assert set(study.dsc) == set(study.lesions) == set(View)
    assert all(0.0 <= value <= 1.0 for value in study.dsc.values())
    assert 0 <= study.detected <= study.truth_lesions
    assert 0 < study.seconds < 120
    # The scores read from the SEGs at the PACS are those of the segmenter run here on the same files:
    # the demo matched each SEG to its view and decoded it right.
    entry = json.loads((tmp_path / "run" / "studies" / "manifest.json").read_text())["studies"][0]
    folder = tmp_path / "run" / "studies" / entry["folder"]
    direct = load_segmenter("threshold", "cpu").segment(
        load_scan([pydicom.dcmread(folder / item["file"]) for item in entry["files"] if item["kind"] == "whole-body"]))
    with np.load(folder / "truth.npz") as truth:
        for view, result in direct.views.items():
            assert study.dsc[view] == pytest.approx(pixel_counts(truth[view.value], result.mask).dsc)
            assert study.lesions[view] == len(result.lesions)
    received = sorted(p.name for p in (tmp_path / "run" / "pacs" / "received").iterdir())
    assert received == [f"{n:06d}.dcm" for n in range(1, 9)]  # named by arrival, never by a UID
    assert set(pacs_kinds(tmp_path / "run" / "pacs" / "received")) == {study.study_instance_uid}


def test_missing_default_model_is_reported_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(dicomnode.segmentation.inference, "DEFAULT_CARD", tmp_path / "default.json")
    with pytest.raises(HarnessError, match="default model is missing .* --weights threshold"):
        run_demo(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--weights threshold" in result.output


def test_bad_model_path_and_used_folder_are_refused(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        run_demo(tmp_path / "run", weights=str(tmp_path / "no-such-model.safetensors"))
    (tmp_path / "used" / "var").mkdir(parents=True)
    with pytest.raises(HarnessError, match="previous demo run"):
        run_demo(tmp_path / "used", weights="threshold")


def test_dcmtk_lookup_takes_only_dcmtk_programs(tmp_path, monkeypatch):
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name in ("no-such-dcmtk-tool", "storescp"):  # first on PATH, and not dcmtk
        (fakes / name).write_text("#!/bin/sh\necho 'pynetdicom storescp v3'\n")
        (fakes / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fakes}{os.pathsep}{os.environ['PATH']}")
    assert dcmtk_binary("no-such-dcmtk-tool") is None  # on PATH and runs, but is not dcmtk
    assert dcmtk("storescp") != str(fakes / "storescp")  # dcmtk's own, not a script of that name
