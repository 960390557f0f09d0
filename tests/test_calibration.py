"""Calibrated probabilities (dicomnode.segmentation.calibration, dicomnode.train.calibration): the
Platt fit recovers a known map, the reliability numbers tell a calibrated score from an
overconfident one, the nested fit never sees the fold it scores, the card carries the map, and a
read focus reports the calibrated probability."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dicomnode.segmentation.calibration import Calibration, logit
from dicomnode.segmentation.inference import DEFAULT_CARD
from dicomnode.segmentation.modelcard import ModelCardError, load_card, parse_card
from dicomnode.segmentation.postprocess import OperatingPoint
from dicomnode.train.calibration import FoldCandidates, fit_platt, nested, reliability


def _platt_sample(calibration: Calibration, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident scores (logits spread wide) whose labels follow ``calibration``."""
    rng = np.random.default_rng(seed)
    scores = 1 / (1 + np.exp(-rng.normal(3.0, 4.0, n)))
    labels = rng.random(n) < calibration(scores)
    return scores, labels


def test_the_fit_recovers_a_known_map_and_keeps_the_order() -> None:
    truth = Calibration(slope=0.4, intercept=-1.5)
    scores, labels = _platt_sample(truth, 20000, seed=1)
    fitted = fit_platt(scores, labels)
    assert fitted.slope == pytest.approx(0.4, abs=0.04) and fitted.intercept == pytest.approx(-1.5, abs=0.15)
    ordered = np.sort(scores)
    assert np.all(np.diff(fitted(ordered)) >= 0)  # monotone: no ranking, no AUC changes
    assert fitted.probability(0.977) == pytest.approx(truth.probability(0.977), abs=0.03)  # 0.5, not 0.977


def test_reliability_tells_calibrated_from_overconfident() -> None:
    truth = Calibration(slope=0.4, intercept=-1.5)
    scores, labels = _platt_sample(truth, 20000, seed=2)
    raw, calibrated = reliability(scores, labels), reliability(truth(scores), labels)
    assert calibrated["ece"] < 0.02 < 0.2 < raw["ece"]
    assert calibrated["brier"] < raw["brier"] and calibrated["log_loss"] < raw["log_loss"]
    assert sum(b["count"] for b in raw["bins"]) == raw["count"] == 20000


def test_one_class_cannot_be_calibrated() -> None:
    with pytest.raises(ValueError, match="positive and negative"):
        fit_platt([0.9, 0.99], [True, True])


def test_each_fold_is_calibrated_by_the_others_only() -> None:
    folds = []
    for number in range(1, 4):
        scores, labels = _platt_sample(Calibration(0.5, -1.0), 500, seed=number)
        folds.append(FoldCandidates(number, scores, labels, scores[:20], labels[:20]))
    # a fold whose labels are all flipped: fitting on it would change its own calibrated scores
    poisoned = dataclasses.replace(folds[0], focus_labels=~folds[0].focus_labels)
    _, clean, _ = nested(folds, "focus")
    _, dirty, _ = nested([poisoned, *folds[1:]], "focus")
    n = len(folds[0].focus_peaks)
    assert np.allclose(clean[:n], dirty[:n])  # fold 1 is scored by folds 2 and 3 in both runs
    assert not np.allclose(clean[n:], dirty[n:])  # folds 2 and 3 did learn from fold 1


def test_the_card_carries_the_map_and_refuses_a_bad_one(tmp_path) -> None:
    point = OperatingPoint(peak_threshold=0.977, test_time_flip=True, calibration=Calibration(0.3, -2.0))
    assert OperatingPoint.from_dict(json.loads(json.dumps(point.to_dict()))) == point
    assert "calibration" not in OperatingPoint().to_dict()
    card = load_card(DEFAULT_CARD)
    data = card.to_dict()
    for bad in ({"slope": -1.0, "intercept": 0.0}, {"slope": 1.0}, 0.5, {"slope": 1.0, "intercept": 0.0, "t": 1}):
        with pytest.raises(ModelCardError):
            parse_card({**data, "operating_point": {**data["operating_point"], "calibration": bad}})
    assert logit(1.0) < 14 and logit(0.0) > -14  # saturated maps stay finite


