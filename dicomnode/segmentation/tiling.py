"""Sliding windows and stitching (paper 002 §"Data preprocessing" step 4: 256 × 256, stride 128), and
padding for whole-view inference by fully convolutional networks.

Windows start at 0, stride, 2·stride… along each axis; the image is zero-padded at the bottom/right
(zero = no counts, the value outside the body) just enough for the last window to fit, so every pixel
is covered. With 256 × 1024 and the papers' 256 / 128 that is 7 windows, no padding.

Stitching: overlapping window probabilities are averaged with a separable triangular ("tent") weight
that is largest at the window centre and small (never zero) at its border. With stride = window / 2
the tents of neighbouring windows sum to a constant inside the image, so the result is a plain
weighted average in which each pixel is dominated by the window that saw the most context around
it; the seams at window borders, where a network lacks context, get little weight. At the image
border only one window covers a pixel and its value is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Tiling:
    """Window origins for an (H, W) image, and the padded shape they cover."""

    shape: tuple[int, int]
    window: int
    stride: int

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.stride <= self.window:
            raise ValueError(
                f"window {self.window} / stride {self.stride}: need window ≥ 1 and 1 ≤ stride ≤ window"
            )

    @property
    def padded_shape(self) -> tuple[int, int]:
        return tuple(_padded(n, self.window, self.stride) for n in self.shape)  # type: ignore[return-value]

    @property
    def origins(self) -> list[tuple[int, int]]:
        """(row, column) of each window's top-left pixel, row-major."""
        (h, w) = self.padded_shape
        return [
            (r, c)
            for r in range(0, h - self.window + 1, self.stride)
            for c in range(0, w - self.window + 1, self.stride)
        ]

    def windows(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) image → (N, C, window, window) windows, N = len(origins)."""
        padded = pad_to(image, self.padded_shape)
        k = self.window
        return np.stack([padded[:, r : r + k, c : c + k] for r, c in self.origins])

    def stitch(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, window, window) window probabilities → (H, W) float64, tent-weighted average, padding cut off."""
        if probabilities.shape != (len(self.origins), self.window, self.window):
            raise ValueError(
                f"expected {len(self.origins)} windows of {self.window}×{self.window}, "
                f"got {probabilities.shape}"
            )
        weight = tent(self.window)
        total = np.zeros(self.padded_shape, np.float64)
        norm = np.zeros(self.padded_shape, np.float64)
        k = self.window
        for (r, c), window in zip(self.origins, probabilities):
            total[r : r + k, c : c + k] += weight * window
            norm[r : r + k, c : c + k] += weight
        h, w = self.shape
        return (total / norm)[:h, :w]


def tent(size: int) -> np.ndarray:
    """Separable triangular weight, 1 at the centre falling linearly to about 2/size at the border."""
    centre = (size - 1) / 2
    ramp = 1.0 - np.abs(np.arange(size) - centre) / (centre + 1)
    return np.outer(ramp, ramp)


def pad_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad the last two axes at the bottom/right up to ``shape``."""
    h, w = image.shape[-2:]
    if h > shape[0] or w > shape[1]:
        raise ValueError(f"cannot pad {image.shape} down to {shape}")
    pad = [(0, 0)] * (image.ndim - 2) + [(0, shape[0] - h), (0, shape[1] - w)]
    return np.pad(image, pad)


def padded_to_multiple(shape: tuple[int, int], divisor: int) -> tuple[int, int]:
    """The smallest shape ≥ ``shape`` whose sides are multiples of ``divisor`` (whole-view inference)."""
    return tuple(-(-n // divisor) * divisor for n in shape)  # type: ignore[return-value]


def pad_batch_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """A batch ``(..., H, W)`` zero-padded at the bottom/right to multiples of ``divisor`` (the
    network's :attr:`~dicomnode.segmentation.networks.base.SegmentationNetwork.size_divisor`)."""
    h, w = padded_to_multiple((x.shape[-2], x.shape[-1]), divisor)
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def _padded(n: int, window: int, stride: int) -> int:
    if n <= window:
        return window
    return window + -(-(n - window) // stride) * stride
