"""``dicomnode segment FILES… --out DIR``: the pipeline offline on simulated studies (both layouts),
with a summary that matches the segmenter and result files that read back; bad input is reported."""

from __future__ import annotations

import json

import pydicom
import pytest
import torch
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.pipeline.models import load_segmenter
from dicomnode.synth import write_studies
from dicomnode.segmentation.views import load_scan_files
from tests.nm_factory import nm_study, phantom_counts, write_study

KIND_OF_CLASS = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.11.1": "GSPS",
                 "1.2.840.10008.5.1.4.1.1.88.33": "SR", "1.2.840.10008.5.1.4.1.1.7": "SC",
                 "1.2.840.10008.5.1.4.1.1.7.4": "SC"}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    multiframe = write_studies(root / "a", studies=1, seed=3, layout="multiframe", png=False)
    split = write_studies(root / "b", studies=1, seed=4, layout="split", png=False)
    (root / "a" / "notes.txt").write_text("not DICOM")
    folders = {s["study_instance_uid"]: root / part / s["folder"]
               for part, written in (("a", multiframe), ("b", split)) for s in written["studies"]}
    return root, folders


def segment(*args: str):
    torch.set_num_threads(1)
    return CliRunner().invoke(app, ["segment", *args, "--weights", "threshold", "--device", "cpu"])


def test_segment_writes_results_and_a_summary_that_matches_the_segmenter(studies, tmp_path):
    root, folders = studies
    result = segment(str(root / "a"), str(root / "b"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {s["study_uid"] for s in summary["studies"]} == set(folders)
    skipped = {item["file"].rsplit("/", 1)[-1]: item["reason"] for item in summary["skipped"]}
    assert skipped["notes.txt"] == "not a DICOM file" and not any(name.endswith(".dcm") for name in skipped)
    segmenter = load_segmenter("threshold", "cpu")
    for study in summary["studies"]:
        assert study["error"] is None and study["views"] == ["anterior", "posterior"]
        folder = folders[study["study_uid"]]
        expected = segmenter.segment(load_scan_files(sorted(folder.glob("*.dcm"))))
        assert len(study["lesions"]) == len(expected.lesions)
        assert study["total_area_mm2"] == pytest.approx(sum(l.area_mm2 for l in expected.lesions), abs=0.1)
        kinds = []
        for obj in study["objects"]:
            ds = pydicom.dcmread(tmp_path / "out" / obj["file"])
            assert ds.SOPInstanceUID == obj["sop_instance_uid"] and ds.StudyInstanceUID == study["study_uid"]
            kinds.append(KIND_OF_CLASS[ds.SOPClassUID])
            assert kinds[-1] == obj["kind"]
        assert sorted(kinds) == ["GSPS", "SC", "SEG", "SEG", "SR"]
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert all(uid in markdown for uid in folders) and "NOT FOR DIAGNOSTIC USE" in markdown
    assert " mm2" in markdown and "mm²" not in markdown  # the unit as the SC and the SR text write it


def test_an_unreadable_study_is_reported_and_fails_the_command(tmp_path):
    datasets = nm_study(phantom_counts(rows=256, columns=64), layout="split")
    for dataset in datasets:
        del dataset.PixelSpacing
    paths = write_study(datasets, tmp_path / "bad")
    result = segment(*map(str, paths), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    (study,) = json.loads((tmp_path / "out" / "summary.json").read_text())["studies"]
    assert "not processable" in study["error"] and "Pixel Spacing" in study["error"]
    assert study["objects"] == []
    assert not (tmp_path / "out" / study["study_uid"]).exists()
    assert "FAIL" in result.output


def test_missing_input_is_a_usage_error(tmp_path):
    result = segment(str(tmp_path / "nothing-here"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "no such file" in result.output


def test_segment_writes_the_seg_of_a_synthetic_spect_ct_exam_on_its_ct_series(tmp_path):
    """``dicomnode synth --spect-ct`` then ``dicomnode segment``: the same steps as the worker for every
    kind, so the SPECT/CT exam gets its SEG on the CT series with paper 003's two segments."""
    import highdicom as hd

    from tests.test_results_inputs import dciodvfy_errors

    torch.set_num_threads(1)
    synth = CliRunner().invoke(app, ["synth", "--spect-ct", "--studies", "1", "--size", "tiny", "--seed", "21",
                                     str(tmp_path / "exams")])
    assert synth.exit_code == 0, synth.output
    refused = segment(str(tmp_path / "exams"), "--out", str(tmp_path / "refused"))
    assert refused.exit_code == 1 and "not validated on real scans" in refused.output  # as the worker decides
    result = segment(str(tmp_path / "exams"), "--out", str(tmp_path / "out"), "--unvalidated-results")
    assert result.exit_code == 0, result.output
    (study,) = json.loads((tmp_path / "out" / "summary.json").read_text())["studies"]
    assert [a["kind"] for a in study["acquisitions"]] == ["spect-ct"] and study["error"] is None
    assert study["acquisitions"][0]["model"].startswith("spectct-spectct-mtunet-slim ")
    assert {lesion["class"] for lesion in study["lesions"]} <= {"metastatic", "benign"}
    assert "| # | class | volume (mL) |" in (tmp_path / "out" / "summary.md").read_text()
    assert sorted(obj["kind"] for obj in study["objects"]) == ["SC", "SEG", "SR"]
    (seg_file,) = [tmp_path / "out" / obj["file"] for obj in study["objects"] if obj["kind"] == "SEG"]
    seg = pydicom.dcmread(seg_file)
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    assert [d.segment_label for d in segmentation.SegmentSequence] == ["Bone metastasis", "Benign bone lesion"]
    ct = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
          for path in (tmp_path / "exams").rglob("ct/*.dcm")}
    referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert referenced and referenced <= ct  # on the CT series
    assert dciodvfy_errors(seg_file) == []
