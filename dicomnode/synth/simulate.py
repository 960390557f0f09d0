"""One simulated study in memory: draw a patient, project both views, count photons, derive the truth.

Visibility rule (per lesion, per view).  Let E be the lesion's own blurred excess counts in the
view (expected, noise-free) and B the expected counts of everything else.  The lesion's footprint
F is where E ≥ 50 % of its peak (its half-maximum extent, the usual "visible size" of a blurred
object).  The lesion is *visible* when

* its Rose signal-to-noise ratio ΣF E / sqrt(ΣF B) ≥ 5 (Rose criterion k = 5, A. Rose, JOSA 1948;
  the Poisson noise of the background over the footprint), and
* its contrast ΣF E / ΣF B ≥ 0.10 (uptake below 10 % of the local background hides in normal
  bone-to-bone variation; assumption).

A visible lesion's footprint F enters that view's truth mask; an invisible one does not (so a
posterior vertebral lesion can be truth in the posterior view only).  Masks and images are stored
in each view's stored layout: the posterior view as seen from behind (left–right mirrored), as a
camera sends it (DICOM PS3.3 C.7.6.1.1.1, Patient Orientation R\\F).

Sampling: every shape is evaluated on the requested pixel centres in patient millimetres, so
512 × 2048 at 1.13 mm is the same patient as 256 × 1024 at 2.26 mm, only finer; counts per view
do not depend on the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from dicomnode.synth.anatomy import BONE_SITES, Phantom, build_phantom
from dicomnode.synth.labels import LabelCanvas, true_midline
from dicomnode.synth.variants import check_variant, variant_mimics, variant_patient
from dicomnode.synth.lesions import Metastasis, Mimic, sample_lesions, sample_mimics
from dicomnode.synth.patient import AcquisitionProtocol, Patient, sample_acquisition, sample_patient
from dicomnode.synth.physics import (
    LUNG_WATER_DEFICIT, MU_PER_MM, Grid, Projector, add_scatter, counts_scale, fwhm_to_sigma_px,
    system_fwhm_mm,
)
from dicomnode.synth.shapes import Shape
from dicomnode.segmentation.anatomy import Midline
from dicomnode.segmentation.scan import View

ROSE_K = 5.0
MIN_CONTRAST = 0.10
FOOTPRINT_FRACTION = 0.5
MIN_FIELD_MM = (400.0, 1000.0)  # (width, height): a whole-body field must hold at least a trunk


@dataclass(frozen=True)
class LesionTruth:
    """A lesion as simulated and as each view shows it."""

    lesion: Metastasis
    position_px: tuple[float, float]  # (row, column) in the canonical image
    visible: dict[View, bool]
    snr: dict[View, float]
    contrast: dict[View, float]
    footprint_px: dict[View, int]

    def as_dict(self, spacing_mm: float) -> dict:
        les = self.lesion
        row, col = self.position_px
        return {
            "id": les.id, "bone": les.site, "bone_name": les.bone,
            "size_mm": round(les.size_mm, 2), "width_mm": round(les.width_mm, 2),
            "uptake_ratio": round(les.uptake_ratio, 3),
            "position_mm": [round(float(row + 0.5) * spacing_mm, 1), round(float(col + 0.5) * spacing_mm, 1)],
            "position_px": [round(float(row), 2), round(float(col), 2)],
            "depth_fraction": round(les.depth_fraction, 3),
            "visible": {v.value: self.visible[v] for v in View},
            "snr": {v.value: round(float(self.snr[v]), 2) for v in View},
            "contrast": {v.value: round(float(self.contrast[v]), 3) for v in View},
        }


@dataclass(frozen=True)
class SimulatedStudy:
    """A simulated whole-body study, every per-pixel array in its view's *stored* layout."""

    images: dict[View, np.ndarray]  # uint16 counts
    truth: dict[View, np.ndarray]  # uint8 0/1 lesion masks
    bone_labels: dict[View, np.ndarray]  # uint8: 0 = no bone, i = BONE_SITES[i - 1]
    lesions: tuple[LesionTruth, ...]
    mimics: tuple[Mimic, ...]
    mimic_positions_px: tuple[tuple[float, float], ...]  # canonical (row, column) of each mimic
    patient: Patient
    acquisition: AcquisitionProtocol
    expected: dict[View, np.ndarray] = field(repr=False)  # noise-free counts (float32, stored)
    spacing_mm: float = 2.26
    anatomy: dict[View, np.ndarray] = field(default_factory=dict, repr=False)  # uint8 AnatomyLabel, stored
    midline: Midline | None = None  # the patient's midline, canonical pixels (dicomnode.segmentation.anatomy)

    @property
    def rows(self) -> int:
        return self.images[View.ANTERIOR].shape[0]

    @property
    def columns(self) -> int:
        return self.images[View.ANTERIOR].shape[1]

    @property
    def total_counts(self) -> dict[View, int]:
        return {v: int(self.images[v].sum(dtype=np.int64)) for v in View}

    @property
    def count_level(self) -> float:
        """Mean total counts per view: the study's count level."""
        return float(np.mean(list(self.total_counts.values())))


