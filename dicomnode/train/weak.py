"""Weak supervision from boxes: pixel masks, uncertain pixels and hard negatives (docs/training.md).

BS-80K (Huang et al., Comput Biol Med 151:106221, 2022) annotates hot spots with boxes, not
outlines: ``Abnormal`` (suspected metastasis, "nidus") and ``Normal`` (physiological or benign hot
spot). The boxes are loose (median 18 × 19 pixels on the development half, up to 68 × 125), so a box
is not a mask. From each box on the stored frame we derive three things:

- **Lesion pixels** of an ``Abnormal`` box: the hot spot above the local bone background. With ``b``
  the median of a ring of ``ring`` pixels around the box (the bone and soft tissue the lesion sits
  in) and ``p`` the peak of the lightly smoothed counts inside the box, the lesion is the region of
  smoothed counts above ``b + fraction × (p − b)`` connected to the peak: a background-subtracted
  half-maximum contour by default (the contour rule of threshold-based nuclear-medicine delineation,
  Erdi et al., Cancer 80:2505, 1997), which is also how the simulator defines its truth footprint
  (:mod:`dicomnode.synth.simulate`), so the two label sources agree.
- **Uncertain pixels**: the rest of an ``Abnormal`` box (the annotator drew it around something hot;
  whether its rim is lesion is unknown), excluded from the pixel loss. A box whose peak does not rise
  ``min_contrast`` above its background (faint lesions: 7 of 114 development boxes peak below the
  view's 95th percentile) gets no lesion pixels and is wholly uncertain; it still counts in the
  lesion-level evaluation.
- **Hard negatives**: the pixels of ``Normal`` boxes (bladder, kidneys, injection site, degenerative
  joints: the false positives the shipped model made on real scans), weighted up in the pixel loss
  (:func:`dicomnode.train.losses.segmentation_loss`), except where they overlap a lesion.

Codes of the region map (uint8, stored layout): :data:`PLAIN`, :data:`UNCERTAIN`,
:data:`HARD_NEGATIVE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PLAIN, UNCERTAIN, HARD_NEGATIVE = 0, 1, 2
ABNORMAL, NORMAL = "Abnormal", "Normal"


@dataclass(frozen=True)
class Box:
    """An annotated box on a stored frame: inclusive pixel corners (Pascal VOC ``bndbox``)."""

    kind: str  # ABNORMAL or NORMAL
    row_min: int
    column_min: int
    row_max: int
    column_max: int

    def __post_init__(self) -> None:
        if self.kind not in (ABNORMAL, NORMAL):
            raise ValueError(f"box kind must be {ABNORMAL!r} or {NORMAL!r}, not {self.kind!r}")
        if self.row_max < self.row_min or self.column_max < self.column_min or min(self.row_min, self.column_min) < 0:
            raise ValueError(f"box corners {self} are not ordered non-negative pixels")

    def clipped(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """The box as slices of an array of ``shape`` (corners beyond the frame are clipped)."""
        return (slice(min(self.row_min, shape[0]), min(self.row_max + 1, shape[0])),
                slice(min(self.column_min, shape[1]), min(self.column_max + 1, shape[1])))

    def touches(self, mask: np.ndarray) -> bool:
        """Whether any non-zero pixel of ``mask`` lies inside the box (the BS-80K hit rule)."""
        return bool(np.any(mask[self.clipped(mask.shape)]))


@dataclass(frozen=True)
class WeakLabelRules:
    """Parameters of the box → mask rule (see the module docstring)."""

    fraction: float = 0.5  # contour at background + fraction × (peak − background): half maximum
    ring: int = 4  # pixels around the box the background is taken from
    smoothing: float = 1.0  # Gaussian σ in pixels against Poisson and 8-bit noise
    min_contrast: float = 0.15  # peak must exceed background by this fraction of the background

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1 or self.ring < 1 or self.smoothing < 0 or self.min_contrast < 0:
            raise ValueError(f"invalid weak-label rules {self}")


def lesion_in_box(counts: np.ndarray, box: Box, rules: WeakLabelRules = WeakLabelRules()) -> np.ndarray | None:
    """The lesion pixels of one ``Abnormal`` box on ``counts`` (stored frame), or ``None`` when the
    box holds no hot spot that rises ``min_contrast`` above its ring's background."""
    counts = np.asarray(counts, dtype=np.float32)
    smooth = ndimage.gaussian_filter(counts, rules.smoothing) if rules.smoothing else counts
    rows, columns = box.clipped(counts.shape)
    if rows.stop <= rows.start or columns.stop <= columns.start:
        return None
    outer = (slice(max(rows.start - rules.ring, 0), rows.stop + rules.ring),
             slice(max(columns.start - rules.ring, 0), columns.stop + rules.ring))
    ring = np.ones(smooth[outer].shape, bool)
    ring[rows.start - outer[0].start : rows.stop - outer[0].start,
         columns.start - outer[1].start : columns.stop - outer[1].start] = False
    inside = smooth[rows, columns]
    background = float(np.median(smooth[outer][ring])) if ring.any() else float(inside.min())
    peak = float(inside.max())
    if peak - background <= rules.min_contrast * max(background, 1e-6):
        return None
    hot = inside > background + rules.fraction * (peak - background)
    labels, _ = ndimage.label(hot, structure=np.ones((3, 3), bool))
    peak_label = labels[np.unravel_index(int(np.argmax(inside)), inside.shape)]
    mask = np.zeros(counts.shape, np.uint8)
    mask[rows, columns] = labels == peak_label
    return mask


def weak_labels(
    counts: np.ndarray, boxes: Sequence[Box], rules: WeakLabelRules = WeakLabelRules()
) -> tuple[np.ndarray, np.ndarray]:
    """The lesion mask and the region map (codes above) of one stored frame from its boxes."""
    mask = np.zeros(counts.shape, np.uint8)
    regions = np.zeros(counts.shape, np.uint8)
    for box in boxes:
        if box.kind == NORMAL:
            regions[box.clipped(counts.shape)] = HARD_NEGATIVE
    for box in boxes:
        if box.kind != ABNORMAL:
            continue
        regions[box.clipped(counts.shape)] = UNCERTAIN
        lesion = lesion_in_box(counts, box, rules)
        if lesion is not None:
            mask |= lesion
    regions[mask != 0] = PLAIN
    return mask, regions
