"""Image formation of a dual-head whole-body scan: attenuation, collimator blur, scatter, Poisson counts.

Numbers and where they come from:

* Attenuation: μ = 0.15 /cm of water-equivalent tissue for 140 keV (narrow-beam μ of water at
  140 keV is 0.154 /cm, NIST XCOM; broad-beam values with scatter in the window are ~0.12 /cm).
  We use the narrow-beam value for primaries and add scatter explicitly (below).  Lungs count as
  30 % water (0.7 of their chord is removed from the water-equivalent thickness).
* Collimator blur (LEHR): system FWHM(d) = sqrt(Ri² + Rc(d)²) with intrinsic Ri = 3.9 mm and a
  geometric part growing linearly with source–collimator distance d, Rc(d) = 6.4 mm × (d + 30 mm)
  / 130 mm, i.e. 7.5 mm at 10 cm (vendor LEHR specifications: 7.4–7.6 mm at 10 cm) and ~14 mm at
  25 cm.  The distance is the source depth below the skin facing the detector plus the
  detector–skin gap (``AcquisitionProtocol``).  Depth-dependent blur is done by splitting the activity
  into distance layers (linear interpolation between layer centres) and blurring each layer with
  its Gaussian.
* Scatter: a scatter-to-primary ratio of 0.3 in a 20 % window for 99mTc in the trunk (reported
  values 0.2–0.5; assumption), spread with a Gaussian of σ = 25 mm.
* Counts: a whole-body view holds ~1–3 M counts (notes §3: assumption, no primary number found).
  We model counts = k × A(scan) × duration × transmission / 0.42, with k = 4.6 counts/(MBq·s)
  chosen so that 740 MBq imaged 3 h p.i. at 12 cm/min in an average patient (transmission ≈ 0.42,
  the fraction of emitted photons reaching the detector) gives ≈ 2 M counts per view; over the
  simulated acquisitions the count level runs ≈ 0.6–2.6 M (median ≈ 1.4 M).  (Cross-check:
  4.6 counts/(MBq·s) ≈ 90 cps/MBq LEHR sensitivity × ~20 % of the scan with a point under the
  40 cm detector × ~0.25 for attenuation and the fraction of the activity outside the body's
  retained pool.)
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from dicomnode.synth.patient import AcquisitionProtocol, Patient
from dicomnode.synth.shapes import BBox
from dicomnode.segmentation.scan import View

MU_PER_MM = 0.015
LUNG_WATER_DEFICIT = 0.7
SCATTER_TO_PRIMARY = 0.3
SCATTER_SIGMA_MM = 25.0
COUNTS_PER_MBQ_S = 4.6
REFERENCE_TRANSMISSION = 0.42
FWHM_INTRINSIC_MM = 3.9
FWHM_COLLIMATOR_AT_100_MM = 6.4
COLLIMATOR_OFFSET_MM = 30.0
LAYER_DISTANCES_MM = np.array([10.0, 40.0, 75.0, 115.0, 160.0, 210.0, 270.0, 340.0, 450.0])


def system_fwhm_mm(distance_mm: float | np.ndarray) -> float | np.ndarray:
    """LEHR system resolution (FWHM, mm) at a source–collimator distance (mm)."""
    geometric = FWHM_COLLIMATOR_AT_100_MM * (np.asarray(distance_mm) + COLLIMATOR_OFFSET_MM) / (
        100.0 + COLLIMATOR_OFFSET_MM)
    return np.sqrt(FWHM_INTRINSIC_MM ** 2 + geometric ** 2)


def fwhm_to_sigma_px(fwhm_mm: float, spacing_mm: float) -> float:
    return float(fwhm_mm) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / spacing_mm


class Grid:
    """The canonical image grid (row 0 head, column 0 patient's right) and where the patient lies on it.

    Image millimetres: x from the field's centre line towards the patient's left, y from the top
    edge.  Patient millimetres (see :mod:`anatomy`) are rotated by ``rotation_deg`` about the pelvis
    and shifted so the vertex is ``vertex_mm`` below the top edge and the midline ``shift_mm`` off
    centre.
    """

    def __init__(self, rows: int, columns: int, spacing_mm: float, patient: Patient) -> None:
        self.rows, self.columns, self.spacing = rows, columns, spacing_mm
        self.pivot_y = patient.vertex_mm + 0.5 * patient.height_mm
        theta = np.radians(patient.rotation_deg)
        self.cos, self.sin = np.cos(theta), np.sin(theta)
        self.shift, self.vertex = patient.shift_mm, patient.vertex_mm
        xi = (np.arange(columns) + 0.5) * spacing_mm - columns * spacing_mm / 2
        yi = (np.arange(rows) + 0.5) * spacing_mm
        XI, YI = np.meshgrid(xi.astype(np.float32), yi.astype(np.float32))
        self.x, self.y = self.to_patient(XI, YI)

    def to_patient(self, xi, yi):
        dx, dy = xi - self.shift, yi - self.pivot_y
        return self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy + self.pivot_y - self.vertex

    def to_image(self, xp, yp):
        dy = yp + self.vertex - self.pivot_y
        return self.cos * xp - self.sin * dy + self.shift, self.sin * xp + self.cos * dy + self.pivot_y

    def to_pixel(self, xp: float, yp: float) -> tuple[float, float]:
        """(row, column) in the canonical image of a patient point (continuous pixel indices)."""
        xi, yi = self.to_image(xp, yp)
        return (yi / self.spacing - 0.5, (xi + self.columns * self.spacing / 2) / self.spacing - 0.5)

    def window(self, bbox: BBox, pad_mm: float = 0.0) -> tuple[slice, slice] | None:
        """Pixel slices covering a patient bounding box (plus ``pad_mm``); None if off the field."""
        x0, x1, y0, y1 = bbox
        xs, ys = self.to_image(np.array([x0, x0, x1, x1]), np.array([y0, y1, y0, y1]))
        c0 = int(np.floor((xs.min() - pad_mm + self.columns * self.spacing / 2) / self.spacing)) - 1
        c1 = int(np.ceil((xs.max() + pad_mm + self.columns * self.spacing / 2) / self.spacing)) + 1
        r0 = int(np.floor((ys.min() - pad_mm) / self.spacing)) - 1
        r1 = int(np.ceil((ys.max() + pad_mm) / self.spacing)) + 1
        r0, r1 = max(r0, 0), min(r1, self.rows)
        c0, c1 = max(c0, 0), min(c1, self.columns)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)


class Projector:
    """Accumulates attenuated activity per view in distance layers, then blurs and adds scatter."""

    def __init__(self, grid: Grid, acquisition: AcquisitionProtocol, water_thickness: np.ndarray) -> None:
        self.grid = grid
        self.thickness = water_thickness
        self.gap = {View.ANTERIOR: acquisition.anterior_gap_mm, View.POSTERIOR: acquisition.posterior_gap_mm}
        shape = (len(LAYER_DISTANCES_MM), grid.rows, grid.columns)
        self.layers = {view: np.zeros(shape, dtype=np.float32) for view in View}
        self.emitted = 0.0

    def depth(self, view: View, sl: tuple[slice, slice], depth_anterior: np.ndarray) -> np.ndarray:
        """Depth below the skin facing ``view``'s detector."""
        if view is View.ANTERIOR:
            return depth_anterior
        return np.clip(self.thickness[sl] - depth_anterior, 0.0, None)

    def add(self, sl: tuple[slice, slice], activity: np.ndarray, depth_anterior: np.ndarray) -> None:
        """Add activity (concentration × chord) lying ``depth_anterior`` mm below the anterior skin."""
        self.emitted += float(activity.sum())
        for view in View:
            d = self.depth(view, sl, depth_anterior)
            self._deposit(view, sl, activity * np.exp(-MU_PER_MM * d), d + self.gap[view])

    def add_slab(self, sl: tuple[slice, slice], concentration: np.ndarray | float, halves: int = 2) -> None:
        """Add uniformly active tissue filling the whole water-equivalent thickness (self-attenuating)."""
        t = self.thickness[sl]
        part = t / halves
        self.emitted += float(np.sum(concentration * t))
        one = (1.0 - np.exp(-MU_PER_MM * part)) / MU_PER_MM * concentration
        for view in View:
            for i in range(halves):
                near = i * part  # depth of this slab's near face, from the view's own skin
                self._deposit(view, sl, one * np.exp(-MU_PER_MM * near), near + part / 2 + self.gap[view])

    def _deposit(self, view: View, sl, primary: np.ndarray, distance: np.ndarray) -> None:
        centres = LAYER_DISTANCES_MM
        k = np.clip(np.searchsorted(centres, distance) - 1, 0, len(centres) - 2)
        frac = np.clip((distance - centres[k]) / (centres[k + 1] - centres[k]), 0.0, 1.0)
        layers = self.layers[view]
        for kk in range(int(k.min()), int(k.max()) + 1):
            here = k == kk
            layers[kk][sl] += np.where(here, primary * (1.0 - frac), 0.0)
            layers[kk + 1][sl] += np.where(here, primary * frac, 0.0)

    def blur_sigma_px(self, distance_mm: float) -> float:
        return fwhm_to_sigma_px(system_fwhm_mm(distance_mm), self.grid.spacing)

    def primary(self, view: View) -> np.ndarray:
        """Blurred primary image (activity units) of ``view``, canonical orientation."""
        out = np.zeros((self.grid.rows, self.grid.columns), dtype=np.float32)
        for layer, distance in zip(self.layers[view], LAYER_DISTANCES_MM):
            sigma = self.blur_sigma_px(distance)
            sl = _support(layer, pad=int(np.ceil(4 * sigma)))
            if sl is not None:
                out[sl] += gaussian_filter(layer[sl], sigma, mode="constant")
        return out


def _support(image: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """The bounding box of the non-zero pixels, grown by ``pad`` (None if all zero)."""
    rows = np.flatnonzero(image.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(image.any(axis=0))
    return (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1),
            slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))


def add_scatter(primary: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Primary plus in-window scatter (broad Gaussian, scatter-to-primary ratio 0.3)."""
    sigma = SCATTER_SIGMA_MM / spacing_mm
    factor = max(1, int(sigma // 3))  # the scatter is smooth: blur a block-averaged copy
    rows, cols = primary.shape
    padded = np.pad(primary, ((0, -rows % factor), (0, -cols % factor)))
    small = padded.reshape(padded.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))
    small = gaussian_filter(small, sigma / factor, mode="constant")
    scatter = zoom(small, factor, order=1, grid_mode=True, mode="nearest")[:rows, :cols]
    return primary + SCATTER_TO_PRIMARY * scatter


def counts_scale(acquisition: AcquisitionProtocol, primary_sums: dict[View, float], emitted: float) -> float:
    """Counts per activity unit, so that the views hold the counts this acquisition would give."""
    transmission = np.mean(list(primary_sums.values())) / emitted
    target = COUNTS_PER_MBQ_S * acquisition.activity_at_scan_mbq * acquisition.duration_s * (
        transmission / REFERENCE_TRANSMISSION)
    mean_total = np.mean(list(primary_sums.values())) * (1.0 + SCATTER_TO_PRIMARY)
    return float(target / mean_total)