def to_stored(view: View, canonical: np.ndarray) -> np.ndarray:
    """Canonical (anterior-as-stored) layout → the view's stored layout (posterior mirrored)."""
    return np.ascontiguousarray(canonical[:, ::-1]) if view is View.POSTERIOR else canonical


class _Study:
    """The working state of one simulation (kept small: one method per step)."""

    def __init__(self, rng: np.random.Generator, rows: int, columns: int, spacing_mm: float,
                 variant: str | None = None, population: str = "adult") -> None:
        self.rng = rng
        self.patient = sample_patient(rng, population)
        self.acquisition = sample_acquisition(rng, self.patient)
        self.patient = variant_patient(variant, self.patient, rng)
        self.phantom: Phantom = build_phantom(self.patient)
        self.grid = Grid(rows, columns, spacing_mm, self.patient)
        self.thickness = self._thickness()
        self.projector = Projector(self.grid, self.acquisition, self.thickness)

    def _thickness(self) -> np.ndarray:
        """Water-equivalent AP thickness (mm) at every pixel: soft-tissue parts minus lung air."""
        g = self.grid
        body = np.zeros((g.rows, g.columns), dtype=np.float64)
        for part in self.phantom.body_parts:
            sl = g.window(part.bbox())
            if sl is not None:
                body[sl] = np.maximum(body[sl], part.chord(g.x[sl], g.y[sl]))
        for part in self.phantom.stacked_parts:
            sl = g.window(part.bbox())
            if sl is not None:
                body[sl] += part.chord(g.x[sl], g.y[sl])
        for lung in self.phantom.lungs:
            sl = g.window(lung.bbox())
            if sl is not None:
                body[sl] -= LUNG_WATER_DEFICIT * lung.chord(g.x[sl], g.y[sl])
        return np.clip(body, 0.0, None).astype(np.float32)

    def inside_field(self, x: float, y: float) -> bool:
        row, col = self.grid.to_pixel(x, y)
        return 4 <= row < self.grid.rows - 4 and 4 <= col < self.grid.columns - 4

    def render_structure(self, shape: Shape, concentration: float, host: Shape | None) -> np.ndarray | None:
        """Project one solid; return its chord map on its window (None when off the field)."""
        g = self.grid
        sl = g.window(shape.bbox())
        if sl is None:
            return None
        x, y = g.x[sl], g.y[sl]
        chord, fraction = shape.chord_and_depth(x, y)
        local = host.chord(x, y) if host is not None else self.thickness[sl]
        inside = chord > 0
        if inside.any():
            self.projector.add(sl, concentration * chord, fraction * local)
        return chord

    def render_anatomy(self, mimics: list[Mimic]) -> tuple[np.ndarray, np.ndarray]:
        """Project soft tissue, bones, organs and mimics; return the canonical bone label map and
        the canonical anatomy map (:mod:`dicomnode.synth.labels`)."""
        g = self.grid
        rows, cols = np.flatnonzero(self.thickness.any(axis=1)), np.flatnonzero(self.thickness.any(axis=0))
        self.projector.add_slab((slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)), 1.0)
        labels = np.zeros((g.rows, g.columns), dtype=np.uint8)
        canvas = LabelCanvas(self.thickness)
        for structure in self.phantom.bones:
            chord = self.render_structure(structure.shape, structure.concentration, structure.host)
            if chord is not None:
                window = self.grid.window(structure.shape.bbox())
                labels[window][chord >= 1.0] = BONE_SITES.index(structure.site) + 1
                canvas.add(structure, window, chord)
        for organ in self.phantom.organs:
            chord = self.render_structure(organ.shape, organ.concentration, organ.host)
            if chord is not None:
                canvas.add(organ, self.grid.window(organ.shape.bbox()), chord)
        for mimic in mimics:
            if mimic.kind != "bladder":  # the bladder is already an organ
                self.render_structure(mimic.shape, mimic.concentration, mimic.host)
        return labels, canvas.labels

    def lesion_excess(self, lesion: Metastasis, view: View) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """The lesion's blurred excess (activity units) in ``view`` on a padded window."""
        g = self.grid
        shape = lesion.shape
        sigma_px_max = fwhm_to_sigma_px(system_fwhm_mm(600.0), g.spacing)
        sl = g.window(shape.bbox(), pad_mm=4 * sigma_px_max * g.spacing)
        if sl is None:
            return None
        x, y = g.x[sl], g.y[sl]
        activity = lesion.excess_concentration * shape.chord(x, y)
        host = lesion.host
        local = (host.host.chord(np.array(lesion.x), np.array(lesion.y)) if host.host is not None
                 else self._thickness_at(lesion.x, lesion.y))
        depth_a = lesion.depth_fraction * float(local)
        depth = self.projector.depth(view, sl, np.full(activity.shape, float(depth_a)))
        attenuated = activity * np.exp(-MU_PER_MM * depth)
        distance = float(np.mean(depth[activity > 0])) if (activity > 0).any() else float(depth.mean())
        blurred = gaussian_filter(attenuated, self.projector.blur_sigma_px(distance + self.projector.gap[view]),
                                  mode="constant")
        return sl, blurred

    def _thickness_at(self, x: float, y: float) -> float:
        row, col = self.grid.to_pixel(x, y)
        r = int(np.clip(round(row), 0, self.grid.rows - 1))
        c = int(np.clip(round(col), 0, self.grid.columns - 1))
        return float(self.thickness[r, c])


