"""Semi-supervised segmentation net ("semisup", paper 004: Lin et al., Front Mol Biosci 2022).

Paper 004 § 2.3 lists the feature-extraction layers in order — dilated residual convolution,
pooling, feature aggregation, Inception connection, upsampling, traditional convolution — and names
U-Net's encoder–decoder with skip connections as its inspiration (§ 3.4.3). Figure 1, which showed
the exact wiring, is not in our copy, so we wire those layers in that order as an encoder–decoder
with channels ``base·(1, 2, 4, 8, 16)``:

- **Dilated residual convolution** (§ 2.3.1, Fig. 2) at each of four encoder levels (full, 1/2,
  1/4, 1/8 resolution, 2×2 max pooling between): two 3×3 dilated conv–BN–PReLU on the residual path
  and a 1×1 convolution on the identity path, summed. *Unspecified:* the dilation rates; we use 1
  then 2, which keeps the hybrid-dilated-convolution rule (Wang et al., WACV 2018) that paper 001
  follows, so consecutive dilations leave no gridding holes.
- **Anterior–posterior feature aggregation** (§ 2.3.3, Eq. 4: I_Agg = I_Ant + Mirr(I_Post), "images
  (features)"). Channel 0 is the view being segmented and channel 1 the other view, already
  mirrored and registered into its frame by preprocessing (docs/segmentation.md), so Mirr is done. Both
  channels run through the *same* encoder (shared weights, so their features live in one space
  and may be added), and the deepest encoder features of the two are added pixel-wise. Skip
  connections carry the features of channel 0 only, so the outline comes from the view being
  segmented while the aggregated evidence of both views flows through the bottleneck.
  With ``in_channels=1`` (a single view, or the image-level "mirrored then added" sum the paper also
  evaluates as D2_Agg, § 3.4.2) the aggregation step is skipped: one branch, otherwise the same net.
  More than two channels is refused: the block aggregates exactly two views.
- **Inception block** (§ 2.3.2, Fig. 3) after aggregation: branches 1×1→1×3→3×1, 1×1→1×7→7×1,
  1×1, and 1×1→5×5 (a quarter of the output channels each), depth-concatenated; then a 1×1
  convolution and 3×3 max pooling of stride 2 halve the grid ("a max pooling with stride = 2 after a
  1 × 1 convolution ... halve the resolution of the grid"). This is the fourth down-sampling.
- **Recurrent feature extraction, t = 3** (§ 2.3.4, Fig. 5, Eq. 5; Liang & Hu, CVPR 2015): a
  recurrent convolutional layer on the bottleneck, x(0) = σ(BN₀(W_F u)),
  x(t) = σ(BN_t(W_F u + W_R x(t−1))), t = 1..3, where W_F u is the Inception block's output
  (computed once; the input is static), W_R is a 3×3 convolution shared over time, σ is PReLU and
  each step has its own BatchNorm (RCNN normalises every step). *Unspecified:* at which depth the
  recurrence runs; we put it where the two views' evidence has been aggregated, at 1/16 resolution,
  so three iterations cost little.
- **Upsampling and traditional convolution**: bilinear ×2, concatenation with the skip, two 3×3
  conv–BN–ReLU; a 1×1 convolution gives the lesion logit. No deep supervision in paper 004.

The paper's Chan–Vese unsupervised loss (§ 2.4, Eq. 7) is a training matter (:mod:`train`).
Width: ``"paper"`` = base 64 (paper 004 gives no channel counts; U-Net's, which it builds on),
``"slim"`` = base 8, or an int base. Fully convolutional: H and W multiples of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationNetwork, Width, resolve_width
from .blocks import ConvBNAct, DoubleConv, prelu, upsample_to

RECURRENCE_STEPS = 3  # paper 004 § 3.4.2, Fig. 8: t = 3 is best
ENCODER_LEVELS = 4


class DilatedResidualBlock(nn.Module):
    """Two 3×3 dilated conv–BN–PReLU (dilation 1, 2) plus a 1×1 identity path (paper 004, Fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            ConvBNAct(in_channels, out_channels, dilation=1, act=prelu),
            ConvBNAct(out_channels, out_channels, dilation=2, act=prelu),
        )
        self.identity = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.identity(x)


