"""Tests of paper 003's training and evaluation (dicomnode/train/spectct.py), the segmenter of SPECT/CT and
SPECT-only acquisitions (dicomnode/segmentation/spectct.py) and the shipped SPECT/CT model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicomnode.synth.spectct import write_exams
from dicomnode.segmentation.networks import build
from dicomnode.segmentation.modelcard import SPECTCT_CLASSES, ModelCardError, build_network, load_card, save_model
from dicomnode.segmentation.spectct import VolumeSegmenter, predict_volume, stack_inputs
from dicomnode.train.config import load_preset
from dicomnode.train.spectct import Exam, load_exam, score, train_model, transfer_weights

torch.set_num_threads(1)
PRESETS = Path(__file__).resolve().parents[1] / "config" / "train"
WEIGHTS = Path(__file__).resolve().parents[1] / "dicomnode" / "segmentation" / "weights" / "spectct-spectct-mtunet-slim.json"
SPECT_ONLY = WEIGHTS.with_name("spect-only-mtunet-slim.json")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("spectct-cohort")
    write_exams(out, exams=4, seed=11, size="tiny")
    return out


def test_presets_name_the_three_inputs_of_paper_003():
    channels = {load_preset(PRESETS / f"spectct-{v}.toml").channels for v in ("spect", "ct", "spectct")}
    assert channels == {("spect",), ("ct",), ("spect", "ct")}


def test_a_preset_with_an_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntask = "spectct-classes"\n[model]\nchannels = ["ct"]\nlayers = 3\n')
    with pytest.raises(ValueError, match="layers"):
        load_preset(bad)


def test_an_exam_is_read_from_its_dicom_files_onto_the_ct_grid(cohort):
    exam = load_exam(cohort / "exam_0001")
    truth = np.load(cohort / "exam_0001" / "truth.npz")["labels_ct"]
    assert exam.hu.shape == exam.spect.shape == exam.labels.shape == truth.shape
    np.testing.assert_array_equal(exam.labels, truth)
    body = exam.hu > -500
    assert exam.spect[body].mean() > 5 * max(exam.spect[~body].mean(), 1e-3)  # SPECT lands inside the body
    coarse = load_exam(cohort / "exam_0001", in_plane_mm=2 * 500 / 64)
    assert coarse.hu.shape == (exam.hu.shape[0], 32, 32)


def test_transfer_copies_every_weight_and_the_spect_channel_of_the_first_convolution():
    torch.manual_seed(0)
    source = build("mtunet", in_channels=1, width=4)
    target = build("mtunet", in_channels=2, width=4)
    before = target.state_dict()["stem.0.conv.0.0.weight"].clone()
    partial = transfer_weights(source.state_dict(), target)
    assert partial == ["stem.0.conv.0.0.weight"]
    got, want = target.state_dict(), source.state_dict()
    torch.testing.assert_close(got["stem.0.conv.0.0.weight"][:, :1], want["stem.0.conv.0.0.weight"])
    torch.testing.assert_close(got["stem.0.conv.0.0.weight"][:, 1:], before[:, 1:])
    torch.testing.assert_close(got["head.weight"], want["head.weight"])
    with pytest.raises(ValueError, match="lacks"):
        transfer_weights({"nonsense": torch.zeros(1)}, target)


def _exam(labels: np.ndarray) -> Exam:
    hu = np.zeros(labels.shape, np.float32)
    return Exam("P", "e", hu, hu.copy(), labels)


def test_scores_per_class_and_folds_without_a_class_say_nothing_about_it():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 2:4, 2:4] = 1
    perfect = np.stack([(labels == k).astype(np.float32) for k in range(3)])
    result = score([_exam(labels)], [perfect])
    assert result["metastatic"]["dsc"] == result["metastatic"]["auc"] == result["lesion"]["iou"] == 1.0
    assert np.isnan(result["benign"]["dsc"]) and np.isnan(result["benign"]["sensitivity"])
    assert result["benign"]["specificity"] == 1.0
    missed = np.stack([np.ones(labels.shape, np.float32), np.zeros(labels.shape), np.zeros(labels.shape)])
    result = score([_exam(labels)], [missed])
    assert result["metastatic"]["dsc"] == 0.0 and result["metastatic"]["sensitivity"] == 0.0


@pytest.mark.slow
def test_training_drives_the_loss_down_on_tiny_exams(cohort):
    exams = [load_exam(cohort / f"exam_{i:04d}") for i in (1, 2)]
    preset = dataclasses.replace(load_preset(PRESETS / "spectct-spectct.toml"), width=4, epochs=3, batch_size=4,
                                 lr=3e-3, lesion_slice_weight=20.0)
    trained = train_model(preset, exams, torch.device("cpu"))
    assert trained.info["loss_last_epoch"] < trained.info["loss_first_epoch"]
    prob = predict_volume(trained.net, stack_inputs(preset.channels, exams[0].spect, exams[0].hu))
    assert prob.shape == (3, *exams[0].hu.shape)
    np.testing.assert_allclose(prob.sum(axis=0), 1.0, atol=1e-4)


def test_shipped_spectct_weights_load_and_segment_a_volume(cohort):
    card = load_card(WEIGHTS)
    net = build_network(card)
    assert card.task == SPECTCT_CLASSES and card.weights == "spectct-spectct-mtunet-slim.safetensors"
    assert card.channels == ("spect", "ct") and card.classes == ("background", "metastatic", "benign")
    assert "H200" in card.training["device"] and card.training["transfer_from"] == "spectct-spect"
    exam = load_exam(cohort / "exam_0001")
    prob = predict_volume(net, stack_inputs(card.channels, exam.spect, exam.hu)[:, :8])
    assert prob.shape == (3, 8, *exam.hu.shape[1:]) and np.isfinite(prob).all()


def test_a_models_inputs_depend_on_its_own_channels_only(cohort):
    exam = load_exam(cohort / "exam_0001")
    alone = stack_inputs(("spect",), exam.spect, None)
    np.testing.assert_array_equal(alone, stack_inputs(("spect",), exam.spect, exam.hu))  # the CT is not read
    fused = stack_inputs(("spect", "ct"), exam.spect, exam.hu)
    # SPECT alone outlines the body nearly as the CT does: the normalised counts agree within 15 %
    body = exam.hu > -500
    ratio = np.median(alone[0][body]) / np.median(fused[0][body])
    assert 0.85 < ratio < 1.15, ratio
    with pytest.raises(ValueError, match="no CT volume"):
        stack_inputs(("spect", "ct"), exam.spect, None)


def _cards(tmp_path: Path, in_plane_mm: float | None) -> tuple[Path, Path]:
    """A SPECT-only and a SPECT/CT card of untrained slim networks (the shapes are what is tested)."""
    paths = []
    for name, channels in (("spect-only", ("spect",)), ("fused", ("spect", "ct"))):
        torch.manual_seed(0)
        net = build("mtunet", in_channels=len(channels), width=4)
        save_model(net, tmp_path / name, name=name, version="test", network="mtunet", task=SPECTCT_CLASSES,
                   channels=channels, classes=("background", "metastatic", "benign"),
                   in_plane_mm=in_plane_mm if channels == ("spect",) else None)
        paths.append(tmp_path / f"{name}.json")
    return paths[0], paths[1]


def test_the_segmenter_takes_the_ct_grid_with_a_ct_and_the_nm_grid_without(cohort, tmp_path):
    folder = cohort / "exam_0001"
    cts = [pydicom.dcmread(p) for p in sorted((folder / "ct").glob("*.dcm"))]
    nm = pydicom.dcmread(folder / "spect.dcm")
    spect_only, fused = _cards(tmp_path, in_plane_mm=2 * float(nm.PixelSpacing[0]))
    alone = VolumeSegmenter.from_card(spect_only).segment([], nm)
    assert alone.probabilities.shape == (3, int(nm.NumberOfFrames), nm.Rows, nm.Columns)
    np.testing.assert_allclose(alone.probabilities.sum(axis=0), 1.0, atol=1e-3)  # back on the NM grid
    assert alone.algorithm.name == "spect-only"
    with_ct = VolumeSegmenter.from_card(fused).segment(cts, nm)
    assert with_ct.probabilities.shape == (3, len(cts), cts[0].Rows, cts[0].Columns)
    assert with_ct.algorithm.name == "fused"
    assert alone.classes == with_ct.classes == ("background", "metastatic", "benign")
    with pytest.raises(ModelCardError, match="needs a CT channel"):
        VolumeSegmenter.from_card(fused).segment([], nm)


def test_shipped_spect_only_weights_segment_an_nm_volume_on_its_own_grid(cohort):
    card = load_card(SPECT_ONLY)
    assert card.task == SPECTCT_CLASSES and card.channels == ("spect",) and card.in_plane_mm == 4.0 and card.training["device"].startswith("cpu")
    assert card.metrics["folds"] == 5 and card.training["transfer_from"] is None
    nm = pydicom.dcmread(cohort / "exam_0001" / "spect.dcm")
    result = VolumeSegmenter(card).segment([], nm)
    assert result.probabilities.shape == (3, int(nm.NumberOfFrames), nm.Rows, nm.Columns)
    assert np.isfinite(result.probabilities).all() and result.algorithm.name == "spect-only-mtunet-slim"


@pytest.mark.slow
def test_the_study_writes_the_table_and_a_final_model(cohort, tmp_path):
    from typer.testing import CliRunner

    from dicomnode.cli import app

    presets = []
    for name in ("spectct-spect", "spectct-spectct"):  # each preset small: batch 2, one second per run
        text = (PRESETS / f"{name}.toml").read_text()
        text = text.replace("batch_size = 16", "batch_size = 2").replace("max_seconds = 0 ", "max_seconds = 1 ")
        presets.append(tmp_path / f"{name}.toml")
        presets[-1].write_text(text)
    run = CliRunner().invoke(app, ["train", "--data", str(cohort), "--out", str(tmp_path), "--folds", "2",
                                   "--epochs", "1", "--device", "cpu", "--final", "spectct-spectct",
                                   "--config", str(presets[0]), "--config", str(presets[1]),
                                   "--transfer", "spectct-spectct:spectct-spect"])
    assert run.exit_code == 0, run.output
    assert "spectct-spectct (transfer from spectct-spect) | benign" in run.output
    table = (tmp_path / "crossval.md").read_text()
    assert "spectct-spectct (transfer from spectct-spect) | benign" in table
    result = json.loads((tmp_path / "crossval.json").read_text())
    assert {len(v["folds"]) for v in result["variants"].values()} == {2}
    card = load_card(tmp_path / result["final"]["card"])
    assert card.task == SPECTCT_CLASSES and card.weights.endswith(".safetensors")
    assert card.training["transfer_from"] == "spectct-spect" and build_network(card).in_channels == 2


def test_spect_only_lesions_are_masked_on_the_reconstruction_edges_and_outside_the_body():
    """A real SPECT-only result had blobs on the first and last slices and outside the patient: those
    voxels become background with certainty; a lesion inside the body, away from the edges, is kept."""
    from dicomnode.segmentation.spectct import EDGE_SLICES, mask_edges_and_outside

    counts = np.zeros((12, 16, 16), np.float32)
    counts[:, 3:13, 3:13] = 10.0  # the body
    counts[:, 7:9, 7:9] = 0.0  # a cold hole inside it stays inside (holes filled)
    probabilities = np.zeros((3, 12, 16, 16), np.float32)
    probabilities[1] = 0.9  # "metastatic" everywhere
    probabilities[0] = 0.1
    masked = mask_edges_and_outside(probabilities, counts)
    lesion = masked.argmax(0) == 1
    assert not lesion[:EDGE_SLICES].any() and not lesion[-EDGE_SLICES:].any()
    assert not lesion[:, :3].any() and not lesion[:, :, 13:].any()
    assert lesion[EDGE_SLICES:-EDGE_SLICES, 3:13, 3:13].all()
    np.testing.assert_allclose(masked.sum(0), 1.0)
