"""Mixed Transformer U-Net ("mtunet", paper 003: bone SPECT/CT lesions; Wang et al., ICASSP 2022).

Paper 003 (Chin J Nucl Med Mol Imaging 2025;45(11):666, abstract only) segments bone lesions on
SPECT, CT and fused SPECT/CT with MT-UNet and separates metastatic from benign lesions; it gives no
layer details, so the layout follows the cited network (Wang, Xie, Lin et al., "Mixed Transformer
U-Net for medical image segmentation", ICASSP 2022) as its authors' reference code builds it
(repository ``Dootmaan/MT-UNet``, ``MTUNet.py``; structure summarised in docs/segmentation.md).
With base width ``b`` (64 in the paper):

- **Convolutional stem**: three residual double convolutions (3×3 conv–BN–ReLU, 3×3 conv–BN, plus a
  1×1 conv–BN of that output added back, ReLU) with ``b, 2b, 4b`` channels, each followed by 2×2 max
  pooling (224 → 28 in the paper), a 1×1 conv–BN–ReLU, and a learned position embedding added to
  the ``4b``-channel tokens.
- **Mixed Transformer Module** (MTM, the reference's ``EAmodule``): LayerNorm → local-global
  Gaussian-weighted self-attention (LGG-SA) → residual; LayerNorm → external attention → residual.

  * LGG-SA *local*: multi-head self-attention (8 heads, scaled dot product, output projection)
    inside non-overlapping 4×4 windows.
  * LGG-SA *global*: each window is pooled to one token by a learned softmax weighting of its 16
    tokens (``DlightConv``); on that coarse grid every token attends along its row and its column
    (single head, unscaled dot product, as the reference) with the logits penalised by a learnable
    ``shift × distance²`` (the Gaussian weighting), the row and column results summed; the coarse
    map is upsampled ×4 (bilinear, corners aligned), concatenated with the local branch and fused
    by a 1×1 convolution.
  * External attention (``MEAttention``): a linear query expansion ×4, 32 heads, two shared
    memories of 64 units (linear layers), softmax over tokens then L1 normalisation over the
    memory units ("double normalisation"), a linear projection back.
- **Encoder**: two stages (``4b``, ``8b`` channels), each two MTMs followed by a 2×2 stride-2
  conv–BN–ReLU doubling the channels; **bottleneck**: two MTMs at ``16b``.
- **Decoder**: a 2×2 transposed conv, concatenation with the encoder skip, a 1×1 conv and two MTMs
  (first stage, ``8b``); a transposed conv, concatenation and two MTMs at ``8b`` (second stage); then
  the convolutional U-decoder back to full size (transposed conv, the stem's skip, residual double
  conv; ``4b, 2b, b``) and a 1×1 convolution to the class logits.

Classes: three (0 background, 1 metastatic lesion, 2 benign lesion; paper 003), softmax over the
channel axis; the network returns ``(N, 3, H, W)`` logits. Inputs: 1 channel (SPECT or CT) or 2
(SPECT and CT, the fused SPECT/CT of paper 003), 2-D axial slices (see below).

**2-D, slice-wise.** MT-UNet is a 2-D network (224 × 224 slices of Synapse/ACDC volumes in the
ICASSP paper); paper 003 names MT-UNet without change, so we segment axial slices of the
SPECT/CT volume one by one (with SPECT resampled onto the CT grid, :mod:`dicomnode.segmentation.volume`) and
stack them back; no 3-D variant of MT-UNet exists to be faithful to.

Departures from the reference code, and why:

- **Any size divisible by 32** instead of 224 × 224 only: the token grid's height and width are
  carried explicitly instead of taken as ``sqrt(N)`` (non-square slices work), the position embedding
  is learned on the paper's 28 × 28 grid and bilinearly resized to the actual grid when it differs
  (as ViT does when fine-tuned at another resolution), and a token map that is not a multiple of
  the 4 × 4 window is padded with zeros at its bottom/right and cropped back after the attention
  (the reference pads too, with a partly copied corner).
- **No hard-coded device** (the reference calls ``.cuda()`` inside the forward pass) and a
  vectorised Gaussian axial attention (the reference loops over every row and column in Python):
  the same arithmetic, on whatever device the weights are.
- The Gaussian term's additive ``bias`` of the reference is left out: it is the same constant for
  every logit of a softmax, so it never changes the output and receives no gradient.
- One input channel goes straight into the first convolution (the reference repeats it to three
  channels, which only triples identical weights); two channels (SPECT, CT) are native.
- Width: ``"paper"`` = base 64 (the reference's 64/128/256 stem, 256/512/1024 transformer);
  ``"slim"`` = base 8 for CPU (32/64/128 transformer dims); an int sets the base (≥ 2, so that
  the 8 and 32 attention heads divide the channels).
- No deep supervision (the reference has none either): training returns one output.

The global branch needs at least two pooled tokens along an axis to do anything (one token per
4×4 window): at 1/32 of the input that takes 256 pixels; a 128 × 128 slice has a 1 × 1 pooled grid
at the bottleneck, where the global branch then passes its value through (in the reference at
224 × 224 the bottleneck's pooled grid is 2 × 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationNetwork, Width, resolve_width

CLASSES = ("background", "metastatic", "benign")
"""Output channels, in order (paper 003: bone metastases and benign bone lesions)."""
WINDOW = 4
HEADS = 8
EXTERNAL_HEADS = 32
EXTERNAL_COEF = 4
EXTERNAL_MEMORY = 64
POSITION_GRID = 28
STEM_POOLS = 3
ENCODER_STAGES = 2


class ConvBNReLU(nn.Sequential):
    """``k×k`` conv (no bias) → BatchNorm → ReLU (the activation optional), reference ``ConvBNReLU``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 activation: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout)]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualDoubleConv(nn.Module):
    """The reference's ``DoubleConv``: conv–BN–ReLU, conv–BN, then ``h + BN(conv1×1(h))``, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvBNReLU(cin, cout, 3, padding=1), ConvBNReLU(cout, cout, 3, padding=1, activation=False))
        self.mix = nn.Sequential(nn.Conv2d(cout, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return F.relu(h + self.mix(h))


def _pad_to_window(x: Tensor) -> Tensor:
    """Zero-pad a ``(B, H, W, C)`` token map at the bottom/right to multiples of :data:`WINDOW`."""
    h, w = x.shape[1:3]
    ph, pw = (-h) % WINDOW, (-w) % WINDOW
    return F.pad(x, (0, 0, 0, pw, 0, ph)) if ph or pw else x


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping 4×4 windows (LGG-SA's local branch)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = HEADS
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` with H, W multiples of 4 → windows ``(B, H/4, W/4, 16, C)``."""
        b, h, w, c = x.shape
        win = x.view(b, h // WINDOW, WINDOW, w // WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5)
        win = win.reshape(b, h // WINDOW, w // WINDOW, WINDOW * WINDOW, c)
        q, k, v = self.qkv(win).chunk(3, dim=-1)
        split = lambda t: t.unflatten(-1, (self.heads, c // self.heads)).transpose(-2, -3)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // self.heads), dim=-1)
        context = (attn @ v).transpose(-2, -3).flatten(-2)
        return self.out(context)


class WindowPooling(nn.Module):
    """The reference's ``DlightConv``: one token per window, a softmax weighting of its 16 tokens
    computed from their mean."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, WINDOW * WINDOW)

    def forward(self, windows: Tensor) -> Tensor:
        weights = torch.softmax(self.linear(windows.mean(dim=-2)), dim=-1)
        return (windows * weights.unsqueeze(-1)).sum(dim=-2)


class GaussianAxialAttention(nn.Module):
    """Row and column attention on the pooled grid with a learnable Gaussian distance penalty
    (LGG-SA's global branch; reference ``Attention(axial=True)`` + ``GaussianTrans``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.shift = nn.Parameter(torch.randn(1).abs())

    def forward(self, x: Tensor) -> Tensor:
        """``(B, h, w, C)`` → ``(B, h, w, C)``."""
        b, h, w, c = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        cols = torch.arange(w, device=x.device, dtype=x.dtype)
        rows = torch.arange(h, device=x.device, dtype=x.dtype)
        dist_x = (cols[None, :] - cols[:, None]) ** 2
        dist_y = (rows[None, :] - rows[:, None]) ** 2
        scores_x = torch.einsum("brcd,bred->brce", q, k) - self.shift * dist_x
        scores_y = torch.einsum("brcd,bscd->bcrs", q, k) - self.shift * dist_y
        out_x = torch.einsum("brce,bred->brcd", torch.softmax(scores_x, dim=-1), v)
        out_y = torch.einsum("bcrs,bscd->brcd", torch.softmax(scores_y, dim=-1), v)
        return out_x + out_y


class LocalGlobalAttention(nn.Module):
    """LGG-SA (reference ``CSAttention``): local window attention and Gaussian global attention,
    fused by a 1×1 convolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.local = WindowAttention(dim)
        self.pool = WindowPooling(dim)
        self.global_ = GaussianAxialAttention(dim)
        self.fuse = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        padded = _pad_to_window(x)
        hp, wp = padded.shape[1:3]
        windows = self.local(padded)  # (B, hp/4, wp/4, 16, C)
        local = windows.view(b, hp // WINDOW, wp // WINDOW, WINDOW, WINDOW, c).permute(0, 5, 1, 3, 2, 4)
        local = local.reshape(b, c, hp, wp)
        coarse = self.global_(self.pool(windows)).permute(0, 3, 1, 2)
        coarse = F.interpolate(coarse, scale_factor=WINDOW, mode="bilinear", align_corners=True)
        fused = self.fuse(torch.cat([coarse, local], dim=1))
        return fused[:, :, :h, :w].permute(0, 2, 3, 1)


class ExternalAttention(nn.Module):
    """Multi-head external attention with double normalisation (reference ``MEAttention``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = EXTERNAL_HEADS
        self.expand = nn.Linear(dim, dim * EXTERNAL_COEF)
        head_dim = dim * EXTERNAL_COEF // EXTERNAL_HEADS
        self.memory_key = nn.Linear(head_dim, EXTERNAL_MEMORY)
        self.memory_value = nn.Linear(EXTERNAL_MEMORY, head_dim)
        self.proj = nn.Linear(dim * EXTERNAL_COEF, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, C)`` tokens."""
        b, n, _ = x.shape
        q = self.expand(x).view(b, n, self.heads, -1).transpose(1, 2)
        attn = torch.softmax(self.memory_key(q), dim=-2)
        attn = attn / (1e-9 + attn.sum(dim=-1, keepdim=True))
        out = self.memory_value(attn).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class MixedTransformerModule(nn.Module):
    """MTM: LN → LGG-SA → residual; LN → external attention → residual, on ``(B, H, W, C)`` tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % HEADS or (dim * EXTERNAL_COEF) % EXTERNAL_HEADS:
            raise ValueError(f"an MTM needs a multiple of {HEADS} channels, got {dim}")
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = LocalGlobalAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.external = ExternalAttention(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        tokens = tokens + self.external(self.norm2(tokens))
        return tokens.view(b, h, w, c)


def _to_tokens(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _to_map(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


class MTUNet(SegmentationNetwork):
    """MT-UNet with three stem poolings and two transformer down-samplings (stride 32)."""

    size_divisor = 2 ** (STEM_POOLS + ENCODER_STAGES)
    classes = len(CLASSES)

    def __init__(self, in_channels: int = 2, width: Width = "slim") -> None:
        super().__init__(in_channels, width)
        b = resolve_width(width, paper=64, slim=8)
        if b < 2:
            raise ValueError(f"MT-UNet needs a base width of at least 2, got {b}")
        stem = [b, 2 * b, 4 * b]
        self.stem = nn.ModuleList([ResidualDoubleConv(in_channels, stem[0])]
                                  + [ResidualDoubleConv(stem[i - 1], stem[i]) for i in (1, 2)])
        self.pool = nn.MaxPool2d(2)
        self.trans_dim = ConvBNReLU(stem[2], stem[2], 1)
        self.position = nn.Parameter(torch.zeros(1, stem[2], POSITION_GRID, POSITION_GRID))
        dims = [4 * b, 8 * b]
        self.encoder = nn.ModuleList(
            [nn.ModuleList([MixedTransformerModule(d), MixedTransformerModule(d)]) for d in dims]
        )
        self.down = nn.ModuleList([ConvBNReLU(d, 2 * d, 2, stride=2) for d in dims])
        self.bottleneck = nn.ModuleList([MixedTransformerModule(16 * b), MixedTransformerModule(16 * b)])
        # decoder stage 1 (16b → 8b, 1×1 squeeze after the concatenation), stage 2 (8b → 4b, + skip = 8b)
        self.up1 = nn.ConvTranspose2d(16 * b, 8 * b, 2, stride=2)
        self.squeeze1 = nn.Conv2d(16 * b, 8 * b, 1)
        self.decoder1 = nn.ModuleList([MixedTransformerModule(8 * b), MixedTransformerModule(8 * b)])
        self.up2 = nn.ConvTranspose2d(8 * b, 4 * b, 2, stride=2)
        self.decoder2 = nn.ModuleList([MixedTransformerModule(8 * b), MixedTransformerModule(8 * b)])
        # convolutional U-decoder (reference U_decoder): 8b → 4b → 2b → b
        self.up_stem = nn.ModuleList([nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in reversed(stem)])
        self.decode_stem = nn.ModuleList([ResidualDoubleConv(2 * c, c) for c in reversed(stem)])
        self.head = nn.Conv2d(b, self.classes, 1)

    def _position(self, h: int, w: int) -> Tensor:
        pos = self.position
        if (h, w) != pos.shape[-2:]:
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        return pos

    def outputs(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, stage in enumerate(self.stem):
            x = stage(x if i == 0 else self.pool(x))
            features.append(x)
        x = self.trans_dim(self.pool(x))
        x = x + self._position(*x.shape[-2:])
        tokens = _to_tokens(x)
        skips = []
        for modules, down in zip(self.encoder, self.down):
            for module in modules:
                tokens = module(tokens)
            skip = _to_map(tokens)
            skips.append(skip)
            tokens = _to_tokens(down(skip))
        for module in self.bottleneck:
            tokens = module(tokens)
        x = self.squeeze1(torch.cat([self.up1(_to_map(tokens)), skips[1]], dim=1))
        tokens = _to_tokens(x)
        for module in self.decoder1:
            tokens = module(tokens)
        tokens = _to_tokens(torch.cat([self.up2(_to_map(tokens)), skips[0]], dim=1))
        for module in self.decoder2:
            tokens = module(tokens)
        x = _to_map(tokens)
        for up, decode, feature in zip(self.up_stem, self.decode_stem, reversed(features)):
            x = decode(torch.cat([feature, up(x)], dim=1))
        return [self.head(x)]


def build_mtunet(*, in_channels: int = 2, width: Width = "slim") -> MTUNet:
    """MT-UNet (paper 003), three classes."""
    return MTUNet(in_channels, width)
