"""Evaluation: numbers on a hand-made case, and ``dicomnode evaluate`` end to end on real DICOM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.modelcard import load_card
from dicomnode.segmentation.scan import BoneScan, View, ViewImage, ViewRule, ViewSource
from tests.train_studies import write_labelled_studies
from dicomnode.train.datasets import load_studies
from dicomnode.train.study import LabelledStudy, TruthLesion
from dicomnode.train.evaluate import bootstrap, breakdown, over_runs, score_study, size_class, summary

torch.set_num_threads(1)
ROWS, COLUMNS = 40, 20
THRESHOLD_CARD = Path(__file__).resolve().parents[1] / "dicomnode" / "segmentation" / "weights" / "threshold.json"


def _view(view: View) -> ViewImage:
    source = ViewSource("1.2.3.1", "1.2.840.10008.5.1.4.1.1.20", "1.2.3", 1 if view is View.ANTERIOR else 2,
                        ROWS, COLUMNS, view is View.POSTERIOR, False, ViewRule.VIEW_CODE)
    return ViewImage(view, np.ones((ROWS, COLUMNS), np.float32), (2.0, 2.0), source)


def _hand_made() -> tuple[LabelledStudy, dict[View, np.ndarray]]:
    """Anterior: a 4×4 rib lesion found by a 4×2 prediction, a 2×2 spine lesion missed, one 3×3 FP.
    Posterior (stored mirrored): one 3×3 femur lesion fully found, nothing else."""
    truth_a = np.zeros((ROWS, COLUMNS), np.uint8)
    truth_a[5:9, 2:6] = 1  # 16 px, rib
    truth_a[20:22, 10:12] = 1  # 4 px, spine
    pred_a = np.zeros_like(truth_a)
    pred_a[5:9, 2:4] = 1  # 8 px, all inside the rib lesion
    pred_a[30:33, 15:18] = 1  # 9 px false positive
    truth_p = np.zeros_like(truth_a)
    truth_p[10:13, 3:6] = 1  # stored columns 3..5 = canonical columns 14..16
    pred_p = truth_p.copy()
    lesions = (
        TruthLesion(View.ANTERIOR, "ribs", 12.0, (6.5, 3.5)),
        TruthLesion(View.ANTERIOR, "spine", 25.0, (20.5, 10.5)),
        TruthLesion(View.POSTERIOR, "femur", 8.0, (11.0, COLUMNS - 1 - 4.0)),  # canonical position
    )
    scan = BoneScan("1.2.3", _view(View.ANTERIOR), _view(View.POSTERIOR))
    study = LabelledStudy("hand", "P1", scan, {View.ANTERIOR: truth_a, View.POSTERIOR: truth_p}, "synth", lesions)
    return study, {View.ANTERIOR: pred_a, View.POSTERIOR: pred_p}


def test_numbers_on_a_hand_made_case() -> None:
    study, masks = _hand_made()
    outcome = score_study(study, masks, milliseconds=10.0)
    anterior = outcome.views[View.ANTERIOR]
    # anterior: TP 8, FP 9, FN 8 + 4 = 12 -> DSC 16 / 37, precision 8 / 17, recall 8 / 20
    assert (anterior.pixels.tp, anterior.pixels.fp, anterior.pixels.fn) == (8, 9, 12)
    assert anterior.pixels.dsc == pytest.approx(16 / 37)
    assert (anterior.lesions.truth, anterior.lesions.detected, anterior.lesions.false_positives) == (2, 1, 1)
    assert outcome.views[View.POSTERIOR].pixels.dsc == 1.0

    result = summary([outcome])
    images = result["pixel_lesion_images"]
    assert images["dsc"]["mean"] == pytest.approx((16 / 37 + 1) / 2)
    assert images["precision"]["mean"] == pytest.approx((8 / 17 + 1) / 2)
    assert images["recall"]["mean"] == pytest.approx((8 / 20 + 1) / 2)
    assert images["dsc"]["pooled"] == pytest.approx(2 * 17 / (2 * 17 + 9 + 12))
    assert result["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert result["false_positives_per_study"] == 1
    assert result["ms_per_study"] == 10.0

    table = breakdown([outcome])
    assert table["site"] == {
        "femur": {"lesions": 1, "detected": 1, "sensitivity": 1.0},
        "ribs": {"lesions": 1, "detected": 1, "sensitivity": 1.0},
        "spine": {"lesions": 1, "detected": 0, "sensitivity": 0.0},
    }
    assert table["size"]["20–30 mm"] == {"lesions": 1, "detected": 0, "sensitivity": 0.0}
    assert table["size"]["0–10 mm"]["detected"] == 1


def test_unrecorded_lesions_get_their_equivalent_diameter() -> None:
    study, masks = _hand_made()
    study = LabelledStudy(study.key, study.patient_id, study.scan, study.labels, "SEG")
    sizes = sorted(lesion.size_mm for lesion in score_study(study, masks).lesions)
    # 2×2 px at 2 mm = 16 mm² -> 2·sqrt(16/π); 3×3 -> 36 mm²; 4×4 -> 64 mm²
    assert sizes == pytest.approx([2 * np.sqrt(a / np.pi) for a in (16, 36, 64)])
    assert {lesion.site for lesion in score_study(study, masks).lesions} == {"unknown"}
    assert size_class(9.99) == "0–10 mm" and size_class(30.0) == "≥30 mm"


def test_bootstrap_resamples_patients_and_runs_summarise() -> None:
    study, masks = _hand_made()
    outcomes = [score_study(study, masks)]
    second = LabelledStudy("other", "P2", study.scan, study.labels, "synth")
    outcomes.append(score_study(second, {v: m.copy() for v, m in study.labels.items()}))  # perfect
    resamples = bootstrap(outcomes, runs=20, seed=42)
    assert len(resamples) == 20 and all(len(r) == 2 for r in resamples)
    assert bootstrap(outcomes, runs=20, seed=42) == resamples
    table = over_runs([summary(r) for r in resamples])
    dscs = [summary(r)["pixel_lesion_images"]["dsc"]["mean"] for r in resamples]
    assert table["dsc"]["mean"] == pytest.approx(np.mean(dscs))
    assert table["dsc"]["std"] == pytest.approx(np.std(dscs, ddof=1))
    assert table["dsc"]["std"] > 0  # two different patients: resamples differ


def test_missing_prediction_is_an_error() -> None:
    study, masks = _hand_made()
    del masks[View.POSTERIOR]
    with pytest.raises(ValueError, match="no prediction"):
        score_study(study, masks)


def test_cli_evaluate_writes_report_overlays_and_json(tmp_path: Path) -> None:
    data = tmp_path / "studies"
    write_labelled_studies(data, 4, seed=5)
    out = tmp_path / "report"
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--weights", str(THRESHOLD_CARD), "--data", str(data),
                                 "--runs", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert numbers["runs_kind"] == "bootstrap" and len(numbers["runs"]) == 3
    assert numbers["summary"]["studies"] == 4 and len(numbers["studies"]) == 4
    assert 0 <= numbers["summary"]["lesion_sensitivity"] <= 1
    # the headline is the full set's (a bootstrap mean is the spread's centre, not the estimate)
    assert numbers["headline"]["lesion_sensitivity"] == numbers["summary"]["lesion_sensitivity"]
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "By skeletal site" in report
    assert f"| all 4 studies, first model | {numbers['headline']['dsc']:.3f} |" in report
    for name in ("best_1.png", "worst_1.png"):
        assert (out / name).stat().st_size > 1000 and f"]({name})" in report

    bad = runner.invoke(app, ["evaluate", "--weights", str(tmp_path / "nope.json"), "--data", str(data)])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_evaluate_the_test_subset_of_a_trained_model(tmp_path: Path) -> None:
    from tests.test_train_loop import tiny
    from dicomnode.train.loop import run_training

    data = tmp_path / "studies"
    write_labelled_studies(data, 8, seed=6)
    trained = run_training(tiny(epochs=1), data, tmp_path / "run", progress=False)
    test_patients = json.loads((tmp_path / "run" / "split.json").read_text())["test"]
    result = CliRunner().invoke(app, ["evaluate", "--weights", str(trained.weights), "--weights", str(trained.card),
                                      "--data", str(data), "--subset", "test", "--out", str(tmp_path / "r"), "--json",
                                      "--record-in-card", "synthetic test subset"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert numbers["runs_kind"] == "models" and len(numbers["runs"]) == 2
    expected = sorted(s.key for s in load_studies(data) if s.patient_id in test_patients)
    assert len(expected) == 1 and sorted(s["study"] for s in numbers["studies"]) == expected
    # the same model twice: identical runs, zero spread
    assert numbers["across_runs"]["dsc"]["std"] == 0.0
    # the headline went into the card, which still loads (weights and SHA-256 untouched)
    recorded = load_card(trained.card).metrics["synthetic test subset"]
    assert recorded["studies"] == 1 and recorded["subset"] == "test"
    assert recorded["dsc"]["mean"] == pytest.approx(numbers["across_runs"]["dsc"]["mean"], abs=1e-4)
    assert Segmenter.from_weights(trained.weights) is not None
