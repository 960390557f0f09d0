"""Closed outlines of lesions, in DICOM pixel coordinates of the stored source frame.

GSPS graphics (PS3.3 C.10.5.1.2) and SR spatial coordinates (PS3.3 C.18.6.1.1) both use
(column, row) with the top-left corner of the top-left pixel at (0, 0), so a pixel's centre is at
(c + 0.5, r + 0.5). An outline is the iso-line at 0.5 of the lesion's binary mask (marching
squares, with diagonal neighbours connected as for the 8-connected lesion), which runs through the
edges between the lesion's border pixels and their outside neighbours. It is closed: the first
point is repeated at the end (a closed POLYLINE, PS3.3 C.10.5.1.2 and C.18.6.1.2).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from scipy import ndimage
from skimage import measure

from dicomnode.segmentation.result import Lesion, ViewResult

_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)

#: The one colour of lesions in every result object: SC outlines (RGB), GSPS layer and SEG segment
#: (as CIELab, PS3.3 C.10.7.1.1 and C.8.20.2: Recommended Display CIELab Value).
LESION_RGB = (230, 0, 0)
LESION_CIELAB = hd.color.CIELabColor.from_rgb(*LESION_RGB)


def lesion_outlines(view_result: ViewResult) -> list[np.ndarray]:
    """One closed outline per lesion of ``view_result`` (same order), as (N, 2) float32 (col, row).

    Raises ``ValueError`` when a lesion does not match a connected component of the mask: the
    lesions and the mask of a result must describe the same pixels.
    """
    return [_outline(view_result.mask, lesion) for lesion in view_result.lesions]


def _outline(mask: np.ndarray, lesion: Lesion) -> np.ndarray:
    row0, col0, row1, col1 = lesion.bbox
    rows, columns = mask.shape
    if not (0 <= row0 < row1 <= rows and 0 <= col0 < col1 <= columns):
        raise ValueError(
            f"{lesion.view.value} lesion {lesion.label}: bbox {lesion.bbox} is outside the frame"
        )
    crop = mask[row0:row1, col0:col1].astype(bool)
    labels, count = ndimage.label(crop, structure=_EIGHT_CONNECTED)
    component = None
    for label in range(1, count + 1):
        candidate = labels == label
        spans = candidate.any(axis=1)[[0, -1]].all() and candidate.any(axis=0)[[0, -1]].all()
        if spans and int(candidate.sum()) == lesion.pixel_count:
            component = candidate
            break
    if component is None:
        raise ValueError(
            f"{lesion.view.value} lesion {lesion.label} ({lesion.pixel_count} pixels, bbox "
            f"{lesion.bbox}) matches no connected component of the mask"
        )
    padded = np.pad(component.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5, fully_connected="high")
    outer = max(contours, key=len)  # the outer boundary is the longest; others are holes
    # padded (row, col) -> frame (row, col) -> DICOM (column, row) of pixel edges
    rows_px = outer[:, 0] - 1 + row0 + 0.5
    cols_px = outer[:, 1] - 1 + col0 + 0.5
    points = np.stack([cols_px, rows_px], axis=1).astype(np.float32)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points
