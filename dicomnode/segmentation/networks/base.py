"""The contract every segmentation network keeps (the package's registry builds them by name).

A network takes ``(N, in_channels, H, W)`` float32 normalised counts and returns lesion logits
``(N, 1, H, W)`` in eval mode; in training mode it returns a list of logits, the main output first,
then any deep-supervision outputs, all at ``(N, 1, H, W)`` (docs/segmentation.md). ``in_channels``
is 2 for the product input (channel 0 the view being segmented, channel 1 the other view registered
and mirrored into its frame) or 1 (a single view, or paper 004's "mirrored then added" sum).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Width = str | int
"""``"paper"`` (the channel counts the paper states), ``"slim"`` (a CPU width) or a base channel count."""


class SegmentationNetwork(nn.Module):
    """Base class of every network in :mod:`dicomnode.segmentation.networks`.

    Subclasses set :attr:`window` and :attr:`size_divisor`, build :attr:`head` and implement
    :meth:`outputs`; the base class checks the input and applies the eval/training output contract,
    so no subclass repeats it. A network with deep supervision declares its other output heads in
    :meth:`logit_heads`.
    """

    in_channels: int
    width: Width
    window: int | None = None
    """``None``: fully convolutional (any H, W that are multiples of :attr:`size_divisor`);
    otherwise the fixed square input size the network needs (inference must tile into windows)."""
    size_divisor: int = 1
    """H and W must be multiples of this (the product of the down-sampling strides)."""
    classes: int = 1
    """Logit channels: 1 (one lesion logit, sigmoid) for the planar networks; more for a network that
    returns one logit per class (softmax over channels, e.g. :mod:`.mtunet`'s three)."""

    def __init__(self, in_channels: int, width: Width) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        self.in_channels = in_channels
        self.width = width

    head: nn.Conv2d
    """The biased 1×1 convolution whose output is the main logit map."""

    def outputs(self, x: Tensor) -> list[Tensor]:
        """All logits for a checked input: main output first, then deep supervision (training only)."""
        raise NotImplementedError

    def logit_heads(self) -> dict[str, nn.Conv2d]:
        """The convolutions whose outputs are the logit maps :meth:`outputs` returns (a deep-supervision
        map possibly upsampled to the input size), by module name, main output first. Training sets
        their biases to the lesion prior (:func:`dicomnode.train.loop.init_output_prior`)."""
        return {"head": self.head}

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # noqa: D102 - contract in the class docstring
        self.check_input(x)
        logits = self.outputs(x)
        return logits if self.training else logits[0]

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`ValueError` with a clear message for an input this network cannot take."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects a (N, C, H, W) tensor, got {shape}")
        _, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_channels} input channel(s), got {c}"
            )
        weights = next(self.parameters())
        if x.dtype != weights.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"{type(self).__name__} has {weights.dtype} weights but got a {x.dtype} input; "
                "pass normalised counts as float32 (or run under torch.autocast)"
            )
        if self.window is not None and (h, w) != (self.window, self.window):
            raise ValueError(
                f"{type(self).__name__} takes only {self.window}×{self.window} windows, got {h}×{w}; "
                "tile the view into windows (dicomnode.segmentation.inference)"
            )
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(
                f"{type(self).__name__} needs H and W to be multiples of {self.size_divisor}, "
                f"got {h}×{w}; pad the input"
            )


def resolve_width(width: Width, *, paper: int, slim: int) -> int:
    """Turn a :data:`Width` into a base channel count, given the network's paper and slim values."""
    if width == "paper":
        return paper
    if width == "slim":
        return slim
    if isinstance(width, int) and not isinstance(width, bool) and width >= 1:
        return width
    raise ValueError(f"width must be 'paper', 'slim' or a positive int, got {width!r}")