def simulate_study(rng: np.random.Generator | int, *, rows: int = 1024, columns: int = 256,
                   spacing_mm: float = 2.26, variant: str | None = None,
                   metastases: bool = True, population: str = "adult") -> SimulatedStudy:
    """Simulate one whole-body 99mTc-MDP study (both views), deterministic for a seed.

    ``rng`` is a numpy Generator or an integer seed. ``variant`` forces a normal variant
    (:data:`dicomnode.synth.variants.VARIANTS`); ``metastases=False`` draws none; ``population``
    is who is scanned (:data:`dicomnode.synth.patient.POPULATIONS`). Raises ``ValueError`` for a
    matrix or spacing that cannot hold a whole-body scan, an unknown variant or population.
    """
    check_matrix(rows, columns, spacing_mm)
    check_variant(variant)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    study = _Study(rng, rows, columns, spacing_mm, variant, population)
    mimics = sample_mimics(rng, study.phantom)
    if variant is not None:
        mimics += variant_mimics(variant, study.phantom, rng)
    lesions = sample_lesions(rng, study.phantom, mimics, study.inside_field) if metastases else []
    labels, anatomy = study.render_anatomy(mimics)

    projector = study.projector
    primary = {view: projector.primary(view) for view in View}
    excess = {view: [study.lesion_excess(les, view) for les in lesions] for view in View}
    for view in View:
        for item in excess[view]:
            if item is not None:
                primary[view][item[0]] += item[1]
    scale = counts_scale(study.acquisition, {v: float(primary[v].sum()) for v in View},
                         projector.emitted)
    expected = {view: add_scatter(primary[view], spacing_mm) * scale for view in View}

    truths, masks = _truth(lesions, excess, expected, scale, study)
    images = {}
    for view in View:
        counts = rng.poisson(expected[view]).clip(0, np.iinfo(np.uint16).max).astype(np.uint16)
        images[view] = to_stored(view, counts)
    mimic_px = tuple(study.grid.to_pixel(m.x, m.y) for m in mimics)
    return SimulatedStudy(
        images=images,
        truth={v: to_stored(v, masks[v]) for v in View},
        bone_labels={v: to_stored(v, labels) for v in View},
        lesions=tuple(truths), mimics=tuple(mimics), mimic_positions_px=mimic_px,
        patient=study.patient, acquisition=study.acquisition,
        expected={v: to_stored(v, expected[v].astype(np.float32)) for v in View},
        spacing_mm=spacing_mm,
        anatomy={v: to_stored(v, anatomy) for v in View},
        midline=true_midline(study.grid, study.patient.height_mm),
    )


