"""Lesion outlines: closed, around every lesion pixel, around no outside neighbour."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib.path import Path as Polygon

from dicomnode.pipeline.results.planar.contours import lesion_outlines
from dicomnode.segmentation.result import ViewResult
from dicomnode.segmentation.scan import View
from tests.test_results_inputs import lesions_of


def _view_result(mask: np.ndarray) -> ViewResult:
    counts = np.ones(mask.shape, np.float32)
    return ViewResult(view=View.ANTERIOR, probability=mask.astype(np.float32), mask=mask,
                      lesions=lesions_of(View.ANTERIOR, mask, counts, 1.0))


def _shapes() -> np.ndarray:
    mask = np.zeros((64, 48), np.uint8)
    mask[5, 5] = 1  # a single pixel
    mask[10:20, 10:14] = 1  # a bar
    ring = np.zeros((9, 9), np.uint8)
    ring[1:8, 1:8] = 1
    ring[3:6, 3:6] = 0  # a hole
    mask[30:39, 30:39] = ring
    mask[50, 40] = mask[51, 41] = mask[52, 42] = 1  # diagonal: one 8-connected lesion
    mask[0:3, 45:48] = 1  # touching the frame's corner
    return mask


def test_outlines_enclose_each_lesion_and_nothing_beside_it() -> None:
    mask = _shapes()
    result = _view_result(mask)
    outlines = lesion_outlines(result)
    assert len(outlines) == len(result.lesions) == 5
    rows, cols = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)  # DICOM (column, row)
    for lesion, outline in zip(result.lesions, outlines, strict=True):
        assert outline.shape[1] == 2 and outline.dtype == np.float32
        np.testing.assert_array_equal(outline[0], outline[-1])  # closed polyline
        inside = Polygon(outline).contains_points(centres).reshape(mask.shape)
        r0, c0, r1, c1 = lesion.bbox
        own = np.zeros_like(mask, bool)
        own[r0:r1, c0:c1] = mask[r0:r1, c0:c1].astype(bool)
        assert inside[own].all()  # every pixel of the lesion (hole pixels may be inside too)
        ring = np.zeros_like(own)  # 4-neighbours outside the bounding box must be outside
        ring[max(r0 - 1, 0) : r1 + 1, max(c0 - 1, 0) : c1 + 1] = True
        ring[r0:r1, c0:c1] = False
        assert not inside[ring].any()
        assert outline[:, 0].min() >= c0 and outline[:, 0].max() <= c1
        assert outline[:, 1].min() >= r0 and outline[:, 1].max() <= r1


def test_a_lesion_that_is_not_in_the_mask_is_an_error() -> None:
    mask = _shapes()
    result = _view_result(mask)
    wrong = dataclasses.replace(result.lesions[1], pixel_count=result.lesions[1].pixel_count + 1)
    with pytest.raises(ValueError, match="matches no connected component"):
        lesion_outlines(dataclasses.replace(result, lesions=(wrong,)))
    outside = dataclasses.replace(result.lesions[0], bbox=(60, 40, 70, 50))
    with pytest.raises(ValueError, match="outside the frame"):
        lesion_outlines(dataclasses.replace(result, lesions=(outside,)))
