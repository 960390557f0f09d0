"""Losses: hand-computed Dice, deep-supervision averaging, the SegAN critic and Mumford–Shah."""

from __future__ import annotations

import pytest
import torch

from dicomnode.segmentation.networks.msanet import Critic, multiscale_l1
from dicomnode.train.losses import adversarial_loss, mumford_shah_loss, segmentation_loss, soft_dice_loss

torch.set_num_threads(1)


def _half_target() -> torch.Tensor:
    target = torch.zeros(1, 1, 2, 4)
    target[..., :2] = 1  # 4 of 8 pixels
    return target


def test_soft_dice_by_hand() -> None:
    target = _half_target()
    # p = 0.5 everywhere: intersection 2, Σp = 4, Σt = 4 -> Dice (2·2 + 1) / (4 + 4 + 1) = 5/9
    assert soft_dice_loss(torch.zeros_like(target), target).item() == pytest.approx(1 - 5 / 9)
    perfect = (target * 2 - 1) * 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0, abs=1e-6)
    # no lesion predicted and none present: smoothing makes it a perfect score, not 0/0
    empty = torch.zeros_like(target)
    assert soft_dice_loss(empty - 50, empty).item() == pytest.approx(0, abs=1e-6)


def test_segmentation_loss_averages_deep_supervision() -> None:
    target = _half_target()
    perfect = (target * 2 - 1) * 50
    flat = torch.zeros_like(target)
    alone = segmentation_loss([flat], target, dice_weight=1, bce_weight=0).item()
    both = segmentation_loss([perfect, flat], target, dice_weight=1, bce_weight=0).item()
    assert both == pytest.approx(alone / 2, rel=1e-5)
    bce_only = segmentation_loss([flat], target, dice_weight=0, bce_weight=1).item()
    assert bce_only == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_output_shapes_are_checked() -> None:
    target = _half_target()
    with pytest.raises(ValueError, match="input resolution"):
        segmentation_loss([torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 1, 2)], target)
    with pytest.raises(ValueError, match="no outputs"):
        segmentation_loss([], target)


def test_adversarial_loss_zero_for_truth_and_trains_the_critic() -> None:
    torch.manual_seed(0)
    critic = Critic(in_channels=2, width=4)
    image = torch.rand(2, 2, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.8).float()
    perfect = (target * 2 - 1) * 50
    assert adversarial_loss(critic, multiscale_l1, image, [perfect], target).item() < 1e-4
    wrong = -perfect
    gap = adversarial_loss(critic, multiscale_l1, image, [wrong], target)
    assert gap.item() > 0
    # the critic maximises the gap: one ascent step makes it larger
    optimiser = torch.optim.SGD(critic.parameters(), lr=0.05)
    before = gap.item()
    (-gap).backward()
    optimiser.step()
    after = adversarial_loss(critic, multiscale_l1, image, [wrong], target).item()
    assert after > before


def test_mumford_shah_prefers_the_bright_region_and_needs_no_label() -> None:
    image = torch.zeros(1, 2, 16, 16)
    image[..., 4:8, 4:8] = 1.0  # a hot spot
    hot = torch.zeros(1, 1, 16, 16)
    hot[..., 4:8, 4:8] = 1
    matching = (hot * 2 - 1) * 20
    shifted = torch.roll(matching, shifts=6, dims=-1)
    assert mumford_shah_loss([matching], image).item() < mumford_shah_loss([shifted], image).item()
    # from a random start, gradient descent on the loss alone moves the lesion phase onto the spot
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 16, 16).requires_grad_()
    optimiser = torch.optim.SGD([logits], lr=2000.0)  # the loss is a mean: per-pixel gradients ~ 1/N
    for _ in range(100):
        optimiser.zero_grad()
        mumford_shah_loss([logits], image, length_weight=0).backward()
        optimiser.step()
    prob = torch.sigmoid(logits.detach())
    inside, outside = prob[hot.bool()].mean(), prob[~hot.bool()].mean()
    assert abs(inside - outside) > 0.5  # the two phases separate along the hot spot
    with pytest.raises(ValueError, match="does not match"):
        mumford_shah_loss([matching], image[..., :8])
