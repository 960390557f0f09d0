"""Plain U-Net baseline (Ronneberger et al., MICCAI 2015, arXiv 1505.04597).

- Encoder: four stages of two 3×3 convolutions + ReLU, each followed by 2×2 max pooling; channel
  counts 64, 128, 256, 512 and a 1024-channel bottleneck (paper §2, Fig. 1). Width ``"paper"`` is
  base 64; ``"slim"`` is base 8 (every stage scaled by the same factor); an int sets the base.
- Decoder: 2×2 transposed convolution halving the channels, concatenation with the encoder skip,
  two 3×3 convolutions + ReLU; a 1×1 convolution gives one lesion logit per pixel.
- Where we depart from the 2015 paper and why: convolutions are padded ("same") instead of valid,
  so the output has the input's size and no cropping of skips is needed (as in every modern
  re-implementation); BatchNorm follows each convolution (the paper predates BatchNorm; nnU-Net and
  the bone-scan papers 001/002/004 all normalise). No deep supervision: training returns one output.
- Fully convolutional: any H, W that are multiples of 16 (four poolings), so a whole 1024×256 view
  runs in one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SegmentationNetwork, Width, resolve_width
from .blocks import DoubleConv


class UNet(SegmentationNetwork):
    """U-Net with four down-samplings; base width 64 as in the paper, 8 for slim."""

    size_divisor = 16

    def __init__(self, in_channels: int = 2, width: Width = "slim") -> None:
        super().__init__(in_channels, width)
        base = resolve_width(width, paper=64, slim=8)
        chans = [base * 2**i for i in range(5)]
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, chans[0])]
            + [DoubleConv(chans[i - 1], chans[i]) for i in range(1, 5)]
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(4))]
        )
        self.decoder = nn.ModuleList([DoubleConv(2 * chans[i], chans[i]) for i in reversed(range(4))])
        self.head = nn.Conv2d(chans[0], self.classes, 1)

    def outputs(self, x: Tensor) -> list[Tensor]:
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, decode in zip(self.up, self.decoder):
            x = decode(torch.cat([skips.pop(), up(x)], dim=1))
        return [self.head(x)]


def build_unet(*, in_channels: int = 2, width: Width = "slim") -> UNet:
    """Plain U-Net baseline."""
    return UNet(in_channels, width)