class InceptionReduction(nn.Module):
    """Paper 004's Inception block (Fig. 3): four branches, depth concat, 1×1, stride-2 max pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        quarter = max(out_channels // 4, 1)
        first = out_channels - 3 * quarter
        if first < 1:
            raise ValueError(f"the Inception block needs at least 4 output channels, got {out_channels}")

        def factorised(k: int) -> nn.Sequential:  # 1×1 → 1×k → k×1
            return nn.Sequential(
                ConvBNAct(in_channels, quarter, 1, act=prelu),
                ConvBNAct(quarter, quarter, (1, k), act=prelu),
                ConvBNAct(quarter, quarter, (k, 1), act=prelu),
            )

        self.branches = nn.ModuleList([
            factorised(3),
            factorised(7),
            ConvBNAct(in_channels, first, 1, act=prelu),
            nn.Sequential(
                ConvBNAct(in_channels, quarter, 1, act=prelu), ConvBNAct(quarter, quarter, 5, act=prelu)
            ),
        ])
        self.fuse = nn.Conv2d(out_channels, out_channels, 1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.fuse(torch.cat([b(x) for b in self.branches], dim=1)))


class RecurrentConvLayer(nn.Module):
    """RCL (Liang & Hu 2015; paper 004 Eq. 5) unrolled for ``steps`` steps over a static input."""

    def __init__(self, channels: int, steps: int = RECURRENCE_STEPS) -> None:
        super().__init__()
        self.recurrent = nn.Conv2d(channels, channels, 3, padding=1, bias=False)  # W_R, shared
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(steps + 1))
        self.act = nn.PReLU(channels)

    def forward(self, feedforward: Tensor) -> Tensor:
        x = self.act(self.norms[0](feedforward))
        for norm in self.norms[1:]:
            x = self.act(norm(feedforward + self.recurrent(x)))
        return x


class SemiSupervisedNet(SegmentationNetwork):
    """Paper 004's net: shared dilated-residual encoder per view, A/P aggregation, Inception, RCL t=3."""

    size_divisor = 2**ENCODER_LEVELS

    def __init__(self, in_channels: int = 2, width: Width = "slim") -> None:
        super().__init__(in_channels, width)
        if in_channels > 2:
            raise ValueError(
                f"semisup aggregates exactly two views (anterior and mirrored posterior) or takes one "
                f"pre-aggregated image; in_channels must be 1 or 2, got {in_channels}"
            )
        base = resolve_width(width, paper=64, slim=8)
        chans = [base * 2**i for i in range(ENCODER_LEVELS + 1)]
        self.encoder = nn.ModuleList(
            DilatedResidualBlock(1 if i == 0 else chans[i - 1], chans[i]) for i in range(ENCODER_LEVELS)
        )
        self.inception = InceptionReduction(chans[-2], chans[-1])
        self.recurrent = RecurrentConvLayer(chans[-1])
        self.decoder = nn.ModuleList(
            DoubleConv(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(ENCODER_LEVELS))
        )
        self.head = nn.Conv2d(chans[0], 1, 1)

    def outputs(self, x: Tensor) -> list[Tensor]:
        n = x.shape[0]
        # (N, V, H, W) → (V·N, 1, H, W): both views through the shared encoder in one batch
        y = x.transpose(0, 1).reshape(-1, 1, *x.shape[-2:])
        skips = []
        for i, block in enumerate(self.encoder):
            y = block(y if i == 0 else F.max_pool2d(y, 2))
            skips.append(y[:n])
        aggregated = y.reshape(self.in_channels, n, *y.shape[1:]).sum(dim=0)  # Eq. 4, f = addition
        y = self.recurrent(self.inception(aggregated))
        for decode in self.decoder:
            skip = skips.pop()
            y = decode(torch.cat([upsample_to(y, skip.shape[-2:]), skip], dim=1))
        return [self.head(y)]


def build_semisup(*, in_channels: int = 2, width: Width = "slim") -> SemiSupervisedNet:
    """Semi-supervised net (paper 004); in_channels 2 (two views) or 1 (one or a pre-aggregated image)."""
    return SemiSupervisedNet(in_channels, width)
