"""Probability map → binary mask → lesions, on the stored source frame of one view.

The mask is ``probability >= threshold`` (paper 001 "Experimental setup": pixels ≥ 0.5 are lesion),
filtered by the model card's operating point (:class:`OperatingPoint`, chosen on validation folds,
docs/training.md): a component is kept only when its peak probability reaches ``peak_threshold``
(hysteresis thresholding: a confident core, grown to ``threshold``) and its area reaches
``min_area_mm2``. With the defaults nothing is filtered. Each 8-connected component of the mask is a :class:`~dicomnode.segmentation.result.Lesion`: its pixel count, area
(pixel count × the source's pixel area from Pixel Spacing, PS3.3 10.7.1.3), centroid and bounding
box in (row, column) of the stored frame, and the peak and mean counts of the source pixels under it
(after Rescale Slope / Intercept). Lesions are numbered in raster order of their first pixel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dicomnode.segmentation.calibration import Calibration
from dicomnode.segmentation.cardsection import from_card_section
from dicomnode.segmentation.result import Lesion, ViewResult
from dicomnode.segmentation.scan import ViewImage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class OperatingPoint:
    """A model card's ``operating_point``: how probabilities become reported lesions."""

    peak_threshold: float | None = None  # a lesion's peak probability must reach this (None: threshold)
    min_area_mm2: float = 0.0  # smaller components are dropped
    test_time_flip: bool = False  # average the probability with that of the left–right mirrored view
    calibration: Calibration | None = None  # a focus's peak → the probability it reports

    def __post_init__(self) -> None:
        if self.peak_threshold is not None and not 0 < self.peak_threshold <= 1:
            raise ValueError(f"operating point peak_threshold {self.peak_threshold} must be in (0, 1]")
        if self.min_area_mm2 < 0:
            raise ValueError(f"operating point min_area_mm2 {self.min_area_mm2} must be ≥ 0")

    def to_dict(self) -> dict[str, Any]:
        """The card's section; ``calibration`` only where fitted."""
        data = asdict(self)
        if data["calibration"] is None:
            del data["calibration"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        fitted = data.get("calibration")
        if fitted is not None:
            if not isinstance(fitted, Mapping):
                raise ValueError(f"operating point calibration must be an object {{slope, intercept}}, got {fitted!r}")
            data = {**data, "calibration": Calibration.from_dict(fitted)}
        return from_card_section(cls, data, "operating point")


def lesion_mask(
    probability: np.ndarray, threshold: float, point: OperatingPoint, pixel_area_mm2: float
) -> np.ndarray:
    """``probability >= threshold``, keeping only the components the operating point accepts."""
    peak = point.peak_threshold if point.peak_threshold is not None else threshold
    if peak <= threshold and point.min_area_mm2 <= 0:
        return (probability >= threshold).astype(np.uint8)
    labels, peaks, areas = components(probability, threshold, pixel_area_mm2)
    keep = np.concatenate([[False], (peaks >= peak) & (areas >= point.min_area_mm2)])
    return keep[labels].astype(np.uint8)


def components(probability: np.ndarray, threshold: float, pixel_area_mm2: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate lesions of a map: 8-connected components of ``probability ≥ threshold`` as a
    label image (0 background, 1…n), and each component's peak probability and area in mm²."""
    labels, count = ndimage.label(probability >= threshold, structure=EIGHT_CONNECTED)
    index = np.arange(1, count + 1)
    if count == 0:
        return labels, np.zeros(0), np.zeros(0)
    peaks = np.asarray(ndimage.maximum(probability, labels, index), dtype=float)
    areas = np.asarray(ndimage.sum_labels(np.ones_like(probability), labels, index), dtype=float) * pixel_area_mm2
    return labels, peaks, areas


def view_result(
    image: ViewImage, probability: np.ndarray, threshold: float = 0.5, point: OperatingPoint = OperatingPoint()
) -> ViewResult:
    """The :class:`ViewResult` of one view from its probability map on the stored source frame."""
    if probability.shape != (image.source.rows, image.source.columns):
        raise ValueError(
            f"probability map {probability.shape} does not match the {image.view.value} source frame "
            f"({image.source.rows} x {image.source.columns})"
        )
    probability = np.clip(probability, 0.0, 1.0).astype(np.float64)  # float64: peaks near 1 stay ordered
    mask = lesion_mask(probability, threshold, point, image.pixel_area_mm2)
    return ViewResult(view=image.view, probability=probability, mask=mask, lesions=lesions(image, mask))


def lesion_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected components of a mask as a label image (0 background, 1…n) and their number:
    the label of a pixel is the ``label`` of the lesion :func:`lesions` makes of its component."""
    return ndimage.label(mask != 0, structure=EIGHT_CONNECTED)


def lesions(image: ViewImage, mask: np.ndarray) -> tuple[Lesion, ...]:
    """The 8-connected components of a stored-frame mask of ``image`` as lesions."""
    labels, count = lesion_labels(mask)
    if count == 0:
        return ()
    counts = image.source.to_stored(image.counts)
    index = np.arange(1, count + 1)
    pixels = ndimage.sum_labels(np.ones_like(counts), labels, index)
    peaks = ndimage.maximum(counts, labels, index)
    means = ndimage.mean(counts, labels, index)
    centroids = ndimage.center_of_mass(np.ones_like(counts), labels, index)
    boxes = ndimage.find_objects(labels)
    found = []
    for label, n, peak, mean, centroid, box in zip(index, pixels, peaks, means, centroids, boxes):
        rows, cols = box
        found.append(
            Lesion(
                view=image.view,
                label=int(label),
                pixel_count=int(n),
                area_mm2=float(n) * image.pixel_area_mm2,
                centroid=(float(centroid[0]), float(centroid[1])),
                bbox=(rows.start, cols.start, rows.stop, cols.stop),
                peak_counts=float(peak),
                mean_counts=float(mean),
            )
        )
    return tuple(found)
