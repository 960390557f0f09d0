"""Volume geometry of a hybrid SPECT/CT exam from its headers, and resampling between the grids.

A :class:`VolumeGeometry` maps voxel indices ``(k, i, j)`` (slice, row, column) to patient
coordinates in mm (LPS, PS3.3 C.7.6.2.1.1):

    x(k, i, j) = origin + j · Δc · r + i · Δr · c + k · s

with ``r`` the row direction (first triplet of Image Orientation (Patient), the way the column index
grows), ``c`` the column direction (second triplet, the way the row index grows), Pixel Spacing
``(Δr, Δc)`` = (between rows, between columns) and ``s`` the step from one slice to the next.

- **CT series** (C.7.6.2 Image Plane, one instance per slice): the slices are ordered by the
  projection of Image Position (Patient) on the normal ``r × c``; ``s`` is the mean step between
  consecutive positions (the true reconstruction interval, which need not be perpendicular to the
  slices on a tilted gantry); positions that are not evenly spaced (over 1 % of the step), a
  changing orientation or pixel spacing are refused.
- **NM RECON TOMO** (C.8.4.8 NM Multi-frame: Frame Increment Pointer (0028,0009) → Slice Vector
  (0054,0080); C.8.4.11 NM Detector: Image Orientation/Position (Patient) of a reconstruction are
  given inside its one Detector Information Sequence (0054,0022) item, and describe the first slice;
  C.8.4.14 NM Reconstruction: Spacing Between Slices (0018,0088)). Frame ``f`` is slice
  ``SliceVector[f]`` (1-based); slice ``n`` lies at ``position + (n − 1) · spacing · (r × c)``, so the
  slices advance along the normal of the slice plane by Spacing Between Slices (Slice Thickness
  when that is absent). Root-level orientation/position are used only when the item has none.

Resampling (:func:`resample`) goes through patient coordinates: for every target voxel its centre
in mm, then the source's continuous index there, then trilinear interpolation (``order=1``;
``order=0`` nearest for labels), 0 outside the source. SPECT goes onto the CT grid with trilinear
interpolation; a probability or a 0/1 mask goes back the same way (threshold 0.5 for a mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

SLICE_VECTOR_TAG = 0x00540080
"""(0054,0080) Slice Vector, the Frame Increment Pointer of a reconstructed NM volume."""


class GeometryError(ValueError):
    """Headers that do not describe a regular volume."""


@dataclass(frozen=True)
class VolumeGeometry:
    """Shape ``(slices, rows, columns)`` and the index → patient mapping of a volume."""

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    """Centre of voxel (0, 0, 0), mm."""
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    """(between rows, between columns), mm, as Pixel Spacing (0028,0030)."""
    slice_step: tuple[float, float, float]
    """Vector from one slice's first voxel to the next slice's, mm."""
    frame_of_reference: str | None = None

    @property
    def matrix(self) -> np.ndarray:
        """3×3: columns are the mm steps of ``k``, ``i`` and ``j``."""
        r, c = np.asarray(self.row_direction, float), np.asarray(self.column_direction, float)
        return np.stack([np.asarray(self.slice_step, float), c * self.pixel_spacing[0], r * self.pixel_spacing[1]], axis=1)

    @property
    def affine(self) -> np.ndarray:
        """4×4 homogeneous ``(k, i, j, 1) → (x, y, z, 1)``."""
        out = np.eye(4)
        out[:3, :3] = self.matrix
        out[:3, 3] = self.origin
        return out

    @property
    def slice_spacing(self) -> float:
        return float(np.linalg.norm(self.slice_step))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.matrix))) / 1000.0

    def to_patient(self, index: np.ndarray) -> np.ndarray:
        """``(..., 3)`` voxel indices (k, i, j) → ``(..., 3)`` patient mm."""
        return np.asarray(index, float) @ self.matrix.T + np.asarray(self.origin)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """``(..., 3)`` patient mm → ``(..., 3)`` continuous voxel indices (k, i, j)."""
        return (np.asarray(points, float) - np.asarray(self.origin)) @ np.linalg.inv(self.matrix).T

    def slice_position(self, k: int) -> tuple[float, float, float]:
        """Image Position (Patient) of slice ``k``."""
        return tuple(float(v) for v in self.to_patient(np.array([k, 0, 0])))

    @property
    def orientation(self) -> list[float]:
        """Image Orientation (Patient), six values."""
        return [*map(float, self.row_direction), *map(float, self.column_direction)]


def _floats(value: object, count: int, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise GeometryError(f"{name} is not {count} numbers") from None
    if len(out) != count or not np.all(np.isfinite(out)):
        raise GeometryError(f"{name} must hold {count} finite numbers, got {len(out)}")
    return out


def _directions(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    if not (abs(np.linalg.norm(r) - 1) < 1e-3 and abs(np.linalg.norm(c) - 1) < 1e-3 and abs(r @ c) < 1e-3):
        raise GeometryError("Image Orientation (Patient) is not two orthogonal unit vectors")
    return r, c


def _spacing(ds: Dataset) -> tuple[float, float]:
    spacing = _floats(ds.get("PixelSpacing"), 2, "Pixel Spacing (0028,0030)")
    if min(spacing) <= 0:
        raise GeometryError("Pixel Spacing must be positive")
    return spacing[0], spacing[1]


def nm_geometry(ds: Dataset) -> tuple[VolumeGeometry, np.ndarray]:
    """Geometry of a reconstructed NM volume and the frame order: ``volume = frames[order]``.

    Raises :class:`GeometryError` unless the dataset is a volume whose frames are indexed by Slice
    Vector and whose orientation and position are known (PS3.3 C.8.4.8, C.8.4.11).
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pointer = ds.get("FrameIncrementPointer")
    pointers = [int(p) for p in (pointer if isinstance(pointer, Sequence) and not isinstance(pointer, str) else [pointer])] if pointer is not None else []
    if SLICE_VECTOR_TAG not in pointers:
        raise GeometryError("Frame Increment Pointer (0028,0009) does not point to Slice Vector (0054,0080)")
    vector = [int(v) for v in (ds.get("SliceVector") or [])]
    if len(vector) != frames:
        raise GeometryError(f"Slice Vector has {len(vector)} values for {frames} frames")
    if sorted(vector) != list(range(1, frames + 1)):
        raise GeometryError("Slice Vector must number the slices 1..N once each")
    items = ds.get("DetectorInformationSequence") or []
    item = items[0] if len(items) == 1 else Dataset()
    source = item if "ImageOrientationPatient" in item and "ImagePositionPatient" in item else ds
    if "ImageOrientationPatient" not in source or "ImagePositionPatient" not in source:
        raise GeometryError("no Image Orientation/Position (Patient) in the Detector Information item or the dataset")
    r, c = _directions(_floats(source.ImageOrientationPatient, 6, "Image Orientation (Patient)"))
    position = _floats(source.ImagePositionPatient, 3, "Image Position (Patient)")
    raw = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    if raw is None or float(raw) <= 0:
        raise GeometryError("neither Spacing Between Slices nor Slice Thickness gives the slice spacing")
    normal = np.cross(r, c)
    geometry = VolumeGeometry(
        shape=(frames, int(ds.Rows), int(ds.Columns)),
        origin=position,
        row_direction=tuple(r),
        column_direction=tuple(c),
        pixel_spacing=_spacing(ds),
        slice_step=tuple(normal * float(raw)),
        frame_of_reference=str(ds.get("FrameOfReferenceUID", "")) or None,
    )
    order = np.argsort(np.asarray(vector))  # frame index of slice 1, 2, ...
    return geometry, order


