"""Tiny labelled bone-scan studies for the training and evaluation tests.

Each patient gets one study: a small whole-body phantom (body, spine, pelvis) with a few hot discs
(metastases) drawn into the canonical counts of both views, Poisson noise, stored as NM Image Storage
by :mod:`tests.nm_factory`, and LabelMe circles at the same discs (in the *stored* layout: the posterior
is stored mirrored) as the labels. Small matrices keep training steps fast on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import disk

from dicomnode.segmentation.scan import View
from tests.nm_factory import nm_study, write_study


#: A planar-lesions preset small enough to train in seconds on a CPU (cross-validation, learn's folds).
TINY_PRESET = """
name = "tiny"
[model]
network = "unet"
width = 4
[preprocessing]
window = "whole-view"
aggregation = "none"
[data]
patch_rows = 64
patch_columns = 32
patches_per_view = 2
[augment]
quantise = 0.5
[optim]
lr = 2e-3
batch_size = 4
epochs = 1
[crops]
batch_size = 4
"""


@dataclass(frozen=True)
class Disc:
    row: int  # canonical row
    column: int  # canonical column
    radius: float


def phantom(rows: int, columns: int, discs: list[Disc], rng: np.random.Generator, level: float = 20.0) -> dict[View, np.ndarray]:
    r = np.arange(rows)[:, None] / rows
    c = np.arange(columns)[None, :] / columns
    body = ((np.abs(c - 0.5) < 0.2) & (r > 0.04) & (r < 0.97)).astype(np.float32)
    spine = ((np.abs(c - 0.5) < 0.03) & (r > 0.1) & (r < 0.55)).astype(np.float32)
    pelvis = (((r - 0.6) ** 2 / 0.04**2 + (c - 0.5) ** 2 / 0.15**2) < 1).astype(np.float32)
    expected = level * (body + 3 * spine + 2 * pelvis)
    hot = np.zeros((rows, columns), np.float32)
    for d in discs:
        hot[disk((d.row, d.column), d.radius, shape=hot.shape)] = 1
    return {view: rng.poisson(expected + level * gain * hot).astype(np.float32)
            for view, gain in ((View.ANTERIOR, 6.0), (View.POSTERIOR, 5.0))}


def _labelme(path: Path, image: str, discs: list[Disc], rows: int, columns: int, mirrored: bool) -> None:
    shapes = []
    for d in discs:
        column = columns - 1 - d.column if mirrored else d.column
        shapes.append({"label": "metastasis", "shape_type": "circle",
                       "points": [[column, d.row], [column + d.radius, d.row]]})
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image,
                                "imageData": None, "imageHeight": rows, "imageWidth": columns}))


def write_labelled_studies(root: Path, patients: int, *, rows: int = 128, columns: int = 64, seed: int = 0) -> dict[str, list[Disc]]:
    """Write ``patients`` one-study patients (split layout) with LabelMe labels; returns their discs."""
    rng = np.random.default_rng(seed)
    truth = {}
    for k in range(patients):
        discs = [
            Disc(int(rng.integers(15, rows - 15)), int(rng.integers(columns // 2 - 10, columns // 2 + 10)),
                 float(rng.uniform(2.0, 3.5)))
            for _ in range(int(rng.integers(1, 4)))
        ]
        patient = f"P{k:03d}"
        datasets = nm_study(phantom(rows, columns, discs, rng), layout="split")
        for ds in datasets:
            ds.PatientID = patient
        folder = root / patient
        write_study(datasets, folder)  # 1.dcm anterior (L\F), 2.dcm posterior (R\F, mirrored)
        _labelme(folder / "1.json", "1.dcm", discs, rows, columns, mirrored=False)
        _labelme(folder / "2.json", "2.dcm", discs, rows, columns, mirrored=True)
        truth[patient] = discs
    return truth
