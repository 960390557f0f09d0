"""The measurements behind "what limits the scores" (benchmarks/segmentation_limits.py), on hand-made masks."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "segmentation_limits.py"
_spec = importlib.util.spec_from_file_location("segmentation_limits", _PATH)
limits = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = limits  # dataclasses look their module up there
_spec.loader.exec_module(limits)


def test_a_one_pixel_boundary_error_on_a_6_by_6_lesion() -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:11, 5:11] = 1  # 36 px; grown 8-connected: 8 × 8 = 64; shrunk: 4 × 4 = 16
    bound = limits.boundary_bound([truth])
    assert bound["grown"] == pytest.approx(2 * 36 / (36 + 64))
    assert bound["shrunk"] == pytest.approx(2 * 16 / (36 + 16))


def test_each_truth_lesion_gets_its_snr_detection_and_local_dsc() -> None:
    truth = np.zeros((40, 40), np.uint8)
    truth[5:9, 5:9] = 1  # lesion A, 16 px, found exactly
    truth[25:29, 25:29] = 1  # lesion B, 16 px, missed
    prediction = np.zeros_like(truth)
    prediction[5:9, 5:9] = 1
    prediction[5:9, 30:34] = 1  # a false positive far from both
    found = limits.components(truth, prediction, [(6, 6, 12.5), (30, 30, 40.0)], margin=3)
    a, b = found
    assert (a.area_px, a.detected, a.local_dsc, a.snr) == (16, True, 1.0, 12.5)
    assert (b.area_px, b.detected, b.local_dsc) == (16, False, 0.0)
    assert math.isnan(b.snr)  # the recorded position (30, 30) lies outside lesion B


def test_a_prediction_grown_by_one_pixel_scores_its_local_dsc() -> None:
    truth = np.zeros((30, 30), np.uint8)
    truth[10:14, 10:14] = 1
    prediction = np.zeros_like(truth)
    prediction[9:15, 9:15] = 1
    (lesion,) = limits.components(truth, prediction, [], margin=2)
    assert lesion.local_dsc == pytest.approx(2 * 16 / (16 + 36))


def test_false_positives_are_attributed_to_what_lies_under_them() -> None:
    truth = np.zeros((60, 60), np.uint8)
    truth[2:5, 2:5] = 1
    prediction = np.zeros_like(truth)
    prediction[2:5, 2:5] = 1  # a true positive: not a false positive at all
    prediction[20:23, 20:23] = 1  # over a lesion the visibility rule left out
    prediction[40:43, 10:13] = 1  # two pixels from a degenerative joint
    prediction[50:53, 50:53] = 1  # over nothing
    causes = limits.false_positive_causes(
        truth, prediction, hidden=[(21, 21)], mimics=[("degenerative_joint", (41, 15))], margin=3)
    assert sorted(causes) == ["lesion left out of the truth", "mimic: degenerative_joint", "nothing simulated"]


def test_binned_rows_count_lesions_and_pixel_shares() -> None:
    items = [limits.Component(6.0, 10, False, 0.0), limits.Component(7.0, 30, True, 0.5),
             limits.Component(50.0, 60, True, 0.9)]
    rows = limits.binned(items, "snr", (5.0, 10.0, 40.0))
    assert rows == ["| 5–10 | 2 | 40 % | 0.50 | 0.25 |", "| ≥ 40 | 1 | 60 % | 1.00 | 0.90 |"]
