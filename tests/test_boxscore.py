"""Box-based scoring, the ROC numbers, the operating point and how a card applies it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.modelcard import ModelCardError, load_card, save_model, update_card
from dicomnode.segmentation.networks import build
from dicomnode.segmentation.postprocess import OperatingPoint, lesion_mask
from dicomnode.segmentation.preprocess import Preprocessing
from dicomnode.segmentation.scan import View
from tests.bs80k_fixtures import HotSpot, write_wholebody
from dicomnode.train.boxscore import (
    StudyCandidates,
    choose_operating_point,
    roc_auc,
    sensitivity_specificity,
    threshold_for_sensitivity,
    view_candidates,
    wholebody_scores,
)
from dicomnode.train.datasets import load_studies
from dicomnode.train.weak import ABNORMAL, NORMAL, Box


def test_auc_is_the_probability_a_positive_outranks_a_negative() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    pairs = [(p, n) for p, n in itertools.product(scores[labels], scores[~labels])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert np.isnan(roc_auc([1, 2], [True, True]))
    assert sensitivity_specificity([0.9, 0.2, 0.8, 0.1], [True, True, False, False], 0.5) == (0.5, 0.5)
    threshold = threshold_for_sensitivity([0.9, 0.8, 0.3, 0.1, 0.7], [True, True, True, True, False], 0.75)
    assert threshold == 0.3 and sensitivity_specificity([0.9, 0.8, 0.3, 0.1], [True] * 4, threshold)[0] == 0.75


def _map(shape: tuple[int, int], blobs: list[tuple[int, int, float]]) -> np.ndarray:
    probability = np.zeros(shape, np.float32)
    for row, column, peak in blobs:
        probability[row - 1 : row + 2, column - 1 : column + 2] = peak * 0.8
        probability[row, column] = peak
    return probability


def test_a_lesion_touching_a_box_finds_it_and_the_rest_are_false_positives() -> None:
    boxes = [Box(ABNORMAL, 8, 8, 14, 14), Box(ABNORMAL, 30, 30, 36, 36), Box(NORMAL, 50, 8, 56, 14)]
    # one lesion grazing the first box, one on the Normal box, one on nothing
    probability = _map((64, 48), [(7, 7, 0.9), (53, 11, 0.8), (40, 10, 0.6)])
    view = view_candidates(View.ANTERIOR, probability, boxes, 0.5, 1.0)
    study = StudyCandidates("s", "p", True, (view,))
    scores = wholebody_scores([study], OperatingPoint(), 0.5)
    assert scores["lesion_sensitivity"] == 0.5 and scores["false_positives_per_study"] == 2
    assert scores["normal_marked_fraction"] == 1.0
    stricter = wholebody_scores([study], OperatingPoint(peak_threshold=0.85), 0.5)
    assert stricter["lesion_sensitivity"] == 0.5 and stricter["false_positives_per_study"] == 0


def test_the_operating_point_is_the_most_sensitive_within_the_false_positive_budget() -> None:
    boxes = (Box(ABNORMAL, 8, 8, 14, 14), Box(ABNORMAL, 30, 30, 36, 36))
    studies = []
    for k, (hits, false) in enumerate([((0.95, 0.7), (0.8, 0.6)), ((0.9, 0.65), (0.75,)), ((0.99, 0.2), ())]):
        blobs = [(11, 11, hits[0]), (33, 33, hits[1])] + [(50, 10 + 10 * i, p) for i, p in enumerate(false)]
        view = view_candidates(View.ANTERIOR, _map((64, 48), blobs), boxes, 0.1, 1.0)
        studies.append(StudyCandidates(f"s{k}", f"p{k}", True, (view,)))
    # peaks: hits 0.95 0.7 | 0.9 0.65 | 0.99 0.2; false positives 0.8 0.6 | 0.75 over 3 studies
    threshold, point, scores = choose_operating_point({(0.1, 0.0): studies}, max_false_positives=1.0)
    assert point.peak_threshold == pytest.approx(0.2) and scores["lesion_sensitivity"] == 1.0  # 3 FP / 3 studies
    threshold, point, scores = choose_operating_point({(0.1, 0.0): studies}, max_false_positives=0.5)
    assert point.peak_threshold == pytest.approx(0.8)
    assert scores["false_positives_per_study"] == pytest.approx(1 / 3) and scores["lesion_sensitivity"] == 0.5
    lower = wholebody_scores(studies, OperatingPoint(peak_threshold=0.75), threshold)
    assert lower["false_positives_per_study"] > 0.5  # the next cheaper point breaks the budget
    none = choose_operating_point({(0.1, 0.0): studies}, max_false_positives=0.0)[2]
    assert none["false_positives_per_study"] == 0 and none["lesion_sensitivity"] == 0.5


def test_the_mean_study_sensitivity_is_not_dominated_by_a_study_with_many_lesions() -> None:
    many = [Box(ABNORMAL, 4 + 6 * k, 4, 8 + 6 * k, 8) for k in range(8)]
    found_all = view_candidates(View.ANTERIOR, _map((64, 48), [(6 + 6 * k, 6, 0.9) for k in range(8)]), many, 0.5, 1.0)
    one = (Box(ABNORMAL, 30, 30, 36, 36),)
    found_none = view_candidates(View.ANTERIOR, np.zeros((64, 48), np.float32), one, 0.5, 1.0)
    normal = view_candidates(View.ANTERIOR, np.zeros((64, 48), np.float32), (), 0.5, 1.0)
    studies = [StudyCandidates("a", "pa", True, (found_all,)), StudyCandidates("b", "pb", True, (found_none,)),
               StudyCandidates("c", "pc", False, (normal,))]
    scores = wholebody_scores(studies, OperatingPoint(), 0.5)
    assert scores["lesion_sensitivity"] == pytest.approx(8 / 9)
    assert scores["mean_study_sensitivity"] == pytest.approx(0.5)  # (1 + 0) / 2; the normal study has none


def test_lesion_mask_keeps_confident_large_components() -> None:
    probability = _map((40, 40), [(10, 10, 0.9), (30, 30, 0.6)])
    assert lesion_mask(probability, 0.4, OperatingPoint(), 1.0).sum() == 18
    confident = lesion_mask(probability, 0.4, OperatingPoint(peak_threshold=0.8), 1.0)
    assert confident.sum() == 9 and confident[10, 10] == 1 and confident[30, 30] == 0
    assert lesion_mask(probability, 0.4, OperatingPoint(min_area_mm2=10.0), 1.0).sum() == 0
    assert lesion_mask(probability, 0.4, OperatingPoint(min_area_mm2=10.0), 2.0).sum() == 18
    with pytest.raises(ValueError):
        OperatingPoint(peak_threshold=1.5)


def test_the_card_carries_the_operating_point_and_the_segmenter_applies_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build("unet", in_channels=1, width=4)
    path = save_model(net, tmp_path / "m", name="n", version="1", network="unet",
                      preprocessing=Preprocessing(window=None, aggregation="none")).path
    sha = load_card(path).sha256
    update_card(path, threshold=0.4, operating_point=OperatingPoint(0.6, 12.0, True))
    card = load_card(path)
    assert card.operating_point == OperatingPoint(0.6, 12.0, True) and card.threshold == 0.4 and card.sha256 == sha
    raw = json.loads(path.read_text())
    raw["operating_point"]["surprise"] = 1
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelCardError, match="surprise"):
        load_card(path)


def test_test_time_flip_averages_the_mirrored_prediction(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = build("unet", in_channels=1, width=4)
    prep = Preprocessing(window=None, aggregation="none")
    path = save_model(net, tmp_path / "m", name="n", version="1", network="unet", preprocessing=prep).path
    # 30 columns at 2.3976 mm are 32 model columns at 2.26 mm: no padding at the side, so a mirrored
    # input is exactly the mirror of the padded one
    write_wholebody(tmp_path / "wb", "1", [HotSpot(60, 10, 4)], rows=128, columns=30)
    scan = load_studies(tmp_path / "wb")[0].scan
    plain = Segmenter.from_weights(path).probabilities([scan])[0]
    update_card(path, operating_point=OperatingPoint(test_time_flip=True))
    flipped = Segmenter.from_weights(path).probabilities([scan])[0]
    # mirror the study: the flipped-average prediction of the mirror is the mirror of the prediction
    from dataclasses import replace

    mirror = replace(scan, anterior=replace(scan.anterior, counts=np.ascontiguousarray(scan.anterior.counts[:, ::-1])),
                     posterior=replace(scan.posterior, counts=np.ascontiguousarray(scan.posterior.counts[:, ::-1])))
    mirrored = Segmenter.from_weights(path).probabilities([mirror])[0]
    assert np.abs(plain[View.ANTERIOR] - flipped[View.ANTERIOR]).max() > 1e-6
    assert np.allclose(mirrored[View.ANTERIOR][:, ::-1], flipped[View.ANTERIOR], atol=1e-5)
