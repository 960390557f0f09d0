"""Multi-attention multi-scale encoder–decoder ("mams", paper 002: Xie et al., QIMS 2025).

Layout (paper 002, § Methods, Fig. 1): a U-shaped net of five levels with channels
``base·(1, 2, 4, 8, 16)``. Each level's "composite convolution" (two 3×3 conv) doubles the channels,
max pooling halves the map, transposed convolutions bring it back up.

- **Multi-scale block** (§ "Multi-scale feature learning strategy", Fig. 2, Eqs. 1–2): an Inception
  block (Szegedy et al. 2015, ref. 48) after the composite convolution of *every* level, encoder,
  bottleneck and decoder alike ("in every layer of the proposed model"). The text says "five
  branches" but Eq. 1 concatenates four (1×1, 3×3, 5×5, max pooling), so we build those four, with
  GoogLeNet's split of the output channels (inception 3a: 1/4, 1/2, 1/8, 1/8) and its 1×1
  reductions in front of the 3×3 (3/4 of its width) and 5×5 (1/2 of its width).
- **Multi-pooling** (§ "Multi-pooling learning strategy", Fig. 3, Eqs. 3–5): after the first
  down-sampling, adaptive average pooling to 1×1, 2×2, 4×4 and 8×8, each followed by a 1×1
  convolution to 1/4 of the channels (PSPNet's 1/N with N = 4, ref. 49), bilinear upsampling and
  concatenation with the input, which doubles the channels entering level 2. PSPNet puts
  BatchNorm + ReLU after that 1×1 convolution; we keep it linear with a bias (Eq. 3 shows none),
  because BatchNorm on a 1×1 map cannot train with one image per batch, and a ReLU without it can
  leave a slim branch of a few channels dead from initialisation. Level 2's convolutions follow.
- **ViT** (§ "ViT learning strategy", Fig. 4, Eqs. 6–16, Table 1) at the bottleneck: Table 1 gives
  image size 256/2⁴ = 16 and patch size 16/2⁴ = 1 for four down-samplings, dim 512, depth 6,
  8 heads, dropout 0.1. Each bottleneck pixel is a patch, linearly embedded (Eq. 7), with a
  learned CLS token and learned position embeddings (Eq. 8), then six pre-norm encoder layers
  (Eqs. 9–15). *Unspecified:* the MLP width (we use ViT's 4·dim, Dosovitskiy et al. 2021, ref. 50)
  and how a classification-token output becomes a feature map. We project the patch tokens back to
  the bottleneck channels and add them to the map (TransUNet's way of putting a ViT in a U-Net), and
  add the projected CLS token (Eq. 16, "CLS token pooling") at every position as global context.
  Width ``"slim"`` shrinks dim to 8·base (64); depth and heads stay 6 and 8.
- **Non-local block** (§ "Non-local attention", Fig. 5, Eqs. 17–23, Wang et al. CVPR 2018, ref. 51)
  after the ViT: embedded-Gaussian attention with θ, φ, g 1×1 convolutions to C/2, a softmax over
  θᵀφ (unscaled, Eq. 20), a 1×1 convolution back to C and a residual sum (Eq. 23).
- No deep supervision in paper 002: training returns a single output.

**Window-only.** The position embeddings are learned for a 16×16 token grid, so the net takes only
256×256 windows (``window = 256``), as the paper trains and tests on 256×256 crops taken with a
stride of 128 (§ "Data preprocessing", Step 4). Width: ``"paper"`` = base 64 (the channel doubling
of Fig. 1 from 64 and ViT dim 512 = 8·64), ``"slim"`` = base 8, or an int base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationNetwork, Width, resolve_width
from .blocks import ConvBNAct, DoubleConv, upsample_to

WINDOW = 256
DOWNSAMPLINGS = 4
VIT_DEPTH = 6
VIT_HEADS = 8
VIT_DROPOUT = 0.1
POOL_BINS = (1, 2, 4, 8)


class InceptionBlock(nn.Module):
    """GoogLeNet Inception block, ``channels`` in and out (paper 002, Fig. 2, Eq. 1: C' = C1+C2+C3+Cp)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c5 = cp = max(channels // 8, 1)
        c1 = max(channels // 4, 1)
        c3 = channels - c1 - c5 - cp
        if c3 < 1:
            raise ValueError(f"an Inception block needs at least 4 channels, got {channels}")
        self.branch1 = ConvBNAct(channels, c1, 1)
        self.branch3 = nn.Sequential(
            ConvBNAct(channels, max(3 * c3 // 4, 1), 1), ConvBNAct(max(3 * c3 // 4, 1), c3, 3)
        )
        self.branch5 = nn.Sequential(
            ConvBNAct(channels, max(c5 // 2, 1), 1), ConvBNAct(max(c5 // 2, 1), c5, 5)
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), ConvBNAct(channels, cp, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1
        )


class MultiPooling(nn.Module):
    """Pyramid pooling to 1, 2, 4, 8 bins; output = input ‖ four upsampled C/4 maps (paper 002, Eqs. 3–5)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = max(channels // len(POOL_BINS), 1)
        self.out_channels = channels + reduced * len(POOL_BINS)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(bins), nn.Conv2d(channels, reduced, 1))
            for bins in POOL_BINS
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [upsample_to(stage(x), size) for stage in self.stages], dim=1)


class BottleneckViT(nn.Module):
    """ViT over the 16×16 bottleneck map, patch size 1, CLS token (paper 002, Eqs. 6–16, Table 1)."""

    def __init__(self, channels: int, dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.embed = nn.Conv2d(channels, dim, 1)  # patch size 1: a linear map per pixel (Eq. 7)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.dropout = nn.Dropout(VIT_DROPOUT)
        layer = nn.TransformerEncoderLayer(
            dim, VIT_HEADS, dim_feedforward=4 * dim, dropout=VIT_DROPOUT, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, VIT_DEPTH, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.to_map = nn.Linear(dim, channels)
        self.cls_to_map = nn.Linear(dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if (h, w) != (self.grid, self.grid):
            raise ValueError(f"the ViT was built for a {self.grid}×{self.grid} map, got {h}×{w}")
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1)
        tokens = self.encoder(self.dropout(tokens + self.position))
        patches = self.to_map(tokens[:, 1:]).transpose(1, 2).reshape(n, c, h, w)
        cls = self.cls_to_map(tokens[:, 0])[:, :, None, None]
        return x + patches + cls


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018; paper 002, Eqs. 17–23)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape

        def tokens(conv: nn.Conv2d) -> Tensor:
            return conv(x).flatten(2).transpose(1, 2)  # (N, HW, C/2)

        # softmax(θᵀφ) g with no 1/√d scaling (Eqs. 19–21)
        y = F.scaled_dot_product_attention(tokens(self.theta), tokens(self.phi), tokens(self.g), scale=1.0)
        return x + self.out(y.transpose(1, 2).reshape(n, -1, h, w))


def _level(in_channels: int, out_channels: int) -> nn.Sequential:
    """One level: composite convolution then the multi-scale (Inception) block."""
    return nn.Sequential(DoubleConv(in_channels, out_channels), InceptionBlock(out_channels))


class MultiAttentionMultiScaleNet(SegmentationNetwork):
    """Paper 002's encoder–decoder: Inception at every level, multi-pooling, ViT + non-local block."""

    window = WINDOW
    size_divisor = 2**DOWNSAMPLINGS

    def __init__(self, in_channels: int = 2, width: Width = "slim") -> None:
        super().__init__(in_channels, width)
        base = resolve_width(width, paper=64, slim=8)
        chans = [base * 2**i for i in range(DOWNSAMPLINGS + 1)]
        self.multi_pooling = MultiPooling(chans[0])
        self.encoder = nn.ModuleList(
            [_level(in_channels, chans[0]), _level(self.multi_pooling.out_channels, chans[1])]
            + [_level(chans[i - 1], chans[i]) for i in range(2, DOWNSAMPLINGS + 1)]
        )
        self.vit = BottleneckViT(chans[-1], dim=8 * base, grid=WINDOW // self.size_divisor)
        self.non_local = NonLocalBlock(chans[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(DOWNSAMPLINGS))
        )
        self.decoder = nn.ModuleList(_level(2 * chans[i], chans[i]) for i in reversed(range(DOWNSAMPLINGS)))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def outputs(self, x: Tensor) -> list[Tensor]:
        skips = []
        for i, level in enumerate(self.encoder):
            if i == 1:
                x = self.multi_pooling(F.max_pool2d(x, 2))
            elif i > 1:
                x = F.max_pool2d(x, 2)
            x = level(x)
            skips.append(x)
        x = self.non_local(self.vit(skips.pop()))
        for up, level in zip(self.up, self.decoder):
            x = level(torch.cat([skips.pop(), up(x)], dim=1))
        return [self.head(x)]


def build_mams(*, in_channels: int = 2, width: Width = "slim") -> MultiAttentionMultiScaleNet:
    """Multi-attention multi-scale net (paper 002); 256×256 windows only."""
    return MultiAttentionMultiScaleNet(in_channels, width)
