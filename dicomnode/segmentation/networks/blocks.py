"""Building blocks used by more than one network: conv–BN–activation, double conv, upsampling."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

Activation = Callable[[int], nn.Module]
"""Builds the activation for a given channel count."""


def relu(channels: int) -> nn.Module:
    """In-place ReLU (the channel count is not needed)."""
    return nn.ReLU(inplace=True)


def prelu(channels: int) -> nn.Module:
    """Channel-wise parametric ReLU (He et al., ICCV 2015)."""
    return nn.PReLU(channels)


class ConvBNAct(nn.Sequential):
    """``k×k`` convolution (same padding, no bias) → BatchNorm → activation (ReLU unless given).

    Plain conv/BN/ReLU runs well with channels-last on CPU and GPU. ``act=None`` leaves the
    activation out (the "linear" convolutions of RFB, Liu et al. ECCV 2018).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        dilation: int = 1,
        act: Activation | None = relu,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels, out_channels, (kh, kw), padding=padding,
                dilation=dilation, bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(act(out_channels))
        super().__init__(*layers)


def upsample_to(x: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
    """Bilinear upsampling of logits or features to ``size`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class DoubleConv(nn.Sequential):
    """Two 3×3 conv–BN–ReLU: U-Net's stage (Ronneberger et al. 2015 §2) and paper 002's
    "composite convolution (Conv 3×3 + Conv 3×3)"."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNAct(in_channels, out_channels), ConvBNAct(out_channels, out_channels))