def _truth(lesions: list[Metastasis], excess, expected, scale: float, study: _Study):
    """Apply the visibility rule; return per-lesion truth records and canonical masks."""
    g = study.grid
    masks = {view: np.zeros((g.rows, g.columns), dtype=np.uint8) for view in View}
    records = []
    for i, lesion in enumerate(lesions):
        visible, snr, contrast, footprint = {}, {}, {}, {}
        for view in View:
            item = excess[view][i]
            if item is None or item[1].max() <= 0:
                visible[view], snr[view], contrast[view], footprint[view] = False, 0.0, 0.0, 0
                continue
            sl, blurred = item
            counts = blurred * scale
            region = counts >= FOOTPRINT_FRACTION * counts.max()
            signal = float(counts[region].sum())
            background = float(np.clip(expected[view][sl][region] - counts[region], 1e-6, None).sum())
            snr[view] = signal / np.sqrt(background)
            contrast[view] = signal / background
            footprint[view] = int(region.sum())
            visible[view] = bool(snr[view] >= ROSE_K and contrast[view] >= MIN_CONTRAST)
            if visible[view]:
                masks[view][sl] |= region.astype(np.uint8)
        records.append(LesionTruth(lesion, g.to_pixel(lesion.x, lesion.y), visible, snr, contrast,
                                   footprint))
    return records, masks


def check_matrix(rows: int, columns: int, spacing_mm: float) -> None:
    if not (isinstance(rows, int) and isinstance(columns, int)) or rows < 16 or columns < 16:
        raise ValueError(f"matrix must be at least 16 x 16 integers, got {rows!r} x {columns!r}")
    if rows > 8192 or columns > 4096:
        raise ValueError(f"matrix {columns} x {rows} is larger than any whole-body camera makes")
    if not (0.2 <= spacing_mm <= 10.0):
        raise ValueError(f"pixel spacing {spacing_mm!r} mm is outside 0.2-10 mm")
    width, height = columns * spacing_mm, rows * spacing_mm
    if width < MIN_FIELD_MM[0] or height < MIN_FIELD_MM[1]:
        raise ValueError(
            f"field of view {width:.0f} x {height:.0f} mm is too small for a whole-body scan "
            f"(need at least {MIN_FIELD_MM[0]:.0f} x {MIN_FIELD_MM[1]:.0f} mm)")
