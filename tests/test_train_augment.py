"""Augmentation: thinning stays Poisson, geometry keeps image and label together."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.segmentation.scan import BoneScan, View, ViewImage, ViewRule, ViewSource
from dicomnode.train.augment import Augmenter, flip_lr, gain_gamma, small_affine, thin_counts, thin_scan
from dicomnode.train.config import AugmentSection


def _view(view: View, counts: np.ndarray) -> ViewImage:
    source = ViewSource("1.2.3", "1.2.840.10008.5.1.4.1.1.20", "1.2", 1 if view is View.ANTERIOR else 2,
                        counts.shape[0], counts.shape[1], view is View.POSTERIOR, False, ViewRule.VIEW_CODE)
    return ViewImage(view, counts, (2.26, 2.26), source)


def test_binomial_thinning_is_poisson_at_the_lower_level() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(40.0, size=200_000).astype(np.float32)
    thinned = thin_counts(counts, 0.25, rng)
    # Poisson(40) thinned by 0.25 is Poisson(10): mean = variance = 10
    assert thinned.mean() == pytest.approx(10.0, rel=0.02)
    assert thinned.var() == pytest.approx(10.0, rel=0.03)
    assert np.all(thinned <= counts)
    with pytest.raises(ValueError, match="non-negative"):
        thin_counts(np.array([-1.0], np.float32), 0.5, rng)
    with pytest.raises(ValueError, match="keep"):
        thin_counts(counts, 0.0, rng)


def test_thin_scan_thins_both_views_alike() -> None:
    rng = np.random.default_rng(1)
    counts = np.full((64, 32), 100.0, np.float32)
    scan = BoneScan("1.2.3.4", _view(View.ANTERIOR, counts), _view(View.POSTERIOR, counts * 2))
    thinned = thin_scan(scan, 0.5, rng)
    assert thinned.anterior.counts.mean() == pytest.approx(50, rel=0.05)
    assert thinned.posterior.counts.mean() == pytest.approx(100, rel=0.05)
    assert thinned.anterior.source == scan.anterior.source


def test_flip_moves_image_and_label_together() -> None:
    image = np.zeros((2, 8, 8), np.float32)
    label = np.zeros((8, 8), np.uint8)
    image[:, 2, 1] = 5
    label[2, 1] = 1
    flipped, flipped_label = flip_lr(image, label)
    assert flipped[0, 2, 6] == flipped[1, 2, 6] == 5 and flipped_label[2, 6] == 1
    assert flipped_label.sum() == 1


def test_affine_identity_and_small_rotation() -> None:
    rng = np.random.default_rng(2)
    image = rng.random((2, 32, 32)).astype(np.float32)
    label = np.zeros((32, 32), np.uint8)
    label[10:20, 12:18] = 1
    same, same_label = small_affine(image, label, degrees=0, scale=1, shift=(0, 0))
    np.testing.assert_allclose(same, image, atol=1e-5)
    np.testing.assert_array_equal(same_label, label)
    moved, moved_label = small_affine(image, label, degrees=0, scale=1, shift=(3, -2))
    np.testing.assert_array_equal(np.argwhere(moved_label).min(0), [13, 10])
    _, turned = small_affine(image, label, degrees=5, scale=1.0, shift=(0, 0))
    assert set(np.unique(turned)) <= {0, 1}
    assert abs(int(turned.sum()) - int(label.sum())) <= 6


def test_gain_gamma() -> None:
    image = np.linspace(0, 4, 32, dtype=np.float32).reshape(2, 4, 4)
    np.testing.assert_allclose(gain_gamma(image, gain=1, gamma=1), image, rtol=1e-6)
    brighter = gain_gamma(image, gain=1.2, gamma=1)
    np.testing.assert_allclose(brighter, image * 1.2, rtol=1e-6)
    curved = gain_gamma(image, gain=1, gamma=0.5)
    assert curved[0].max() == pytest.approx(image[0].max())  # the peak stays, the rest brightens
    assert np.all(curved >= image - 1e-6)


def test_augmenter_keeps_label_binary_and_aligned_with_a_hot_spot() -> None:
    rng = np.random.default_rng(3)
    augmenter = Augmenter(AugmentSection(flip_lr=1.0, affine=1.0, intensity=1.0), rng)
    for _ in range(10):
        image = np.zeros((2, 48, 48), np.float32)
        label = np.zeros((48, 48), np.uint8)
        image[:, 20:26, 8:14] = 10
        label[20:26, 8:14] = 1
        out, out_label = augmenter.sample(image, label)
        assert out.shape == image.shape and out_label.shape == label.shape
        assert set(np.unique(out_label)) <= {0, 1}
        inside = out[0][out_label == 1]
        assert inside.size and inside.mean() > 0.8 * out[0].max()
