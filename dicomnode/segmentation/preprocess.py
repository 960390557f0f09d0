"""From a :class:`~dicomnode.segmentation.scan.BoneScan` to network input, and from network output back to the
source frame. docs/segmentation.md; the steps run in this order, per view, on the canonical orientation:

1. **Resample** to the model spacing (2.26 mm, paper 001 "Dataset"), area-weighted so total counts are
   preserved (:mod:`dicomnode.segmentation.resample`).
2. **Suppress** non-bone hot spots — bladder, injection site, urine contamination — (paper 002
   "step 2: bladder region removal", whose rule is not published; ours): with ``R`` the body
   reference level (the ``percentile``-th percentile of body counts), every connected region of
   counts above ``suppress_clip × R`` that contains a pixel above ``suppress_factor × R`` (hysteresis
   thresholding) is clipped to ``suppress_clip × R``. Paper 002 notes that lesion uptake is far
   below bladder and injection-site uptake; a lesion hotter than ``suppress_factor × R`` (default 5,
   within the 1.5–10× range of metastasis-to-bone contrast) would be clipped too, but still stays
   at twice the bone level, visibly hot. The clipped region is kept as ``PreparedView.suppressed``.
3. **Normalise** counts (``normalisation``):
   - ``"body-percentile"`` (default): counts / ``R``. Counts scale with dose, uptake time, scan speed
     and patient size; the 95th percentile of body counts sits on normal bone in a whole-body scan
     (bone covers a larger share of body pixels than bladder, injection site and lesions together),
     so normal bone maps to about 1 whatever the count level, and unlike the maximum it does not
     move with the bladder or one hot lesion (paper 004 §2.1: "c_max varies largely from patient to
     patient").
   - ``"dataset-minmax"``: (counts − ``count_min``) / (``count_max`` − ``count_min``) clipped to
     [0, 1], with the minimum and maximum observed over the training set (paper 002 step 1); see
     :func:`fit_dataset_minmax`.
4. **Register** the other view onto the one being segmented by phase correlation
   (``skimage.registration.phase_cross_correlation`` on the normalised canonical views; integer or
   subpixel shift; a shift beyond ``max_shift_mm`` is distrusted and not applied, with a note).
5. **Aggregate** (``aggregation``): ``"stack"`` — channel 0 the view being segmented, channel 1 the
   other view registered into its frame (zeros when missing); ``"add"`` — paper 004 §2.3.3, the
   posterior mirrored (canonical) then added; we take the mean of the two views so the scale does not
   depend on whether the other view is present (one view alone when missing); ``"none"`` — the view
   alone. ``Preprocessing.in_channels`` is 2 for ``"stack"``, else 1.
6. **Tile** (``window``, ``stride``; :mod:`dicomnode.segmentation.tiling`): 256 × 256 windows with stride 128
   and tent-weighted stitching (paper 002 step 4), or ``window=None`` for whole-view inference,
   padded to the network's ``size_divisor``.

Public API (used by :mod:`dicomnode.segmentation.inference` and by ``train``):

- :class:`Preprocessing` — the settings; ``to_dict()`` / ``from_dict()`` for the model card.
- :func:`prepare` ``(scan, cfg) -> PreparedScan`` — per view a :class:`PreparedView` with
  ``image`` (C, H, W) float32 on the model grid, ``geometry`` (:class:`ViewGeometry`) and
  ``to_source(model_map)`` mapping a model-grid probability map back onto the stored source frame.
- :func:`prepare_label` ``(view_image, stored_mask, cfg) -> (H, W) uint8`` — a label drawn on the
  stored source frame, through exactly the same geometry as the image.
- :func:`fit_dataset_minmax` — the dataset min/max for ``"dataset-minmax"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import apply_hysteresis_threshold, threshold_otsu
from skimage.registration import phase_cross_correlation

from dicomnode.segmentation.cardsection import from_card_section
from dicomnode.segmentation.resample import ViewGeometry
from dicomnode.segmentation.scan import BoneScan, View, ViewImage
from dicomnode.segmentation.tiling import Tiling

log = logging.getLogger(__name__)

NORMALISATIONS = ("body-percentile", "dataset-minmax")
REGISTRATIONS = ("integer", "subpixel", "none")
AGGREGATIONS = ("stack", "add", "none")


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing settings, stored in the model card (``preprocessing``) and checked on load."""

    normalisation: str = "body-percentile"
    percentile: float = 95.0
    count_min: float = 0.0
    count_max: float | None = None
    spacing_mm: float = 2.26
    suppression: bool = True
    suppress_factor: float = 5.0
    suppress_clip: float = 2.0
    registration: str = "integer"
    max_shift_mm: float = 45.0
    aggregation: str = "stack"
    window: int | None = 256
    stride: int = 128

    def __post_init__(self) -> None:
        for name, allowed in (
            ("normalisation", NORMALISATIONS),
            ("registration", REGISTRATIONS),
            ("aggregation", AGGREGATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"preprocessing {name} {getattr(self, name)!r} is not one of {allowed}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"preprocessing percentile {self.percentile} must be in (0, 100]")
        if self.normalisation == "dataset-minmax" and (
            self.count_max is None or self.count_max <= self.count_min
        ):
            raise ValueError(
                "preprocessing dataset-minmax needs count_max > count_min "
                f"(got {self.count_min}, {self.count_max}); see fit_dataset_minmax"
            )
        if self.spacing_mm <= 0 or self.max_shift_mm < 0:
            raise ValueError("preprocessing spacing_mm must be > 0 and max_shift_mm ≥ 0")
        if not 1 < self.suppress_clip < self.suppress_factor:
            raise ValueError(
                f"preprocessing needs 1 < suppress_clip ({self.suppress_clip}) < suppress_factor "
                f"({self.suppress_factor})"
            )
        if self.window is not None:
            Tiling((self.window, self.window), self.window, self.stride)  # validates window / stride

    @property
    def in_channels(self) -> int:
        """Input channels the network needs: 2 for ``"stack"``, else 1."""
        return 2 if self.aggregation == "stack" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Build from a model card's ``preprocessing``; unknown keys are refused, not ignored."""
        return from_card_section(cls, data, "preprocessing")


@dataclass(frozen=True)
class PreparedView:
    """One view ready for a network: model-grid input and the way back to the source frame."""

    view: View
    image: np.ndarray  # (C, H, W) float32, canonical orientation, model spacing
    geometry: ViewGeometry
    body: np.ndarray  # (H, W) bool: inside the patient (:func:`body_mask`)
    suppressed: np.ndarray  # (H, W) bool: hot spots clipped by suppression (bladder, injection)
    reference: float  # body reference level R in model-grid counts

    def to_source(self, model_map: np.ndarray) -> np.ndarray:
        """A (H, W) model-grid map → float64 on the stored source frame (see :mod:`.resample`)."""
        return self.geometry.to_source(model_map)


@dataclass(frozen=True)
class PreparedScan:
    scan: BoneScan
    config: Preprocessing
    views: dict[View, PreparedView]
    notes: tuple[str, ...] = ()


def prepare(scan: BoneScan, cfg: Preprocessing) -> PreparedScan:
    """Run steps 1–5 on every view of ``scan`` (tiling is done by the caller with ``cfg``)."""
    notes: list[str] = []
    single: dict[View, PreparedView] = {}
    for view, image in scan.views.items():
        geometry = ViewGeometry.of(image, cfg.spacing_mm)
        counts = geometry.counts_to_model(image.counts)
        body = body_mask(counts)
        reference = reference_level(counts, body, cfg.percentile)
        counts, suppressed = suppress_hot_spots(counts, reference, cfg)
        if suppressed.any():
            notes.append(f"{view.value}: {int(suppressed.sum())} model pixels of hot spots clipped")
        normalised = normalise(counts, reference, cfg)[None]
        single[view] = PreparedView(view, normalised, geometry, body, suppressed, reference)

    shifts = _register(single, cfg, notes)
    views = {}
    for view, prepared in single.items():
        own = prepared.image[0]
        other_view = View.POSTERIOR if view is View.ANTERIOR else View.ANTERIOR
        other = None
        if other_view in single and cfg.aggregation != "none":
            other = _move(single[other_view].image[0], own.shape, shifts.get((view, other_view)), cfg)
        views[view] = replace(prepared, image=aggregate(own, other, cfg))
    return PreparedScan(scan=scan, config=cfg, views=views, notes=tuple(notes))


def prepare_label(view_image: ViewImage, stored_mask: np.ndarray, cfg: Preprocessing) -> np.ndarray:
    """A 0/1 mask on the stored source frame → the (H, W) uint8 model-grid mask :func:`prepare` uses."""
    return ViewGeometry.of(view_image, cfg.spacing_mm).mask_to_model(stored_mask)


def body_mask(counts: np.ndarray) -> np.ndarray:
    """Pixels inside the patient: Otsu's threshold on log smoothed counts, holes filled.

    Counts outside the body are scatter and noise (a few counts at most), inside they are soft
    tissue and bone; on a log scale the two populations separate and the few very hot pixels
    (bladder) barely weigh. The log is taken of counts + 5 % of the 90th percentile (a level inside
    the body, which covers a third or more of a whole-body image), so the mask does not depend on the
    count level and empty background does not run off to −∞.
    """
    smooth = ndimage.gaussian_filter(np.maximum(counts, 0).astype(np.float32), sigma=2.0)
    level = float(np.percentile(smooth, 90))
    if level <= 0:
        return np.zeros(counts.shape, bool)
    logs = np.log(smooth + 0.05 * level)
    if np.ptp(logs) == 0:
        return np.ones(counts.shape, bool)
    return ndimage.binary_fill_holes(logs > threshold_otsu(logs))


def reference_level(counts: np.ndarray, body: np.ndarray, percentile: float) -> float:
    """The body reference level ``R``: the given percentile of counts inside the body (> 0)."""
    values = counts[body] if body.any() else counts.ravel()
    level = float(np.percentile(values, percentile)) if values.size else 0.0
    return level if level > 0 else max(float(counts.max()), 1.0)


def suppress_hot_spots(
    counts: np.ndarray, reference: float, cfg: Preprocessing
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: clip non-bone hot spots above the reference level; returns (counts, clipped region)."""
    if not cfg.suppression:
        return counts, np.zeros(counts.shape, bool)
    region = apply_hysteresis_threshold(
        counts, cfg.suppress_clip * reference, cfg.suppress_factor * reference
    )
    clipped = np.where(region, np.minimum(counts, cfg.suppress_clip * reference), counts)
    return clipped.astype(np.float32), region


def normalise(counts: np.ndarray, reference: float, cfg: Preprocessing) -> np.ndarray:
    """Step 3: counts → network scale (see the module docstring)."""
    if cfg.normalisation == "dataset-minmax":
        assert cfg.count_max is not None  # checked in Preprocessing
        scaled = (counts - cfg.count_min) / (cfg.count_max - cfg.count_min)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)
    return (counts / np.float32(reference)).astype(np.float32)


def aggregate(image: np.ndarray, other: np.ndarray | None, cfg: Preprocessing) -> np.ndarray:
    """Step 5: the (C, H, W) network input of one view from it and the other view (registered)."""
    if cfg.aggregation == "stack":
        return np.stack([image, other if other is not None else np.zeros_like(image)])
    if cfg.aggregation == "add" and other is not None:
        return ((image + other) / 2)[None]
    return image[None]


def fit_dataset_minmax(scans: Iterable[BoneScan], cfg: Preprocessing) -> Preprocessing:
    """``cfg`` with ``normalisation="dataset-minmax"`` and the min/max of the scans' model-grid counts
    after suppression (paper 002 step 1, "observed maximum and minimum values in the dataset")."""
    low, high = np.inf, -np.inf
    for scan in scans:
        for image in scan.views.values():
            counts = ViewGeometry.of(image, cfg.spacing_mm).counts_to_model(image.counts)
            reference = reference_level(counts, body_mask(counts), cfg.percentile)
            counts = suppress_hot_spots(counts, reference, cfg)[0]
            low, high = min(low, float(counts.min())), max(high, float(counts.max()))
    if not np.isfinite(low) or high <= low:
        raise ValueError("fit_dataset_minmax needs at least one view with varying counts")
    return replace(cfg, normalisation="dataset-minmax", count_min=low, count_max=high)


def _register(
    single: Mapping[View, PreparedView],
    cfg: Preprocessing,
    notes: list[str],
) -> dict[tuple[View, View], np.ndarray]:
    """Step 4: shift that moves the posterior onto the anterior (and its inverse), keyed (to, from)."""
    if cfg.registration == "none" or cfg.aggregation == "none" or len(single) < 2:
        return {}
    anterior = single[View.ANTERIOR].image[0]
    posterior = single[View.POSTERIOR].image[0]
    if posterior.shape != anterior.shape:
        notes.append(f"posterior grid {posterior.shape} cropped/padded to the anterior's {anterior.shape}")
        posterior = _fit(posterior, anterior.shape)
    upsample = 10 if cfg.registration == "subpixel" else 1
    shift, _, _ = phase_cross_correlation(anterior, posterior, upsample_factor=upsample)
    shift = np.asarray(shift, dtype=np.float64)
    limit = cfg.max_shift_mm / cfg.spacing_mm
    if np.abs(shift).max() > limit:
        notes.append(
            f"registration shift {shift.tolist()} px exceeds {cfg.max_shift_mm} mm; views not shifted"
        )
        return {}
    if np.any(shift):
        notes.append(f"posterior registered onto anterior by {np.round(shift, 2).tolist()} model pixels")
    return {(View.ANTERIOR, View.POSTERIOR): shift, (View.POSTERIOR, View.ANTERIOR): -shift}


def _move(
    other: np.ndarray, shape: tuple[int, int], shift: np.ndarray | None, cfg: Preprocessing
) -> np.ndarray:
    """The other view brought onto this view's grid: same shape, shifted by the registration."""
    other = _fit(other, shape)
    if shift is None or not np.any(shift):
        return other
    order = 1 if cfg.registration == "subpixel" else 0
    return ndimage.shift(other, shift, order=order, mode="constant", cval=0.0).astype(np.float32)


def _fit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad at the bottom/right to ``shape`` (views whose matrices differ slightly)."""
    out = np.zeros(shape, np.float32)
    h, w = min(shape[0], image.shape[0]), min(shape[1], image.shape[1])
    out[:h, :w] = image[:h, :w]
    return out
