"""The training losses of the papers, each over a network's list of outputs (main + deep supervision).

- :func:`segmentation_loss`: soft Dice (+ BCE) averaged over the decoder outputs, paper 001 Eq. 4
  ("the segmentation loss is averaged over four decoding layers"). BCE is optional (weight 0 turns
  it off); paper 001 uses Dice alone, the U-Net/nnU-Net baselines Dice + cross-entropy.
- :func:`multiclass_segmentation_loss`: cross-entropy + soft Dice of every foreground class, for a
  network with one logit per class (paper 003's MT-UNet: background, metastatic, benign); the
  reference MT-UNet trains with 0.5 × CE + 0.5 × Dice (``train_mtunet_Synapse.py``), so those are the
  default weights.
- :func:`multiple_instance_loss`: image-level labels (crops) on a pixel network, top-k pooled.
- :func:`adversarial_loss`: MSA-Net's multi-scale L1 between the critic's features of
  ``image × prediction`` and ``image × truth`` (paper 001 Eq. 5, SegAN, Xue et al. 2018), averaged
  over the outputs like Eq. 4. The critic maximises it (Eq. 6, SegAN ``loss_D = −L``).
- :func:`mumford_shah_loss`: the unsupervised Chan–Vese / Mumford–Shah loss of paper 004 Eq. 7 in
  the differentiable form of Kim & Ye (IEEE TIP 2019, ``levelsetLoss`` + ``gradientLoss2d``): for the
  two phases ``p`` (lesion) and ``1 − p`` and every input channel ``x``,
  ``c = Σ x·y / Σ y`` and ``L = Σ (x − c)²·y`` plus a total-variation (length) term. We average over
  pixels instead of summing, so the weight does not depend on the patch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(outputs: Sequence[Tensor], target: Tensor | None = None) -> None:
    if not outputs:
        raise ValueError("the network returned no outputs")
    shape = outputs[0].shape
    if len(shape) != 4 or shape[1] != 1:
        raise ValueError(f"outputs must be (N, 1, H, W) logits, got {tuple(shape)}")
    for out in outputs:
        if out.shape != shape:
            raise ValueError(
                f"deep-supervision outputs must all be {tuple(shape)} (input resolution), got {tuple(out.shape)}"
            )
    if target is not None and target.shape != shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match outputs {tuple(shape)}")


def soft_dice_loss(
    logits: Tensor, target: Tensor, smooth: float = 1.0, *, per_sample: bool = False, valid: Tensor | None = None
) -> Tensor:
    """``1 − Dice`` of ``sigmoid(logits)`` and a 0/1 target (paper 001 Eq. 4).

    By default the Dice is taken over the whole batch ("batch Dice", nnU-Net, Isensee et al. 2021):
    lesions cover a tiny fraction of a bone scan and many patches hold none, and a per-patch Dice of
    such a patch only says "predict nothing". ``per_sample`` averages per-patch Dice instead.
    ``smooth`` keeps the loss defined (and 0) when no lesion is predicted and none is present.
    ``valid`` (0/1, same shape) leaves out pixels whose label is unknown (:mod:`dicomnode.train.weak`).
    """
    prob = torch.sigmoid(logits.float())
    truth = target.float()
    if valid is not None:
        prob, truth = prob * valid, truth * valid
    prob, truth = prob.flatten(1), truth.flatten(1)
    if not per_sample:
        prob, truth = prob.reshape(1, -1), truth.reshape(1, -1)
    intersection = (prob * truth).sum(1)
    dice = (2 * intersection + smooth) / (prob.sum(1) + truth.sum(1) + smooth)
    return (1 - dice).mean()


def segmentation_loss(
    outputs: Sequence[Tensor],
    target: Tensor,
    *,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    positive_weight: float = 1.0,
    batch_dice: bool = True,
    pixel_weight: Tensor | None = None,
) -> Tensor:
    """Dice (+ BCE) averaged over the main and deep-supervision outputs.

    ``pixel_weight`` (same shape as ``target``) weighs each pixel's BCE: 0 for pixels of unknown
    label, above 1 for hard negatives (:mod:`dicomnode.train.weak`); the BCE is the weighted sum over the sum
    of weights, and the Dice leaves weight-0 pixels out.
    """
    _check(outputs, target)
    target = target.float()
    valid = None
    if pixel_weight is not None:
        if pixel_weight.shape != target.shape:
            raise ValueError(f"pixel weights {tuple(pixel_weight.shape)} do not match the target {tuple(target.shape)}")
        pixel_weight = pixel_weight.float()
        valid = (pixel_weight > 0).float()
    pos_weight = torch.tensor([positive_weight], device=target.device)
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for logits in outputs:
        if dice_weight:
            total = total + dice_weight * soft_dice_loss(logits, target, per_sample=not batch_dice, valid=valid)
        if bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight, reduction="none")
            if pixel_weight is None:
                total = total + bce_weight * bce.mean()
            else:
                total = total + bce_weight * (bce * pixel_weight).sum() / pixel_weight.sum().clamp_min(1.0)
    return total / len(outputs)


def multiclass_segmentation_loss(
    logits: Tensor, target: Tensor, *, ce_weight: float = 0.5, dice_weight: float = 0.5,
    class_weight: Tensor | None = None, smooth: float = 1.0,
) -> Tensor:
    """``ce_weight`` × cross-entropy + ``dice_weight`` × mean over the foreground classes of
    ``1 − Dice`` (batch Dice, as :func:`soft_dice_loss`) of the softmax.

    ``logits`` ``(N, K, H, W)`` with K ≥ 2, ``target`` ``(N, H, W)`` integer class indices in
    ``[0, K)``; ``class_weight`` (K values) weighs the cross-entropy of rare classes.
    """
    if logits.dim() != 4 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, K, H, W) with K ≥ 2, got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    logits = logits.float()
    target = target.long()
    loss = ce_weight * F.cross_entropy(logits, target, weight=class_weight)
    if dice_weight:
        prob = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
        dims = (0, 2, 3)
        intersection = (prob * onehot).sum(dims)[1:]
        dice = (2 * intersection + smooth) / (prob.sum(dims)[1:] + onehot.sum(dims)[1:] + smooth)
        loss = loss + dice_weight * (1 - dice).mean()
    return loss


def multiple_instance_loss(logits: Tensor, valid: Tensor, abnormal: Tensor, *, top_k: int = 4) -> Tensor:
    """The loss of image-level labels (crops) on a pixel network's logits ``(N, 1, H, W)``.

    Multiple-instance learning (Maron & Lozano-Pérez, NIPS 1997; top-k pooling as in weakly supervised
    segmentation, e.g. Zhou et al., CVPR 2016's global pooling of class evidence): a crop is a bag of
    pixels. An **abnormal** crop holds at least one lesion pixel: the mean of its ``top_k`` highest
    logits inside ``valid`` is pushed up by BCE with label 1. A **normal** crop is all background:
    every valid pixel gets BCE with label 0, and its top-k evidence BCE with label 0 too (so one hot
    pixel on a normal crop costs as much as missing a lesion on an abnormal one).
    """
    if logits.dim() != 4 or logits.shape[1] != 1 or valid.shape != logits.shape:
        raise ValueError(f"crop logits {tuple(logits.shape)} and valid {tuple(valid.shape)} must be (N, 1, H, W)")
    flat = logits.float().flatten(1)
    inside = valid.flatten(1) > 0
    k = max(1, min(top_k, int(inside.sum(1).min().item())))
    evidence = flat.masked_fill(~inside, float("-inf")).topk(k, dim=1).values.mean(1)
    labels = abnormal.float().reshape(-1)
    loss = F.binary_cross_entropy_with_logits(evidence, labels)
    normal = labels == 0
    if normal.any():
        pixel = F.binary_cross_entropy_with_logits(flat[normal], torch.zeros_like(flat[normal]), reduction="none")
        loss = loss + (pixel * inside[normal]).sum() / inside[normal].sum().clamp_min(1)
    return loss


MultiscaleL1 = Callable[[torch.nn.Module, Tensor, Tensor, Tensor], Tensor]


def adversarial_loss(
    critic: torch.nn.Module,
    multiscale_l1: MultiscaleL1,
    image: Tensor,
    outputs: Sequence[Tensor],
    target: Tensor,
) -> Tensor:
    """Multi-scale L1 between critic features of image×prediction and image×truth, averaged over outputs.

    The generator minimises this; the critic maximises it (call with detached outputs and negate).
    """
    _check(outputs, target)
    losses = [multiscale_l1(critic, image, torch.sigmoid(logits.float()), target.float()) for logits in outputs]
    return torch.stack(losses).mean()


def _total_variation(prob: Tensor) -> Tensor:
    """Mean absolute vertical + horizontal difference (Kim & Ye ``gradientLoss2d``, L1 penalty)."""
    dh = (prob[..., 1:, :] - prob[..., :-1, :]).abs().mean()
    dw = (prob[..., :, 1:] - prob[..., :, :-1]).abs().mean()
    return dh + dw


def mumford_shah_loss(
    outputs: Sequence[Tensor], image: Tensor, *, length_weight: float = 0.001, eps: float = 1e-6
) -> Tensor:
    """Piecewise-constant Mumford–Shah (Chan–Vese) loss of the predicted phases against the image.

    ``image`` is the network input ``(N, C, H, W)``; each channel is fitted by one constant inside the
    predicted lesion and one outside. Needs no label, so it is applied to unlabelled studies too.
    """
    _check(outputs)
    if image.dim() != 4 or image.shape[0] != outputs[0].shape[0] or image.shape[-2:] != outputs[0].shape[-2:]:
        raise ValueError(
            f"image {tuple(image.shape)} does not match outputs {tuple(outputs[0].shape)}"
        )
    x = image.float()
    total = x.new_zeros(())
    for logits in outputs:
        p = torch.sigmoid(logits.float())
        fidelity = x.new_zeros(())
        for phase in (p, 1 - p):
            centre = (x * phase).sum((2, 3), keepdim=True) / (phase.sum((2, 3), keepdim=True) + eps)
            fidelity = fidelity + ((x - centre) ** 2 * phase).mean()
        # both phases have the same boundary, hence 2 × TV(p) as in Kim & Ye's sum over channels
        total = total + fidelity + length_weight * 2 * _total_variation(p)
    return total / len(outputs)