def nm_volume(ds: Dataset) -> tuple[np.ndarray, VolumeGeometry]:
    """Counts ``(slices, rows, columns)`` float32 (Rescale Slope/Intercept applied when present) and
    the geometry of a RECON TOMO dataset."""
    geometry, order = nm_geometry(ds)
    pixels = ds.pixel_array.reshape(geometry.shape).astype(np.float32)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return pixels[order] * slope + intercept, geometry


def ct_geometry(datasets: Sequence[Dataset]) -> tuple[VolumeGeometry, list[int]]:
    """Geometry of a single-frame series (C.7.6.2) and the instance order (index into ``datasets``)."""
    if not datasets:
        raise GeometryError("no slices")
    first = datasets[0]
    orientation = _floats(first.get("ImageOrientationPatient"), 6, "Image Orientation (Patient)")
    r, c = _directions(orientation)
    spacing = _spacing(first)
    shape = (int(first.Rows), int(first.Columns))
    normal = np.cross(r, c)
    positions = []
    for ds in datasets:
        if not np.allclose(_floats(ds.get("ImageOrientationPatient"), 6, "Image Orientation (Patient)"), orientation, atol=1e-4):
            raise GeometryError("the slices do not share one Image Orientation (Patient)")
        if not np.allclose(_spacing(ds), spacing) or (int(ds.Rows), int(ds.Columns)) != shape:
            raise GeometryError("the slices do not share one Pixel Spacing and matrix")
        positions.append(_floats(ds.get("ImagePositionPatient"), 3, "Image Position (Patient)"))
    points = np.asarray(positions)
    order = list(np.argsort(points @ normal, kind="stable"))
    points = points[order]
    if len(points) > 1:
        steps = np.diff(points, axis=0)
        step = steps.mean(axis=0)
        if np.linalg.norm(step) < 1e-6:
            raise GeometryError("two slices share one position")
        if np.abs(steps - step).max() > 0.01 * np.linalg.norm(step):
            raise GeometryError("the slices are not evenly spaced")
    else:
        thickness = float(first.get("SliceThickness", 1) or 1)
        step = normal * thickness
    geometry = VolumeGeometry(
        shape=(len(datasets), *shape),
        origin=tuple(points[0]),
        row_direction=tuple(r),
        column_direction=tuple(c),
        pixel_spacing=spacing,
        slice_step=tuple(float(v) for v in step),
        frame_of_reference=str(first.get("FrameOfReferenceUID", "")) or None,
    )
    return geometry, [int(i) for i in order]


