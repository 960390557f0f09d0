"""``dicomnode synth`` on disk: NM files as cameras send them, validated by the real dciodvfy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import NuclearMedicineImageStorage
import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.synth import simulate_study, write_studies
from dicomnode.synth.studies import study_rng
from dicomnode.segmentation.scan import View

ANTERIOR_CODE, POSTERIOR_CODE = "399321004", "399001007"
VIEW_OF_CODE = {ANTERIOR_CODE: View.ANTERIOR, POSTERIOR_CODE: View.POSTERIOR}


@pytest.fixture(scope="module")
def multiframe(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("multiframe")
    return out, write_studies(out, studies=2, seed=21, layout="multiframe", png=True)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("split")
    return out, write_studies(out, studies=2, seed=22, layout="split", png=False)


def _values(value) -> list:
    """A multi-valued element as a list (pydicom gives a bare value when VM is 1)."""
    return list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]


def _errors(report: str) -> list[str]:
    """The ``Error - …`` findings of a dicom3tools report (they may share a line with other output)."""
    return re.findall(r"Error - [^\n]*", report)


def _views_of(ds) -> list[View]:
    """Frame → view, read the standard way: Detector Vector → Detector Information item → View Code."""
    items = ds.DetectorInformationSequence
    return [VIEW_OF_CODE[items[d - 1].ViewCodeSequence[0].CodeValue] for d in _values(ds.DetectorVector)]


def test_multiframe_round_trips_with_the_right_view_per_frame(multiframe):
    out, manifest = multiframe
    for index, entry in enumerate(manifest["studies"], start=1):
        expected = simulate_study(study_rng(21, index))
        (file,) = entry["files"]
        ds = pydicom.dcmread(out / entry["folder"] / file["file"])
        assert ds.SOPClassUID == NuclearMedicineImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
        assert ds.NumberOfFrames == 2 and ds.NumberOfDetectors == 2
        assert [int(t) for t in ds.FrameIncrementPointer] == [0x00540010, 0x00540020]
        assert list(ds.EnergyWindowVector) == [1, 1]
        assert _views_of(ds) == [View.ANTERIOR, View.POSTERIOR]
        assert (ds.BitsStored, ds.PixelRepresentation) == (16, 0)
        assert "RescaleSlope" not in ds
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16
        for frame, view in enumerate(_views_of(ds)):
            np.testing.assert_array_equal(pixels[frame], expected.images[view])
        assert ds.StudyInstanceUID == entry["study_instance_uid"]
        assert int(ds.CountsAccumulated) == int(pixels.sum(dtype=np.int64))
        assert entry["total_counts"] == {v.value: int(expected.images[v].sum(dtype=np.int64)) for v in View}


def test_split_layout_is_one_instance_per_view_in_one_series(split):
    out, manifest = split
    for index, entry in enumerate(manifest["studies"], start=1):
        expected = simulate_study(study_rng(22, index))
        datasets = [pydicom.dcmread(out / entry["folder"] / f["file"]) for f in entry["files"]]
        assert len(datasets) == 2
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUID for ds in datasets}) == 2
        seen = {}
        for ds in datasets:
            assert ds.NumberOfFrames == 1 and _values(ds.DetectorVector) == [1]
            (view,) = _views_of(ds)
            seen[view] = ds
            np.testing.assert_array_equal(ds.pixel_array, expected.images[view])
        assert set(seen) == set(View)
        assert list(seen[View.ANTERIOR].PatientOrientation) == ["L", "F"]
        assert list(seen[View.POSTERIOR].PatientOrientation) == ["R", "F"]


def test_truth_npz_matches_the_stored_frames(multiframe, split):
    for out, manifest in (multiframe, split):
        for entry in manifest["studies"]:
            truth = np.load(out / entry["folder"] / "truth.npz")
            assert sorted(truth.files) == ["anterior", "posterior"]
            for view in View:
                mask = truth[view.value]
                assert mask.dtype == np.uint8 and mask.shape == (1024, 256)
                assert set(np.unique(mask)) <= {0, 1}
                for lesion in entry["lesions"]:
                    row, col = (round(v) for v in lesion["position_px"])
                    if view is View.POSTERIOR:  # stored as seen from behind
                        col = 255 - col
                    if lesion["visible"][view.value]:
                        assert mask[row, col] == 1, (view, lesion)
                if not any(les["visible"][view.value] for les in entry["lesions"]):
                    assert not mask.any()


def test_every_file_passes_dciodvfy_without_errors(multiframe, split):
    assert shutil.which("dciodvfy"), "dicom3tools (dciodvfy) is a test dependency"
    files = sorted(p for out, _ in (multiframe, split) for p in out.rglob("*.dcm"))
    assert len(files) == 6
    for path in files:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        assert "NMImage" in report.replace(" ", ""), report  # it recognised the IOD
        assert _errors(report) == [], f"{path}:\n{report}"


def test_instances_of_a_run_are_mutually_consistent_for_dcentvfy(multiframe, split):
    """dcentvfy checks that patient, study and series attributes agree across all the files."""
    assert shutil.which("dcentvfy"), "dicom3tools (dcentvfy) is a test dependency"
    for out, _ in (multiframe, split):
        files = sorted(str(p) for p in out.rglob("*.dcm"))
        run = subprocess.run(["dcentvfy", *files], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        assert _errors(report) == [], report


def test_manifest_describes_every_study(multiframe):
    out, manifest = multiframe
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["layout"] == "multiframe" and len(manifest["studies"]) == 2
    for entry in manifest["studies"]:
        assert entry["count_level"] == pytest.approx(np.mean(list(entry["total_counts"].values())), abs=1)
        for lesion in entry["lesions"]:
            assert 4.0 <= lesion["size_mm"] <= 40.0
            assert 1.3 <= lesion["uptake_ratio"] <= 6.0
            assert set(lesion["visible"]) == {"anterior", "posterior"}
            assert lesion["bone"]
        kinds = [m["kind"] for m in entry["mimics"]]
        assert "bladder" in kinds
        assert (out / entry["folder"] / "overlay.png").stat().st_size > 10_000


def test_same_seed_same_bytes_other_seed_other_study(tmp_path):
    first = write_studies(tmp_path / "a", studies=2, seed=5, layout="mixed", png=False)
    again = write_studies(tmp_path / "b", studies=2, seed=5, layout="mixed", png=False)
    other = write_studies(tmp_path / "c", studies=2, seed=6, layout="mixed", png=False)
    assert first == again
    for entry in first["studies"]:
        for f in entry["files"]:
            a = (tmp_path / "a" / entry["folder"] / f["file"]).read_bytes()
            b = (tmp_path / "b" / entry["folder"] / f["file"]).read_bytes()
            assert a == b
        ta, tb = (np.load(tmp_path / d / entry["folder"] / "truth.npz") for d in "ab")
        for key in ("anterior", "posterior"):
            np.testing.assert_array_equal(ta[key], tb[key])
    assert {s["study_instance_uid"] for s in first["studies"]}.isdisjoint(
        s["study_instance_uid"] for s in other["studies"])


def test_mixed_layout_uses_both_layouts(tmp_path):
    manifest = write_studies(tmp_path, studies=6, seed=3, layout="mixed", png=False)
    layouts = [s["layout"] for s in manifest["studies"]]
    assert set(layouts) == {"multiframe", "split"}
    for entry in manifest["studies"]:
        assert len(entry["files"]) == (1 if entry["layout"] == "multiframe" else 2)


def test_rerun_with_another_layout_leaves_no_stale_files(tmp_path):
    write_studies(tmp_path, studies=1, seed=2, layout="split", png=True)
    write_studies(tmp_path, studies=1, seed=2, layout="multiframe", png=False)
    assert sorted(p.name for p in (tmp_path / "study_0001").iterdir()) == ["truth.npz", "wholebody.dcm"]


def test_fine_matrix_is_the_same_patient_and_valid(tmp_path):
    manifest = write_studies(tmp_path, studies=1, seed=8, layout="multiframe", png=False,
                             rows=2048, columns=512, spacing_mm=1.13)
    coarse = simulate_study(study_rng(8, 1))
    (entry,) = manifest["studies"]
    ds = pydicom.dcmread(tmp_path / entry["folder"] / "wholebody.dcm")
    assert (ds.Rows, ds.Columns) == (2048, 512)
    assert [float(v) for v in ds.PixelSpacing] == [1.13, 1.13]
    run = subprocess.run(["dciodvfy", str(tmp_path / entry["folder"] / "wholebody.dcm")],
                         capture_output=True, text=True, timeout=60)
    assert _errors(run.stdout + run.stderr) == []
    # same lesions in millimetres, same count level (counts do not depend on the matrix)
    coarse_lesions = [t.as_dict(2.26) for t in coarse.lesions]
    assert [les["bone_name"] for les in entry["lesions"]] == [les["bone_name"] for les in coarse_lesions]
    for fine, crude in zip(entry["lesions"], coarse_lesions):
        assert fine["size_mm"] == crude["size_mm"]
        assert fine["position_mm"] == pytest.approx(crude["position_mm"], abs=0.1)
    assert entry["count_level"] == pytest.approx(coarse.count_level, rel=0.03)
    # 2 × 2 binning of the fine image gives the coarse image up to noise
    fine_ant = ds.pixel_array[0].astype(float).reshape(1024, 2, 256, 2).sum(axis=(1, 3))
    assert np.corrcoef(fine_ant.ravel(), coarse.expected[View.ANTERIOR].ravel())[0, 1] > 0.95


def test_cli_writes_studies(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--studies", "1", "--seed", "4",
                                      "--layout", "split"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [f["file"] for f in manifest["studies"][0]["files"]] == ["anterior.dcm", "posterior.dcm"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(layout="stacked"), "layout"),
    (dict(studies=0), "studies"),
    (dict(rows=100), "field of view"),
    (dict(spacing_mm=-1.0), "spacing"),
    (dict(population="elderly"), "population"),
])
def test_bad_arguments_are_refused_clearly(tmp_path, kwargs, message):
    args = dict(studies=1, seed=0, layout="split", png=False) | kwargs
    with pytest.raises(ValueError, match=message):
        write_studies(tmp_path, **args)
