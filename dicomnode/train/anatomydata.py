"""Simulated views with their exact anatomy labels, augmented toward real whole-body scans.

The anatomy map (:mod:`dicomnode.segmentation.anatomymap`) is trained on the simulator alone: it knows the
label of every pixel it draws (:mod:`dicomnode.synth.labels`). What differs between the simulator
and real cameras is covered by augmentation, each step drawn per view:

- **count level**: binomial thinning to 10–100 % of the counts (low-dose, fast scans);
- **8-bit and 16-bit**: half the views are stored as 8 bits, scaled so that a high percentile
  (99.0–99.99 %) maps to 255 and clipped (BS-80K went through 8-bit PNG; the bladder saturates),
  the other half keep their 16-bit counts (Siemens and GE whole-body images);
- **body size and field**: a zoom of 0.85–1.15 (the simulator's 150–195 cm adults, plus spacing
  differences between cameras) and a vertical shift of ±15 cm;
- **views cut at the head or the feet**: a quarter of the views lose everything above a row
  between the vertex and the shoulders, or below a row between the knees and the soles (labels
  there become background: nothing was imaged);
- **arm positions**: drawn by the simulator itself (sides, on the abdomen, abducted);
- left–right flips (the labels are not sided).

Images are normalised exactly as at inference (:mod:`dicomnode.segmentation.preprocess`, the card's
``preprocessing``): counts over the 95th percentile of body counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicomnode.synth.simulate import simulate_study
from dicomnode.segmentation.anatomy import AnatomyLabel
from dicomnode.segmentation.preprocess import Preprocessing, body_mask, normalise, reference_level
from dicomnode.segmentation.scan import View

#: The anatomy map's grid: 4.8 mm pixels (a 1024 × 256 view at 2.4 mm becomes 512 × 128).
MAP_SPACING_MM = 4.8
MAP_SHAPE = (512, 128)
MAP_PREPROCESSING = Preprocessing(
    spacing_mm=MAP_SPACING_MM, suppression=False, registration="none", aggregation="none", window=None,
)


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of each step (module docstring)."""

    eight_bit: float = 0.5
    thinning_min_keep: float = 0.1
    zoom: float = 0.15
    shift_mm: float = 150.0
    cut: float = 0.25
    flip_lr: float = 0.5


@dataclass(frozen=True)
class SimulatedView:
    """One canonical view on the map grid: raw counts and labels (before augmentation)."""

    counts: np.ndarray  # float32 (H, W)
    labels: np.ndarray  # uint8 (H, W)


def simulated_views(seed: int, variant: str | None = None) -> list[SimulatedView]:
    """Both views of simulated study ``seed`` (with a normal ``variant`` of
    :mod:`dicomnode.synth.variants` if given) on the map grid, canonical orientation."""
    study = simulate_study(seed, rows=MAP_SHAPE[0], columns=MAP_SHAPE[1], spacing_mm=MAP_SPACING_MM,
                           variant=variant)
    views = []
    for view in View:
        flip = (slice(None), slice(None, None, -1)) if view is View.POSTERIOR else (slice(None), slice(None))
        views.append(SimulatedView(study.images[view][flip].astype(np.float32),
                                   np.ascontiguousarray(study.anatomy[view][flip])))
    return views


def augment(view: SimulatedView, rng: np.random.Generator, cfg: Augmentation = Augmentation()
            ) -> tuple[np.ndarray, np.ndarray]:
    """A randomly augmented, normalised (image, labels) pair on the map grid."""
    counts, labels = view.counts, view.labels
    keep = float(np.exp(rng.uniform(np.log(cfg.thinning_min_keep), 0.0)))
    counts = rng.binomial(counts.astype(np.int64), keep).astype(np.float32)
    if rng.uniform() < cfg.eight_bit:
        top = float(np.percentile(counts, rng.uniform(99.0, 99.99)))
        counts = np.clip(np.round(counts * 255.0 / max(top, 1.0)), 0, 255).astype(np.float32)
    zoom = 1.0 + rng.uniform(-cfg.zoom, cfg.zoom)
    counts = _fit(ndimage.zoom(counts, zoom, order=1), MAP_SHAPE)
    labels = _fit(ndimage.zoom(labels, zoom, order=0), MAP_SHAPE)
    shift = round(rng.uniform(-cfg.shift_mm, cfg.shift_mm) / MAP_SPACING_MM)
    counts, labels = _shift_rows(counts, shift), _shift_rows(labels, shift)
    if rng.uniform() < cfg.cut:
        counts, labels = _cut(counts, labels, rng)
    if rng.uniform() < cfg.flip_lr:
        counts, labels = counts[:, ::-1], labels[:, ::-1]
    body = body_mask(counts)
    image = normalise(counts, reference_level(counts, body, MAP_PREPROCESSING.percentile), MAP_PREPROCESSING)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def _fit(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad around the centre of the columns and from the top of the rows."""
    out = np.zeros(shape, array.dtype)
    h = min(shape[0], array.shape[0])
    w = min(shape[1], array.shape[1])
    c_in, c_out = (array.shape[1] - w) // 2, (shape[1] - w) // 2
    out[:h, c_out:c_out + w] = array[:h, c_in:c_in + w]
    return out


def _shift_rows(array: np.ndarray, shift: int) -> np.ndarray:
    out = np.zeros_like(array)
    if shift >= 0:
        out[shift:] = array[: array.shape[0] - shift]
    else:
        out[:shift] = array[-shift:]
    return out


def _cut(counts: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Zero the field above a row in the head/neck or below a row in the legs (module docstring)."""
    counts, labels = counts.copy(), labels.copy()
    rows = np.flatnonzero((labels != AnatomyLabel.BACKGROUND).any(axis=1))
    if rows.size < 10:
        return counts, labels
    top, bottom = int(rows[0]), int(rows[-1])
    height = bottom - top
    if rng.uniform() < 0.5:
        row = top + int(rng.uniform(0.0, 0.18) * height)  # vertex … shoulders
        counts[:row], labels[:row] = 0, AnatomyLabel.BACKGROUND
    else:
        row = top + int(rng.uniform(0.72, 1.0) * height)  # knees … soles
        counts[row:], labels[row:] = 0, AnatomyLabel.BACKGROUND
    return counts, labels