def ct_volume(datasets: Sequence[Dataset]) -> tuple[np.ndarray, VolumeGeometry, list[int]]:
    """Hounsfield units ``(slices, rows, columns)`` float32, the geometry and the instance order."""
    geometry, order = ct_geometry(datasets)
    volume = np.empty(geometry.shape, np.float32)
    for k, index in enumerate(order):
        ds = datasets[index]
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        volume[k] = ds.pixel_array.astype(np.float32) * slope + intercept
    return volume, geometry, order


def resample(array: np.ndarray, source: VolumeGeometry, target: VolumeGeometry, *, order: int = 1,
             fill: float = 0.0, extend: bool = False) -> np.ndarray:
    """``array`` on ``source``'s grid resampled onto ``target``'s (through patient coordinates).

    ``order=1`` trilinear, ``order=0`` nearest; voxels whose centre falls outside the source get
    ``fill``, or with ``extend`` the value of the nearest edge voxel (for two grids of one field of
    view, as :func:`scaled` makes: the target's outer voxel centres lie up to half a coarse voxel
    beyond the source's). Slice by slice, so a 512 × 512 CT grid needs no more than one slice of
    coordinates.
    Refuses volumes in different Frames of Reference (their coordinates are not comparable).
    """
    if array.shape != source.shape:
        raise GeometryError(f"array {array.shape} does not match its geometry {source.shape}")
    if source.frame_of_reference and target.frame_of_reference and source.frame_of_reference != target.frame_of_reference:
        raise GeometryError("the volumes are in different Frames of Reference")
    to_source = np.linalg.inv(source.affine) @ target.affine
    rows, cols = target.shape[1:]
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    plane = np.stack([np.zeros_like(ii), ii, jj, np.ones_like(ii)]).reshape(4, -1).astype(float)
    out = np.empty(target.shape, np.float32)
    data = array.astype(np.float32, copy=False)
    for k in range(target.shape[0]):
        plane[0] = k
        coords = (to_source @ plane)[:3]
        out[k] = ndimage.map_coordinates(data, coords, order=order, mode="nearest" if extend else "constant",
                                         cval=fill).reshape(rows, cols)
    return out


