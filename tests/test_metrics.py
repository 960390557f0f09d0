"""dicomnode.segmentation.metrics against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.segmentation.metrics import (
    LesionCounts,
    PixelCounts,
    lesion_scores,
    pixel_counts,
    summarise,
    summarise_lesions,
)


def mask(shape, *boxes):
    out = np.zeros(shape, np.uint8)
    for r0, c0, r1, c1 in boxes:
        out[r0:r1, c0:c1] = 1
    return out


def test_pixel_scores_of_overlapping_squares():
    # truth 4×4 = 16 px, prediction 4×4 shifted by 2 columns: overlap 4×2 = 8
    truth = mask((10, 10), (0, 0, 4, 4))
    prediction = mask((10, 10), (0, 2, 4, 6))
    counts = pixel_counts(truth, prediction)
    assert counts == PixelCounts(tp=8, fp=8, fn=8, tn=76)
    assert counts.iou == 8 / 24
    assert counts.specificity == 76 / 84 and counts.accuracy == 84 / 100
    assert counts.dsc == pytest.approx(2 * 8 / (16 + 16))
    assert counts.precision == pytest.approx(0.5) and counts.recall == pytest.approx(0.5)


def test_precision_and_recall_differ_when_the_prediction_is_inside_the_truth():
    truth = mask((10, 10), (0, 0, 5, 4))  # 20 px
    prediction = mask((10, 10), (1, 1, 3, 3))  # 4 px, all inside
    counts = pixel_counts(truth, prediction)
    assert (counts.precision, counts.recall) == (1.0, 0.2)
    assert counts.dsc == pytest.approx(8 / 24)


@pytest.mark.parametrize(
    "truth_box, prediction_box, expected",
    [
        (None, None, (1.0, 1.0, 1.0)),  # nothing to find, nothing found
        (None, (0, 0, 2, 2), (0.0, 0.0, 0.0)),  # a false alarm on a clean image
        ((0, 0, 2, 2), None, (0.0, 0.0, 0.0)),  # a miss
    ],
)
def test_empty_mask_conventions(truth_box, prediction_box, expected):
    truth = mask((6, 6), *([truth_box] if truth_box else []))
    prediction = mask((6, 6), *([prediction_box] if prediction_box else []))
    counts = pixel_counts(truth, prediction)
    assert (counts.dsc, counts.precision, counts.recall) == expected


def test_mean_std_over_images_and_pooled():
    # image 1: DSC 0.5 (tp 8, fp 8, fn 8); image 2: perfect 2-px lesion (tp 2); image 3: both empty
    per_image = [PixelCounts(8, 8, 8), PixelCounts(2, 0, 0), PixelCounts(0, 0, 0)]
    summary = summarise(per_image)
    assert summary["dsc"].mean == pytest.approx((0.5 + 1 + 1) / 3)
    assert summary["dsc"].std == pytest.approx(np.std([0.5, 1, 1], ddof=1))
    assert summary["dsc"].pooled == pytest.approx(2 * 10 / (2 * 10 + 8 + 8))
    assert summary["precision"].pooled == pytest.approx(10 / 18)
    assert summary["recall"].n == 3
    assert "±" in str(summary["dsc"])


def test_a_single_image_has_zero_spread_and_nothing_is_refused():
    assert summarise([PixelCounts(1, 1, 0)])["precision"].std == 0.0
    with pytest.raises(ValueError, match="no images"):
        summarise([])


def test_lesion_detection_and_false_positives():
    truth = mask((20, 20), (0, 0, 3, 3), (10, 10, 12, 12), (15, 0, 17, 2))
    prediction = mask(
        (20, 20),
        (2, 2, 5, 5),  # touches truth lesion 1 in one pixel: detected
        (10, 13, 12, 15),  # next to lesion 2 but not on it: a false positive, lesion 2 missed
        (18, 18, 20, 20),  # far away: a false positive
        (15, 0, 16, 1),  # inside lesion 3: detected
    )
    counts = lesion_scores(truth, prediction)
    assert counts == LesionCounts(truth=3, detected=2, predicted=4, false_positives=2)
    assert counts.sensitivity == pytest.approx(2 / 3)


def test_diagonal_pixels_are_one_lesion():
    truth = np.eye(4, dtype=np.uint8)
    assert lesion_scores(truth, truth) == LesionCounts(1, 1, 1, 0)


def test_one_predicted_component_can_detect_two_lesions():
    truth = mask((10, 10), (0, 0, 2, 2), (0, 4, 2, 6))
    prediction = mask((10, 10), (0, 1, 1, 5))
    assert lesion_scores(truth, prediction) == LesionCounts(2, 2, 1, 0)


def test_lesion_summary_pools_sensitivity_and_counts_false_positives_per_study():
    studies = [LesionCounts(3, 2, 4, 2), LesionCounts(1, 1, 1, 0), LesionCounts(0, 0, 1, 1)]
    summary = summarise_lesions(studies)
    assert summary.sensitivity == pytest.approx(3 / 4)
    assert summary.false_positives_per_study == pytest.approx(1.0)
    assert summary.false_positives_std == pytest.approx(1.0)
    assert summary.totals == LesionCounts(4, 3, 6, 3)
    assert LesionCounts(0, 0, 2, 2).sensitivity == 1.0  # no lesion to miss


def test_masks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_counts(np.zeros((4, 4)), np.zeros((4, 5)))
