"""Coarse skeletal regions of a planar whole-body view, from its counts alone.

This is not a skeletal segmentation. It finds the body in the view, measures its height H from the
vertex to the soles, and cuts it into regions by anthropometric fractions of H and by the lateral
distance from the body's midline. Within each region, "bone" is the set of pixels whose uptake is
above a threshold between soft tissue and bone. The regions name a lesion's skeletal site and give
each region a bone area for the approximate Bone Scan Index (``dicomnode.pipeline.results.planar.burden``).

Input and output are in the canonical orientation of :mod:`dicomnode.segmentation.scan` (row 0 cranial,
column 0 the patient's right); the view is assumed to show the whole body, head to feet, supine
with the arms by the sides, as whole-body bone scans are acquired.

Vertical landmarks, as fractions of H from the vertex (Drillis & Contini 1966, segment lengths as
redrawn by Winter, *Biomechanics and Motor Control of Human Movement*, 4th ed., Fig. 4.1; spine
segments from standard adult anatomy, cervical ≈ 12 cm, thoracic ≈ 27 cm, lumbar ≈ 17 cm of 170 cm):

====================  =======  =========================================================
landmark              H        used as
====================  =======  =========================================================
chin                  0.130    skull | cervical spine
shoulder (acromion)   0.182    cervical | thoracic spine and thoracic cage; arms start
T12/L1                0.335    thoracic | lumbar
iliac crest           0.400    lateral to the spine, the pelvis starts
L5/S1                 0.448    lumbar spine | sacrum
coccyx                0.500    sacrum ends; below it the pubis (pelvis)
ischium               0.520    pelvis | femora
fingertip             0.623    wrist 0.515 + hand 0.108: the arms end
knee                  0.715    femora | lower legs
ankle                 0.961    lower legs | feet
====================  =======  =========================================================

Lateral limits, as fractions of H from the midline: the trunk (and the thighs) lie within half the
hip width, 0.191 H / 2 (Winter); anything further out in the arm rows is an upper limb. The spine
is the central strip within 0.02 H (a lumbar vertebral body is ≈ 5 cm wide, plus camera blur); the
sacrum within 0.03 H (≈ 10 cm at S1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage


class Region(IntEnum):
    """Coarse skeletal regions; the value is the label in :attr:`SkeletalRegions.labels`."""

    SKULL = 1
    CERVICAL_SPINE = 2
    THORACIC_SPINE = 3
    THORACIC_CAGE = 4  # ribs, sternum, clavicles, scapulae
    LUMBAR_SPINE = 5
    SACRUM = 6
    PELVIS = 7
    UPPER_LIMBS = 8  # humeri, forearms, hands
    FEMORA = 9
    LOWER_LEGS = 10  # tibiae, fibulae
    FEET = 11

    @property
    def site(self) -> str:
        """The name a reader uses, e.g. "thoracic spine"."""
        return self.name.lower().replace("_", " ")


# Fractions of body height H from the vertex (module docstring).
CHIN, SHOULDER, T12_L1, ILIAC_CREST, L5_S1, COCCYX, ISCHIUM, FINGERTIP, KNEE, ANKLE = (
    0.130, 0.182, 0.335, 0.400, 0.448, 0.500, 0.520, 0.623, 0.715, 0.961,
)
# Fractions of H from the midline.
TRUNK_HALF_WIDTH = 0.191 / 2
SPINE_HALF_WIDTH = 0.02
SACRUM_HALF_WIDTH = 0.03

#: Smoothing before the body outline is found (mm): suppresses Poisson noise of soft tissue.
BODY_SMOOTHING_MM = 6.0
#: Smoothing before bone is separated from soft tissue (mm).
BONE_SMOOTHING_MM = 2.0
#: Components of the body outline smaller than this fraction of the largest are noise.
MIN_BODY_PART = 0.01


@dataclass(frozen=True)
class SkeletalRegions:
    """Region labels and bone pixels of one view, canonical orientation (see module docstring)."""

    labels: np.ndarray  # uint8, a Region value per pixel, 0 outside the body
    bone: np.ndarray  # bool, pixels with bone uptake (inside the body)
    body_top: int  # first body row (vertex)
    body_bottom: int  # last body row (soles), inclusive
    midline: float  # column of the body's midline
    truncated: bool  # the body touches the first or last row: H, and so the regions, are too short

    @property
    def height_rows(self) -> int:
        return self.body_bottom - self.body_top + 1

    def bone_pixels(self, region: Region) -> int:
        """Number of bone pixels in ``region``."""
        return int(np.count_nonzero(self.bone & (self.labels == region)))

    def region_at(self, row: float, column: float) -> Region | None:
        """The region of the pixel nearest to (row, column), or None outside the body."""
        r, c = int(round(row)), int(round(column))
        if not (0 <= r < self.labels.shape[0] and 0 <= c < self.labels.shape[1]):
            return None
        label = int(self.labels[r, c])
        return Region(label) if label else None


def skeletal_regions(counts: np.ndarray, pixel_spacing: tuple[float, float]) -> SkeletalRegions:
    """Find the body in a canonical view and cut it into :class:`Region` s.

    Raises ``ValueError`` when the view holds no body (e.g. an empty or constant frame).
    """
    if counts.ndim != 2:
        raise ValueError(f"counts must be a 2-D view, got shape {counts.shape}")
    if min(pixel_spacing) <= 0:
        raise ValueError(f"pixel spacing must be positive, got {pixel_spacing}")
    counts = np.nan_to_num(np.asarray(counts, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    counts = np.clip(counts, 0.0, None)
    body = _body_mask(counts, pixel_spacing)
    rows = np.flatnonzero(body.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1])
    height_mm = (bottom - top + 1) * pixel_spacing[0]

    row_mm = (np.arange(counts.shape[0]) - top) * pixel_spacing[0]
    depth = (row_mm / height_mm)[:, None]  # fraction of H from the vertex, per row
    trunk_rows = (depth[:, 0] >= SHOULDER) & (depth[:, 0] < L5_S1)
    columns = np.nonzero(body[trunk_rows])[1] if body[trunk_rows].any() else np.nonzero(body)[1]
    midline = float(np.mean(columns))
    lateral = (np.abs(np.arange(counts.shape[1]) - midline) * pixel_spacing[1] / height_mm)[None, :]

    labels = _label(depth, lateral)
    labels[~body] = 0
    bone = _bone_mask(counts, body, pixel_spacing)
    return SkeletalRegions(
        labels=labels,
        bone=bone,
        body_top=top,
        body_bottom=bottom,
        midline=midline,
        truncated=top == 0 or bottom == counts.shape[0] - 1,
    )


def _label(depth: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Region of every pixel from its height fraction ``depth`` and lateral fraction ``lateral``."""
    shape = (depth.shape[0], lateral.shape[1])
    d = np.broadcast_to(depth, shape)
    x = np.broadcast_to(lateral, shape)
    spine, sacrum, trunk = x < SPINE_HALF_WIDTH, x < SACRUM_HALF_WIDTH, x < TRUNK_HALF_WIDTH
    arm_rows = (d >= SHOULDER) & (d < FINGERTIP)
    # First matching rule wins (np.select), from the head down.
    rules = [
        (d < CHIN, Region.SKULL),
        (arm_rows & ~trunk, Region.UPPER_LIMBS),
        ((d < SHOULDER) & spine, Region.CERVICAL_SPINE),
        (d < SHOULDER, Region.THORACIC_CAGE),  # clavicles and the tops of the scapulae
        ((d < T12_L1) & spine, Region.THORACIC_SPINE),
        (d < T12_L1, Region.THORACIC_CAGE),
        ((d < L5_S1) & spine, Region.LUMBAR_SPINE),
        (d < ILIAC_CREST, Region.THORACIC_CAGE),  # floating ribs beside L1-L3
        ((d < COCCYX) & (d >= L5_S1) & sacrum, Region.SACRUM),
        (d < ISCHIUM, Region.PELVIS),
        (d < KNEE, Region.FEMORA),
        (d < ANKLE, Region.LOWER_LEGS),
    ]
    conditions = [condition for condition, _ in rules]
    choices = [np.uint8(region) for _, region in rules]
    return np.select(conditions, choices, default=np.uint8(Region.FEET)).astype(np.uint8)