def resample_mask(mask: np.ndarray, source: VolumeGeometry, target: VolumeGeometry) -> np.ndarray:
    """A 0/1 mask onto another grid: the trilinear fraction of lesion at each target centre ≥ 0.5."""
    return resample(mask.astype(np.float32), source, target, order=1) >= 0.5


def resample_labels(labels: np.ndarray, source: VolumeGeometry, target: VolumeGeometry,
                    classes: int) -> np.ndarray:
    """A label map ``0..classes-1`` onto another grid: each class's trilinear fraction, the largest
    wins (background unless a lesion class covers more)."""
    fractions = np.stack([resample((labels == c).astype(np.float32), source, target) for c in range(classes)])
    return fractions.argmax(axis=0).astype(np.uint8)


def scaled(geometry: VolumeGeometry, factor: float, *, slices: bool = False) -> VolumeGeometry:
    """The same field of view on a grid ``factor`` times coarser in-plane (and across slices with
    ``slices``): voxel centres placed so that the outer edges of the volume stay where they are."""
    rows, cols = geometry.shape[1:]
    new_rows, new_cols = max(1, round(rows / factor)), max(1, round(cols / factor))
    fr, fc = rows / new_rows, cols / new_cols
    nk, fk = geometry.shape[0], 1.0
    if slices:
        nk = max(1, round(geometry.shape[0] / factor))
        fk = geometry.shape[0] / nk
    # centre of new voxel 0 sits at old index (f − 1) / 2
    origin = geometry.to_patient(np.array([(fk - 1) / 2, (fr - 1) / 2, (fc - 1) / 2]))
    return VolumeGeometry(
        shape=(nk, new_rows, new_cols),
        origin=tuple(float(v) for v in origin),
        row_direction=geometry.row_direction,
        column_direction=geometry.column_direction,
        pixel_spacing=(geometry.pixel_spacing[0] * fr, geometry.pixel_spacing[1] * fc),
        slice_step=tuple(float(v) * fk for v in geometry.slice_step),
        frame_of_reference=geometry.frame_of_reference,
    )


@dataclass(frozen=True)
class DecodedVolumes:
    """An acquisition's pixel data, decoded once for the segmenter and the result builder: the NM
    RECON TOMO counts on their own grid (``None`` without one) and the CT in Hounsfield units on its
    grid with the order of its slices (``None`` and ``()`` without a CT)."""

    counts: np.ndarray | None
    spect_grid: VolumeGeometry | None
    hu: np.ndarray | None = None
    ct_grid: VolumeGeometry | None = None
    ct_order: tuple[int, ...] = ()

    @property
    def grid(self) -> VolumeGeometry:
        """The segmentation grid: the CT's where there is one, else the NM volume's."""
        grid = self.ct_grid or self.spect_grid
        assert grid is not None  # decode_volumes refuses an acquisition with neither
        return grid

    @property
    def spect_on_grid(self) -> np.ndarray | None:
        """The counts on the segmentation grid (resampled onto the CT's through patient coordinates)."""
        if self.counts is None or self.spect_grid is None:
            return None
        return self.counts if self.ct_grid is None else resample(self.counts, self.spect_grid, self.ct_grid)


def decode_volumes(ct: Sequence[Dataset], spect: Dataset | None) -> DecodedVolumes:
    """Decode a SPECT/CT (or SPECT-only, ``ct`` empty; or CT-only, ``spect`` None) acquisition once."""
    if not ct and spect is None:
        raise ValueError("a volume acquisition needs a CT series or an NM RECON TOMO volume")
    counts, spect_grid = nm_volume(spect) if spect is not None else (None, None)
    if not ct:
        return DecodedVolumes(counts, spect_grid)
    hu, ct_grid, order = ct_volume(ct)
    return DecodedVolumes(counts, spect_grid, hu, ct_grid, tuple(order))
