"""Exact geometry between a view's stored DICOM frame and the model's grid.

The model works on the canonical orientation (:mod:`dicomnode.segmentation.scan`) resampled to a fixed pixel
spacing (2.26 mm, paper 001 "Dataset": 256 × 1024 at 2.26 mm). A :class:`ViewGeometry` moves arrays both
ways, always over the same field of view (the edges of the source frame are the edges of the grid):

- counts → model grid: **area-weighted** (each model pixel receives the counts of the source area it
  covers), so total counts are preserved exactly and a model pixel holds what a 2.26 mm detector pixel
  would have counted — the scale the papers' count-based normalisations assume.
- label mask → model grid: a model pixel is lesion when lesion covers at least half of its area.
- probability → source frame: linear interpolation (pixel centres aligned) where the source is finer
  than the grid, area average where it is coarser; then back to the stored layout (flips only).

With integer factors (e.g. 512 × 2048 at 1.13 mm → 256 × 1024) a model-grid mask goes to the source
(probability 0/1, threshold 0.5) and back unchanged, and a source mask of whole 2 × 2 blocks survives
source → grid → source unchanged. At 256 × 1024 and 2.26 mm every mapping is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy import sparse

from dicomnode.segmentation.scan import ViewImage, ViewSource


def model_shape(shape: tuple[int, int], spacing: tuple[float, float], spacing_mm: float) -> tuple[int, int]:
    """The model-grid matrix covering the same field of view at ``spacing_mm`` (at least 1 pixel)."""
    return tuple(max(1, round(n * s / spacing_mm)) for n, s in zip(shape, spacing))  # type: ignore[return-value]


@lru_cache(maxsize=64)
def overlap_matrix(n_out: int, n_in: int) -> sparse.csr_matrix:
    """``A[i, j]`` = fraction of input pixel ``j`` that lies in output pixel ``i`` (columns sum to 1).

    Both axes span the same extent; ``A @ x`` redistributes a per-pixel quantity (counts) exactly.
    """
    edges_in = np.arange(n_in + 1) / n_in
    edges_out = np.arange(n_out + 1) / n_out
    rows, cols, values = [], [], []
    j = 0
    for i in range(n_out):
        lo, hi = edges_out[i], edges_out[i + 1]
        while j < n_in and edges_in[j + 1] <= lo:
            j += 1
        k = j
        while k < n_in and edges_in[k] < hi:
            overlap = min(hi, edges_in[k + 1]) - max(lo, edges_in[k])
            if overlap > 0:
                rows.append(i)
                cols.append(k)
                values.append(overlap * n_in)
            k += 1
    return sparse.csr_matrix((values, (rows, cols)), shape=(n_out, n_in))


@lru_cache(maxsize=64)
def coverage_matrix(n_out: int, n_in: int) -> sparse.csr_matrix:
    """``B[i, j]`` = fraction of output pixel ``i`` covered by input pixel ``j`` (rows sum to 1)."""
    return sparse.csr_matrix(overlap_matrix(n_out, n_in) * (n_out / n_in))


@lru_cache(maxsize=64)
def linear_matrix(n_out: int, n_in: int) -> sparse.csr_matrix:
    """Linear interpolation with pixel centres aligned over the same extent, edges clamped."""
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    j0 = np.floor(x).astype(int)
    j1 = np.minimum(j0 + 1, n_in - 1)
    w = x - j0
    rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
    return sparse.csr_matrix(
        (np.concatenate([1 - w, w]), (rows, np.concatenate([j0, j1]))), shape=(n_out, n_in)
    )


def _apply(row_matrix: sparse.csr_matrix, array: np.ndarray, col_matrix: sparse.csr_matrix,
           dtype: type = np.float32) -> np.ndarray:
    """``R @ array @ C.T`` for a 2-D array, computed in float64, returned as ``dtype``."""
    out = row_matrix @ array.astype(np.float64)
    return np.asarray((col_matrix @ out.T).T, dtype=dtype)


def resample_counts(counts: np.ndarray, spacing: tuple[float, float], spacing_mm: float) -> np.ndarray:
    """A 2-D count array at ``spacing`` → the model grid at ``spacing_mm``, total counts preserved."""
    shape = model_shape(counts.shape, spacing, spacing_mm)
    if shape == counts.shape:
        return counts.astype(np.float32, copy=True)
    return _apply(overlap_matrix(shape[0], counts.shape[0]), counts, overlap_matrix(shape[1], counts.shape[1]))


@dataclass(frozen=True)
class ViewGeometry:
    """How one view's stored frame maps onto the model grid (canonical orientation, model spacing)."""

    source: ViewSource
    pixel_spacing: tuple[float, float]
    spacing_mm: float

    @classmethod
    def of(cls, image: ViewImage, spacing_mm: float) -> ViewGeometry:
        return cls(image.source, image.pixel_spacing, spacing_mm)

    @property
    def source_shape(self) -> tuple[int, int]:
        return self.source.rows, self.source.columns

    @cached_property
    def shape(self) -> tuple[int, int]:
        """The model-grid matrix (rows, columns)."""
        return model_shape(self.source_shape, self.pixel_spacing, self.spacing_mm)

    @property
    def identity(self) -> bool:
        return self.shape == self.source_shape

    def counts_to_model(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical counts at the source spacing → model grid, total counts preserved."""
        self._check(canonical, self.source_shape, "canonical counts")
        return resample_counts(canonical, self.pixel_spacing, self.spacing_mm)

    def mask_to_model(self, stored: np.ndarray) -> np.ndarray:
        """A 0/1 mask on the stored source frame → uint8 model-grid mask (≥ half the area covered)."""
        self._check(stored, self.source_shape, "mask")
        canonical = self.source.to_canonical(np.asarray(stored) != 0).astype(np.float32)
        if self.identity:
            return canonical.astype(np.uint8)
        (h, w), (rows, cols) = self.shape, self.source_shape
        fraction = _apply(coverage_matrix(h, rows), canonical, coverage_matrix(w, cols))
        return (fraction >= 0.5 - 1e-6).astype(np.uint8)

    def to_source(self, model: np.ndarray) -> np.ndarray:
        """A model-grid map (e.g. lesion probability) → float64 on the stored source frame (a lesion
        probability keeps its float64 resolution near 1, :mod:`dicomnode.segmentation.inference`)."""
        self._check(model, self.shape, "model-grid map")
        if self.identity:
            canonical = model.astype(np.float64, copy=False)
        else:
            (h, w), (rows, cols) = self.shape, self.source_shape
            canonical = _apply(_back(rows, h), model, _back(cols, w), np.float64)
        return self.source.to_stored(canonical)

    @staticmethod
    def _check(array: np.ndarray, shape: tuple[int, int], what: str) -> None:
        if np.shape(array) != shape:
            raise ValueError(f"{what} of shape {np.shape(array)} does not match {shape}")


def _back(n_source: int, n_model: int) -> sparse.csr_matrix:
    """Model → source along one axis: interpolate where the source is finer, average where coarser."""
    if n_source >= n_model:
        return linear_matrix(n_source, n_model)
    return coverage_matrix(n_source, n_model)
