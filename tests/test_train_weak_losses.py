"""The losses of weak supervision, the pretrained start, and the 8-bit export augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.segmentation.modelcard import save_model
from dicomnode.segmentation.networks import build
from dicomnode.segmentation.preprocess import Preprocessing
from dicomnode.segmentation.scan import BoneScan, View, ViewImage, ViewRule, ViewSource
from dicomnode.train.augment import quantise_scan, scan_reference
from dicomnode.train.losses import multiple_instance_loss, segmentation_loss
from dicomnode.train.pretrained import PretrainedError, load_pretrained


def test_zero_weight_pixels_do_not_count_and_hard_negatives_count_more() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:4, 2:4] = 1
    logits = torch.full((1, 1, 8, 8), -4.0)
    logits[..., 2:4, 2:4] = 4.0
    weight = torch.ones_like(target)
    weight[..., 6:, 6:] = 0  # uncertain corner
    base = segmentation_loss([logits], target, pixel_weight=weight)
    changed = logits.clone()
    changed[..., 6:, 6:] = 9.0  # a confident "lesion" where the label is unknown
    assert segmentation_loss([changed], target, pixel_weight=weight) == pytest.approx(float(base), abs=1e-6)
    assert segmentation_loss([changed], target) > base  # without the weight it is punished
    hard = weight.clone()
    hard[..., 0, :] = 3.0
    hot_edge = logits.clone()
    hot_edge[..., 0, :] = 0.0
    assert segmentation_loss([hot_edge], target, pixel_weight=hard, dice_weight=0) > segmentation_loss(
        [hot_edge], target, pixel_weight=weight, dice_weight=0)
    with pytest.raises(ValueError, match="pixel weights"):
        segmentation_loss([logits], target, pixel_weight=weight[..., :4])


def test_multiple_instance_loss_wants_one_lesion_in_abnormal_crops_and_none_in_normal_ones() -> None:
    valid = torch.zeros(2, 1, 16, 16)
    valid[..., 2:14, 2:14] = 1
    flat = torch.full((2, 1, 16, 16), -5.0)
    spot = flat.clone()
    spot[..., 8:10, 8:10] = 5.0
    abnormal = torch.tensor([1.0, 1.0])
    normal = torch.tensor([0.0, 0.0])
    assert multiple_instance_loss(spot, valid, abnormal) < multiple_instance_loss(flat, valid, abnormal)
    assert multiple_instance_loss(flat, valid, normal) < multiple_instance_loss(spot, valid, normal)
    outside = flat.clone()
    outside[..., 0, 0] = 9.0  # padding is not part of the crop
    assert multiple_instance_loss(outside, valid, normal) == pytest.approx(float(multiple_instance_loss(flat, valid, normal)))
    logits = flat.clone().requires_grad_(True)
    multiple_instance_loss(logits, valid, abnormal).backward()
    assert logits.grad is not None and logits.grad[valid == 0].abs().sum() == 0 and logits.grad.abs().sum() > 0


def test_pretrained_weights_adapt_the_input_channels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    two = build("unet", in_channels=2, width=4)
    card = save_model(two, tmp_path / "two", name="t", version="1", network="unet",
                      preprocessing=Preprocessing(window=None))
    one = build("unet", in_channels=1, width=4)
    adapted = load_pretrained(one, card.weights_path)
    assert len(adapted) == 1
    name = adapted[0]
    assert torch.equal(one.state_dict()[name], two.state_dict()[name][:, :1])
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        # with the missing channel empty, the adapted network computes what the pretrained one did
        assert torch.allclose(one.eval()(x), two.eval()(torch.cat([x, torch.zeros_like(x)], 1)), atol=1e-5)
    with pytest.raises(PretrainedError, match="does not fit"):
        load_pretrained(build("mams", in_channels=1, width=4), card.weights_path)


def _scan(counts: np.ndarray) -> BoneScan:
    source = ViewSource("1.2", "1.2.840.10008.5.1.4.1.1.20", "1.3", 1, *counts.shape, False, False, ViewRule.ASSUMED)
    return BoneScan("1.4", anterior=ViewImage(View.ANTERIOR, counts.astype(np.float32), (2.26, 2.26), source))


def test_an_8_bit_export_rounds_clips_and_sets_the_reference_level() -> None:
    rng = np.random.default_rng(3)
    counts = rng.poisson(200, size=(64, 32)).astype(np.float32)
    counts[10, 10] = 20_000  # a bladder-like hot pixel of a 16-bit camera
    scan = _scan(counts)
    exported = quantise_scan(scan, scan_reference(scan), 40.0).anterior.counts
    assert exported.max() == 255 and exported.min() >= 0
    assert np.array_equal(exported, np.rint(exported))
    assert scan_reference(_scan(exported)) == pytest.approx(40.0, abs=1.5)
    with pytest.raises(ValueError):
        quantise_scan(scan, 0.0, 40.0)