def _body_mask(counts: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Pixels inside the body: Otsu's threshold on log counts after smoothing, noise removed."""
    sigma = (BODY_SMOOTHING_MM / spacing[0], BODY_SMOOTHING_MM / spacing[1])
    smooth = np.log1p(ndimage.gaussian_filter(counts, sigma))
    if float(smooth.max() - smooth.min()) < 1e-6:
        raise ValueError("the view holds no body: its counts are constant")
    body = smooth > otsu_threshold(smooth.ravel())
    labels, count = ndimage.label(body)
    if count == 0:
        raise ValueError("the view holds no body")
    sizes = ndimage.sum_labels(body, labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= MIN_BODY_PART * sizes.max()) + 1
    body = np.isin(labels, keep)
    return ndimage.binary_fill_holes(body)


def _bone_mask(counts: np.ndarray, body: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Bone pixels: Otsu's threshold between soft tissue and bone on log counts inside the body.

    The hottest 1 % of body pixels (bladder, injection site, lesions) are clipped first so that
    they do not pull the threshold up.
    """
    sigma = (BONE_SMOOTHING_MM / spacing[0], BONE_SMOOTHING_MM / spacing[1])
    smooth = np.log1p(ndimage.gaussian_filter(counts, sigma))
    inside = smooth[body]
    inside = np.minimum(inside, np.percentile(inside, 99.0))
    if float(inside.max() - inside.min()) < 1e-6:
        return np.zeros_like(body)
    return body & (smooth > otsu_threshold(inside))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (IEEE Trans. SMC 1979): maximises the between-class variance."""
    histogram, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = histogram.astype(np.float64)
    w0 = np.cumsum(weight)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weight * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])
