"""MSA-Net: multi-scale generator with a SegAN-style adversarial critic (papers 000/001).

Generator (paper 001, "The generator network", Fig. 2): an encoder–decoder with average pooling
down and bilinear interpolation up, five levels of channels ``base·(1, 2, 4, 8, 16)``.

- **CDC** (§ "Cascade dilated convolution", Fig. 3, Table 2): level 1 is six 3×3 conv–BN–ReLU with
  dilations 1, 2, 4, 1, 2, 4 (chosen by the hybrid-dilated-convolution rule, Wang et al. WACV 2018),
  receptive fields 3, 7, 15, 17, 21, 29 (Eq. 1). "channels c = 64" in Table 2 fixes the paper's base
  width at 64.
- **MSFE = CRAC + RFB** (§ "Multi-scale feature extraction", Fig. 4) at levels 2–5. CRAC is the CDC
  with residual connections from the 1st to the 3rd and from the 4th to the 6th convolution. RFB
  (Liu et al., ECCV 2018) has three branches of equivalent kernel 1, 3, 5, each followed by a 3×3
  convolution of dilation 1, 3, 5, plus a 1×1 residual path; the three branch outputs, the residual
  path and the CRAC output are *summed* and passed through a ReLU (paper text).
  *Unspecified (Fig. 4 is not in our copy):* whether RFB reads the block input or the CRAC output.
  The text sums "the residual paths and the CRAC module outputs" as separate terms, so both modules
  read the block input in parallel. Branch details follow the RFB code (``BasicRFB``): a 1×1
  reduction to ``out/4`` channels, the 5×5 built as two 3×3, and no ReLU on the last convolution of a
  branch or on the residual path (the ReLU comes after the sum).
- **Input pyramid** (§ "Input image pyramid"): the input, average-pooled to 1/2, 1/4 and 1/8, is
  concatenated to the pooled features entering levels 2, 3 and 4.
- **RMS decoder** (§ "Residual multi-scale module", Fig. 5, ref. [15]): each decoder level upsamples
  bilinearly, concatenates the encoder skip and applies three conv–BN–ReLU of dilation 1, 2, 4 with a
  residual connection from the first to the third.
- **Deep supervision** (§ "Deep supervision"): the three coarser decoder levels each get a 1×1
  convolution to one channel, bilinearly upsampled to the input size; with the main output that is
  the paper's four predictions. Training returns ``[main, 1/2, 1/4, 1/8]``; eval returns main only.
  The paper applies a sigmoid to each; we return logits (the loss applies the sigmoid).

Width: ``"paper"`` = base 64 (Table 2), ``"slim"`` = base 8, or an int base. Fully convolutional:
H and W multiples of 16 (four poolings), so a whole 1024×256 view runs in one pass.

Critic (§ "The discriminator network", Fig. 6): the SegAN critic (Xue et al., Neuroinformatics 2018,
ref. [16]); see :class:`Critic` and :func:`multiscale_l1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationNetwork, Width, resolve_width
from .blocks import ConvBNAct, upsample_to

CDC_DILATIONS = (1, 2, 4, 1, 2, 4)
"""Dilation rates of the cascade dilated convolution (paper 001, Table 2)."""


class CascadeDilatedConv(nn.Module):
    """CDC (no residuals) or CRAC (``residual=True``): six 3×3 conv–BN–ReLU, dilations 1,2,4,1,2,4.

    CRAC adds the output of the 1st convolution to that of the 3rd and the 4th to the 6th
    (paper 001, § "Multi-scale feature extraction").
    """

    def __init__(self, in_channels: int, out_channels: int, *, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList(
            ConvBNAct(in_channels if i == 0 else out_channels, out_channels, dilation=d)
            for i, d in enumerate(CDC_DILATIONS)
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in (0, 3):
                shortcut = x
            elif i in (2, 5) and self.residual:
                x = x + shortcut
        return x


class ReceptiveFieldBlock(nn.Module):
    """RFB's three branches (equivalent kernel 1, 3, 5, then dilation 1, 3, 5), summed (no ReLU).

    Liu et al., ECCV 2018, Fig. 4a; as MSA-Net uses it, the branch outputs are summed rather than
    concatenated (paper 001, § "Multi-scale feature extraction").
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        inter = max(out_channels // 4, 1)

        def branch(equivalent_kernel: int, dilation: int) -> nn.Sequential:
            layers: list[nn.Module] = [ConvBNAct(in_channels, inter, 1)]
            layers += [ConvBNAct(inter, inter) for _ in range(equivalent_kernel // 2)]
            layers.append(ConvBNAct(inter, out_channels, dilation=dilation, act=None))
            return nn.Sequential(*layers)

        self.branches = nn.ModuleList([branch(1, 1), branch(3, 3), branch(5, 5)])

    def forward(self, x: Tensor) -> Tensor:
        return sum(b(x) for b in self.branches)  # type: ignore[return-value]


class MultiScaleFeatureExtraction(nn.Module):
    """MSFE = ReLU(CRAC(x) + RFB branches(x) + 1×1 residual path(x)) (paper 001, Fig. 4)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.crac = CascadeDilatedConv(in_channels, out_channels, residual=True)
        self.rfb = ReceptiveFieldBlock(in_channels, out_channels)
        self.shortcut = ConvBNAct(in_channels, out_channels, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.crac(x) + self.rfb(x) + self.shortcut(x))


class ResidualMultiScale(nn.Module):
    """RMS: conv–BN–ReLU of dilation 1, 2, 4; the first output is added to the third (paper 001, Fig. 5)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.first = ConvBNAct(in_channels, out_channels, dilation=1)
        self.rest = nn.Sequential(
            ConvBNAct(out_channels, out_channels, dilation=2),
            ConvBNAct(out_channels, out_channels, dilation=4),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.first(x)
        return x + self.rest(x)


class MSANet(SegmentationNetwork):
    """MSA-Net generator: CDC, MSFE at levels 2–5, input pyramid, RMS decoder, deep supervision."""

    size_divisor = 16
    pyramid_levels = 3  # the input at 1/2, 1/4, 1/8 enters levels 2, 3, 4

    def __init__(self, in_channels: int = 2, width: Width = "slim") -> None:
        super().__init__(in_channels, width)
        base = resolve_width(width, paper=64, slim=8)
        chans = [base * 2**i for i in range(5)]
        self.cdc = CascadeDilatedConv(in_channels, chans[0], residual=False)
        self.msfe = nn.ModuleList(
            MultiScaleFeatureExtraction(
                chans[i - 1] + (in_channels if i <= self.pyramid_levels else 0), chans[i]
            )
            for i in range(1, 5)
        )
        self.decoder = nn.ModuleList(
            ResidualMultiScale(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(4))
        )
        self.head = nn.Conv2d(chans[0], 1, 1)
        self.side_heads = nn.ModuleList(nn.Conv2d(chans[i], 1, 1) for i in (1, 2, 3))

    def logit_heads(self) -> dict[str, nn.Conv2d]:
        """The main head, then the deep-supervision heads in the order :meth:`outputs` returns them."""
        return {"head": self.head, **{f"side_heads.{i}": head for i, head in enumerate(self.side_heads)}}

    def outputs(self, x: Tensor) -> list[Tensor]:
        size = x.shape[-2:]
        features = [self.cdc(x)]
        image = x
        for level, msfe in enumerate(self.msfe, start=1):
            pooled = F.avg_pool2d(features[-1], 2)
            if level <= self.pyramid_levels:
                image = F.avg_pool2d(image, 2)
                pooled = torch.cat([pooled, image], dim=1)
            features.append(msfe(pooled))
        y = features.pop()
        decoded = []
        for rms in self.decoder:
            skip = features.pop()
            y = rms(torch.cat([upsample_to(y, skip.shape[-2:]), skip], dim=1))
            decoded.append(y)
        logits = [self.head(decoded[-1])]
        if self.training:  # decoded = [1/8, 1/4, 1/2, 1]; side heads are for 1/2, 1/4, 1/8
            logits += [
                upsample_to(head(decoded[2 - i]), size) for i, head in enumerate(self.side_heads)
            ]
        return logits


class Critic(nn.Module):
    """SegAN critic (Xue et al. 2018, ``NetC`` in YuanXue1993/SegAN ``net.py``; paper 001, Fig. 6).

    Six strided convolutions: 7×7 (base), 5×5 (2·base), 4×4 (4·base), 4×4, 4×4, 3×3 (8·base), all
    stride 2 and LeakyReLU 0.2, BatchNorm on all but the first. The output is the flattened input and
    every layer's features, weighted 1, 1, 2, 2, 2, 2, 4 and concatenated: the "weighted sum of the
    output results of the input data at different convolutional layers" of paper 001.
    ``in_channels`` is the number of image channels; width ``"paper"`` = base 64 (SegAN's ``ndf``),
    ``"slim"`` = base 8. Training concerns (weight clipping to ±0.05, alternating updates) belong to
    the training loop.
    """

    layer_weights = (1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 4.0)  # input, then the six layers (SegAN)

    def __init__(self, in_channels: int = 2, width: Width = "slim") -> None:
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        base = resolve_width(width, paper=64, slim=8)
        self.in_channels = in_channels
        specs = [  # (out channels, kernel, padding)
            (base, 7, 3), (2 * base, 5, 2), (4 * base, 4, 1),
            (8 * base, 4, 1), (8 * base, 4, 1), (8 * base, 3, 1),
        ]
        layers = []
        c_in = in_channels
        for i, (c_out, k, p) in enumerate(specs):
            block: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=2, padding=p, bias=False)]
            if i > 0:
                block.append(nn.BatchNorm2d(c_out))
            block.append(nn.LeakyReLU(0.2, inplace=True))
            layers.append(nn.Sequential(*block))
            c_in = c_out
        self.layers = nn.ModuleList(layers)

    def forward(self, masked_image: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` masked image → ``(N, F)`` multi-scale feature vector."""
        if masked_image.dim() != 4 or masked_image.shape[1] != self.in_channels:
            raise ValueError(
                f"Critic expects (N, {self.in_channels}, H, W), got {tuple(masked_image.shape)}"
            )
        n = masked_image.shape[0]
        features = [masked_image]
        for layer in self.layers:
            features.append(layer(features[-1]))
        return torch.cat([w * f.reshape(n, -1) for w, f in zip(self.layer_weights, features)], dim=1)


def multiscale_l1(critic: Critic, image: Tensor, pred_prob: Tensor, target: Tensor) -> Tensor:
    """SegAN multi-scale L1 loss: ``mean |C(x ⊙ ŷ) − C(x ⊙ y)|`` (Xue et al. 2018 Eq. 3; paper 001 Eq. 5).

    ``image`` is ``(N, C, H, W)``; ``pred_prob`` (probabilities, not logits) and ``target`` are
    ``(N, 1, H, W)`` and mask every image channel. The segmentor minimises this; the critic
    maximises it (paper 001 Eq. 6).
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (N, C, H, W), got {tuple(image.shape)}")
    expected = (image.shape[0], 1, *image.shape[2:])
    for name, mask in (("pred_prob", pred_prob), ("target", target)):
        if tuple(mask.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(mask.shape)}")
    return (critic(image * pred_prob) - critic(image * target.to(image.dtype))).abs().mean()


def build_msanet(*, in_channels: int = 2, width: Width = "slim") -> MSANet:
    """MSA-Net generator (papers 000/001)."""
    return MSANet(in_channels, width)
