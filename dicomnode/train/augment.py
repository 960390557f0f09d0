"""Training-time augmentation that keeps the two views of a study consistent with each other.

- Count level, before preprocessing: **binomial thinning** of the raw counts. Keeping each detected
  photon with probability ``k`` turns Poisson(λ) counts into exactly Poisson(kλ) counts, i.e. the same
  patient imaged with a shorter acquisition or a lower dose (the count-level variation of
  Gustafsson et al. 2022; docs/simulation.md). Both views get the same ``k``, as they
  come from one acquisition.
- Count level, before preprocessing: **8-bit export** (:func:`quantise_scan`). Public collections
  such as BS-80K went through 8-bit PNG (values 0–255, some studies saturated at 255), while cameras
  send 16-bit counts (real Siemens whole-body views: hottest pixel 185–18,767 counts). Rescaling a
  study so that its body reference level lands at a drawn 8-bit value (the development BS-80K views
  have median 40, range 28–159; docs/training.md), rounding and clipping at 255 lets one model see both.
- Geometry, on a model-grid sample (all channels and the label together, so the view being segmented
  and the registered other view stay aligned): a left–right flip (patients are near left–right
  symmetric, and paper 004 §3.2.1 flips), and a small rotation / scaling / translation
  (paper 004 §3.2.1 "flipping, rotation, and translation"). No up–down flip: a head-down bone scan is
  not a scan anyone acquires.
- Intensity, on the normalised input: a gain and a gamma change, for the spread in uptake and
  normalisation between patients and sites.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from dicomnode.segmentation.scan import BoneScan

from .config import AugmentSection


def thin_counts(counts: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning: each count is kept with probability ``keep``; returns float32 counts."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
    if counts.size and float(counts.min()) < 0:
        raise ValueError("counts must be non-negative to be thinned")
    whole = np.rint(counts).astype(np.int64)
    return rng.binomial(whole, keep).astype(np.float32)


def thin_scan(scan: BoneScan, keep: float, rng: np.random.Generator) -> BoneScan:
    """The same study with both views thinned by the same keep fraction."""
    views = {
        name: dataclasses.replace(image, counts=thin_counts(image.counts, keep, rng))
        for name, image in (("anterior", scan.anterior), ("posterior", scan.posterior))
        if image is not None
    }
    return dataclasses.replace(scan, **views)


def quantise_scan(scan: BoneScan, reference: float, target: float) -> BoneScan:
    """Both views rescaled by ``target / reference``, rounded and clipped to 0–255 (an 8-bit export).

    ``reference`` is the study's body reference level in its own counts (the same scale for both
    views, as one acquisition's export uses one scaling)."""
    if reference <= 0 or not 0 < target < 255:
        raise ValueError(f"quantise needs reference > 0 and 0 < target < 255, got {reference}, {target}")
    scale = np.float32(target / reference)
    views = {
        name: dataclasses.replace(image, counts=np.clip(np.rint(image.counts * scale), 0, 255).astype(np.float32))
        for name, image in (("anterior", scan.anterior), ("posterior", scan.posterior))
        if image is not None
    }
    return dataclasses.replace(scan, **views)


def scan_reference(scan: BoneScan) -> float:
    """The body reference level of a study (largest over its views, on the source grid)."""
    from dicomnode.segmentation.preprocess import body_mask, reference_level

    return max(reference_level(im.counts, body_mask(im.counts), 95.0) for im in scan.views.values())


def flip_lr(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror all channels and the label left–right together."""
    return np.ascontiguousarray(image[..., ::-1]), np.ascontiguousarray(label[..., ::-1])


def small_affine(
    image: np.ndarray,
    label: np.ndarray,
    *,
    degrees: float,
    scale: float,
    shift: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``degrees``, scale by ``scale`` and shift by ``shift`` (rows, columns) about the centre.

    The image (C, H, W) is resampled linearly, the label (H, W) by nearest neighbour so it stays 0/1.
    """
    theta = math.radians(degrees)
    # output -> input mapping: inverse of (scale × rotation)
    matrix = np.array(
        [[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]
    ) / scale
    centre = (np.array(label.shape, dtype=float) - 1) / 2
    offset = centre - matrix @ (centre + np.asarray(shift, dtype=float))
    warped = np.stack(
        [
            ndimage.affine_transform(channel, matrix, offset=offset, order=1, mode="constant", cval=0.0)
            for channel in image
        ]
    ).astype(image.dtype)
    warped_label = ndimage.affine_transform(label, matrix, offset=offset, order=0, mode="constant", cval=0)
    return warped, warped_label.astype(label.dtype)


def gain_gamma(image: np.ndarray, *, gain: float, gamma: float) -> np.ndarray:
    """``gain × max × (x / max)^gamma`` per channel on the non-negative normalised input."""
    out = np.empty_like(image)
    for i, channel in enumerate(image):
        clipped = np.clip(channel, 0, None)
        peak = float(clipped.max())
        out[i] = gain * (peak * (clipped / peak) ** gamma if peak > 0 else clipped)
    return out


class Augmenter:
    """Draws the augmentations of :class:`AugmentSection` from one random generator."""

    def __init__(self, config: AugmentSection, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng

    def scan(self, scan: BoneScan) -> BoneScan:
        """Count-level augmentation of a whole study (before preprocessing)."""
        c = self.config
        if c.thinning and self.rng.random() < c.thinning:
            scan = thin_scan(scan, float(self.rng.uniform(c.thinning_min_keep, 1.0)), self.rng)
        if c.quantise and self.rng.random() < c.quantise:
            low, high = c.quantise_reference
            scan = quantise_scan(scan, scan_reference(scan), float(self.rng.uniform(low, high)))
        return scan

    def sample(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Geometric and intensity augmentation of one model-grid sample (C, H, W) + (H, W)."""
        c, rng = self.config, self.rng
        if rng.random() < c.flip_lr:
            image, label = flip_lr(image, label)
        if c.affine and rng.random() < c.affine:
            image, label = small_affine(
                image,
                label,
                degrees=float(rng.uniform(-c.rotate_degrees, c.rotate_degrees)),
                scale=float(rng.uniform(1 - c.scale, 1 + c.scale)),
                shift=tuple(rng.uniform(-c.translate_pixels, c.translate_pixels, size=2)),
            )
        if c.intensity and rng.random() < c.intensity:
            image = gain_gamma(
                image,
                gain=float(rng.uniform(1 - c.gain, 1 + c.gain)),
                gamma=float(rng.uniform(1 - c.gamma, 1 + c.gamma)),
            )
        return image, label
