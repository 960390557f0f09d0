"""Probability map → binary mask → lesions, on the stored source frame of one view.

The mask is ``probability >= threshold`` (paper 001 "Experimental setup": pixels ≥ 0.5 are lesion). Each
8-connected component of the mask is a :class:`~segmentation.result.Lesion`: its pixel count, area
(pixel count × the source's pixel area from Pixel Spacing, PS3.3 10.7.1.3), centroid and bounding
box in (row, column) of the stored frame, and the peak and mean counts of the source pixels under it
(after Rescale Slope / Intercept). Lesions are numbered in raster order of their first pixel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from segmentation.result import Lesion, ViewResult
from segmentation.scan import ViewImage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def view_result(image: ViewImage, probability: np.ndarray, threshold: float = 0.5) -> ViewResult:
    """The :class:`ViewResult` of one view from its probability map on the stored source frame."""
    if probability.shape != (image.source.rows, image.source.columns):
        raise ValueError(
            f"probability map {probability.shape} does not match the {image.view.value} source frame "
            f"({image.source.rows} x {image.source.columns})"
        )
    probability = np.clip(probability, 0.0, 1.0).astype(np.float32)
    mask = (probability >= threshold).astype(np.uint8)
    return ViewResult(view=image.view, probability=probability, mask=mask, lesions=lesions(image, mask))


def lesions(image: ViewImage, mask: np.ndarray) -> tuple[Lesion, ...]:
    """The 8-connected components of a stored-frame mask of ``image`` as lesions."""
    labels, count = ndimage.label(mask != 0, structure=EIGHT_CONNECTED)
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
