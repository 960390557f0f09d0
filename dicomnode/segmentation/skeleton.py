"""Whether a whole-body scan shows a skeleton: the image's own evidence that it is a bone scan.

A physician who is not told the tracer looks at the picture: a 99mTc bone scan shows the spine,
pelvis and long bones; a renal, soft-tissue or perfusion (sestamibi) scan shows organs and no
skeleton. The node asks the image only when no instance of the study states a radiopharmaceutical
and no description names one (:func:`dicomnode.dicom.acquisitions.tracer_stated`); see
docs/segmentation.md, "Is it a bone scan?".

The measure, :func:`spine_contrast`, is a ratio, so count level and 8- or 16-bit storage do not
matter, taken along the body's own outline (no template): over the trunk rows (25–50 % of the
body's visible length from its top), the counts of a 2 cm band centred on the body's count-weighted
midline over those of the bands 4–7 cm to each side, median over rows; in the posterior view, where
the spine lies near the detector (the anterior view where there is no posterior one). A scan whose
contrast is under :data:`SPINE_MIN` shows no skeleton. The floor is set for safety, far under every
bone scan measured, so it refuses a scan without bone uptake and not every sestamibi scan (the
heart and bowel near the midline lift its contrast): docs/segmentation.md gives the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

from dicomnode.segmentation.scan import BoneScan, View

#: The spine contrast under which a scan shows no skeleton (docs/segmentation.md has the figures).
SPINE_MIN = 1.2


@dataclass(frozen=True)
class SkeletonEvidence:
    """The spine contrast of one view of a scan (``nan`` where it has no trunk to measure)."""

    view: View
    spine: float

    @property
    def shows_no_skeleton(self) -> bool:
        """Only a measured contrast under the floor says so; a scan that cannot be measured is read."""
        return bool(self.spine < SPINE_MIN)

    def describe(self) -> str:
        return f"{self.view.value} spine contrast {self.spine:.2f}, under the {SPINE_MIN} of a bone scan"


def _body(counts: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """Smoothed counts, the body mask (5 % of the 99th percentile) and its first and last rows."""
    smooth = uniform_filter(np.asarray(counts, dtype=np.float64), 5)
    positive = smooth[smooth > 0]
    if positive.size == 0:
        return None
    body = smooth > 0.05 * np.percentile(positive, 99)
    rows = np.flatnonzero(body.sum(axis=1) > 10.0 / spacing_mm)
    if rows.size < 2:
        return None
    return smooth, body, int(rows[0]), int(rows[-1])


def spine_contrast(counts: np.ndarray, spacing_mm: float) -> float:
    """Midline band over paraspinal bands on the trunk rows (module docstring); ``nan`` without a trunk."""
    found = _body(counts, spacing_mm)
    if found is None:
        return float("nan")
    smooth, body, top, bottom = found
    height = bottom - top
    half_band, near, far = (int(round(mm / spacing_mm)) for mm in (10.0, 40.0, 70.0))
    ratios = []
    for row in range(top + int(0.25 * height), top + int(0.50 * height)):
        columns = np.flatnonzero(body[row])
        if columns.size < 2 * far:
            continue
        centre = int(round(np.average(columns, weights=smooth[row, columns])))
        if centre - far < 0 or centre + far >= smooth.shape[1]:
            continue
        midline = smooth[row, centre - half_band:centre + half_band + 1].mean()
        sides = np.concatenate([smooth[row, centre - far:centre - near], smooth[row, centre + near:centre + far]])
        if sides.mean() > 0:
            ratios.append(midline / sides.mean())
    return float(np.median(ratios)) if ratios else float("nan")


def skeleton_evidence(scan: BoneScan) -> SkeletonEvidence:
    """The spine contrast of the posterior view (the anterior one where there is no posterior)."""
    for view in (View.POSTERIOR, View.ANTERIOR):
        image = scan.views.get(view)
        if image is not None:
            return SkeletonEvidence(view, spine_contrast(image.counts, image.pixel_spacing[1]))
    return SkeletonEvidence(View.POSTERIOR, float("nan"))