def test_a_crossvalidation_folder_calibrates_the_shipped_card(tmp_path) -> None:
    """``python -m dicomnode.train.calibration`` on a cross-validation folder whose out-of-fold maps
    light every box (hotter on the Abnormal ones) and some bare bone: the foci are labelled by the
    boxes they touch, the card gets the focus map and its reported lesions do not change."""
    import shutil

    from dicomnode.train.calibration import main as calibration_main
    from dicomnode.train.datasets import load_training_data
    from tests.bs80k_fixtures import HotSpot, write_wholebody

    rng = np.random.default_rng(5)
    for k in range(8):
        spots = [HotSpot(40 + 15 * k, 20, 3), HotSpot(200, 30, 3, abnormal=False)] if k % 2 == 0 else \
            [HotSpot(200, 30, 3, abnormal=False)]
        write_wholebody(tmp_path / "wholebody", f"{k + 1}", spots, rows=256, columns=64, seed=k)
    studies = sorted(load_training_data([tmp_path / "wholebody"]).studies, key=lambda s: s.key)
    cv = tmp_path / "cv"
    for number, fold in enumerate((studies[:4], studies[4:]), start=1):
        arrays = {}
        for study in fold:
            for view, boxes in study.boxes.items():
                source = study.scan.views[view].source
                probability = np.zeros((source.rows, source.columns), np.float32)
                for box in boxes:  # a focus on every box: Abnormal ones mostly more confident
                    probability[box.clipped(probability.shape)] = rng.uniform(0.9, 0.999) if box.kind == "Abnormal" \
                        else rng.uniform(0.5, 0.95)
                probability[10:13, 5:8] = rng.uniform(0.4, 0.98)  # and one on nothing
                arrays[f"{study.key}/{view.value}"] = probability
        (cv / f"fold{number}").mkdir(parents=True)
        np.savez_compressed(cv / f"fold{number}" / "oof.npz", **arrays)
    point = {"threshold": 0.3, "peak_threshold": 0.97, "min_area_mm2": 0.0, "test_time_flip": True}
    (cv / "crossval.json").write_text(json.dumps({"folds": [{"fold": 1}, {"fold": 2}], "pooled_operating_point": point}))
    card = tmp_path / "card" / "default.json"
    shutil.copytree(DEFAULT_CARD.parent, card.parent, ignore=shutil.ignore_patterns("spect*", "anatomy*", "sim-*"))
    before = load_card(card)
    calibration_main(["--cv", str(cv), "--data", str(tmp_path / "wholebody"), "--card", str(card)])
    report = json.loads((cv / "calibration.json").read_text())
    assert report["study"]["raw"]["count"] == 8 and report["study"]["raw"]["positives"] == 4
    # foci: one per box per view and one on nothing per view; only the Abnormal boxes' are positive
    assert report["focus"]["raw"]["positives"] == 4 * 2 and report["focus"]["raw"]["count"] == (4 * 3 + 4 * 2) * 2
    assert report["focus"]["calibrated_out_of_fold"]["ece"] < report["focus"]["raw"]["ece"]
    after = load_card(card)
    assert after.operating_point.calibration == Calibration(**report["focus"]["fitted_on_all_folds"])
    assert dataclasses.replace(after.operating_point, calibration=None) == \
        dataclasses.replace(before.operating_point, calibration=None)
    assert after.sha256 == before.sha256 and after.metrics["calibration"]["study_map"] == report["study"]["fitted_on_all_folds"]
    assert (cv / "calibration.png").stat().st_size > 10_000 and "ECE" in (cv / "calibration.md").read_text()
