"""Realistic inputs for the result-object tests: NM whole-body studies with known lesion masks.

A phantom skeleton (anthropometric proportions as in ``dicomnode.segmentation.regions``) with soft tissue, a
bladder and Poisson counts is written as NM Image Storage in either layout of docs/dicom.md: one
instance with two frames (Detector Vector 1\\2, a View Code Sequence per detector) or one instance
per view (written by :func:`tests.nm_factory.nm_study`). The posterior view is stored mirrored, as
a camera does. Lesions are hot disks whose masks are known, so a :class:`SegmentationResult` built
from them is exact. The NM files themselves are checked with dciodvfy here, so that the result
tests start from valid sources.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from scipy import ndimage

from dicomnode.segmentation.result import Algorithm, Lesion, SegmentationResult, ViewResult
from dicomnode.segmentation.scan import BoneScan, View, ViewImage, ViewRule, ViewSource
from tests.nm_factory import nm_study

#: Where the phantom's vertex lies and how tall it is, as fractions of the matrix rows
#: (1024 rows at 2.26 mm: a 1.76 m adult starting 12 cm below the top of the field).
TOP, HEIGHT = 0.05, 0.76

ALGORITHM = Algorithm(name="dicomnode-test", version="0.0-test", network="threshold")

#: Lesion centres in canonical (row, column) as fractions of (body height, body width about the
#: midline), with the region a reader would name. Anterior: two disks; posterior: one.
LESIONS: dict[View, tuple[tuple[float, float, str], ...]] = {
    View.ANTERIOR: ((0.26, 0.0, "thoracic spine"), (0.47, 0.055, "pelvis")),
    View.POSTERIOR: ((0.25, -0.06, "thoracic cage"),),
}


@dataclass(frozen=True)
class Study:
    sources: list[Dataset]
    result: SegmentationResult


def phantom(rows: int, columns: int, spacing: float, view: View, rng: np.random.Generator,
            lesion_disks: list[tuple[int, int, int]]) -> np.ndarray:
    """Expected-counts picture of a supine adult in canonical orientation, then Poisson counts."""
    rr, cc = np.mgrid[0:rows, 0:columns].astype(np.float32)
    top, height, mid = TOP * rows, HEIGHT * rows, columns / 2 + 3  # vertex row, vertex to soles
    d = (rr - top) / height  # fraction of body height from the vertex
    x = (cc - mid) * spacing / (height * spacing)  # lateral offset as fraction of height
    body = np.zeros((rows, columns), bool)
    body |= ((d - 0.065) / 0.068) ** 2 + (x / 0.055) ** 2 < 1.0  # head
    body |= (d >= 0.12) & (d < 0.20) & (np.abs(x) < 0.03)  # neck
    body |= (d >= 0.17) & (d < 0.53) & (np.abs(x) < 0.10)  # trunk
    body |= (d >= 0.18) & (d < 0.62) & (np.abs(x) >= 0.105) & (np.abs(x) < 0.14)  # arms
    body |= (d >= 0.53) & (d < 1.0) & (np.abs(x) > 0.005) & (np.abs(x) < 0.085 - 0.04 * d)  # legs
    bone = np.zeros((rows, columns), bool)
    skull = ((d - 0.065) / 0.065) ** 2 + (x / 0.05) ** 2
    bone |= (skull < 1.0) & (skull > 0.55)
    bone |= (d >= 0.13) & (d < 0.50) & (np.abs(x) < 0.013)  # spine and sacrum
    ribs = ((d - 0.27) / 0.10) ** 2 + (x / 0.085) ** 2
    bone |= (ribs < 1.0) & (np.sin(d * 180) > 0.3)  # rib cage, striped
    bone |= (d >= 0.19) & (d < 0.37) & (np.abs(np.abs(x) - 0.12) < 0.008)  # humeri
    bone |= (d >= 0.37) & (d < 0.52) & (np.abs(np.abs(x) - 0.125) < 0.008)  # forearms
    pelvis = ((d - 0.46) / 0.05) ** 2 + (x / 0.08) ** 2
    bone |= (pelvis < 1.0) & (pelvis > 0.5)
    bone |= (d >= 0.52) & (d < 0.72) & (np.abs(np.abs(x) - 0.05) < 0.008)  # femora
    bone |= (d >= 0.72) & (d < 0.96) & (np.abs(np.abs(x) - 0.04) < 0.007)  # tibiae
    bone |= (d >= 0.96) & (d < 1.0) & (np.abs(np.abs(x) - 0.04) < 0.015)  # feet
    expected = np.full((rows, columns), 0.3, np.float32)
    expected[body] = 4.0
    expected[bone & body] = 14.0 if view is View.ANTERIOR else 18.0
    bladder = ((d - 0.485) / 0.015) ** 2 + (x / 0.02) ** 2 < 1.0
    expected[bladder] = 80.0
    expected = ndimage.gaussian_filter(expected, 1.0)
    for r, c, radius in lesion_disks:
        expected[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] *= 4.0
    return rng.poisson(expected).astype(np.uint16)


def lesion_disks(view: View, rows: int, columns: int) -> list[tuple[int, int, int]]:
    """Canonical (row, column, radius) of the view's lesions (see :data:`LESIONS`)."""
    top, height, mid = TOP * rows, HEIGHT * rows, columns / 2 + 3
    radius = max(2, round(rows / 256))
    return [(round(top + d * height), round(mid + x * height), radius) for d, x, _ in LESIONS[view]]


def lesions_of(view: View, mask: np.ndarray, counts: np.ndarray, pixel_area: float) -> tuple[Lesion, ...]:
    """Connected components (8-connectivity) of a stored-layout mask as :class:`Lesion` objects."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), int))
    lesions = []
    for label in range(1, count + 1):
        component = labels == label
        rows, cols = np.nonzero(component)
        values = counts[component].astype(np.float64)
        lesions.append(Lesion(
            view=view, label=label, pixel_count=int(component.sum()),
            area_mm2=float(component.sum() * pixel_area),
            centroid=(float(rows.mean()), float(cols.mean())),
            bbox=(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1),
            peak_counts=float(values.max()), mean_counts=float(values.mean()),
        ))
    return tuple(lesions)


def make_study(layout: str = "multiframe", rows: int = 1024, columns: int = 256,
               spacing: float = 2.26, with_lesions: bool = True, geometry: bool = False,
               views: tuple[View, ...] = (View.ANTERIOR, View.POSTERIOR),
               patient_name: str = "Phantom^Bone", seed: int = 0) -> Study:
    """A study in ``layout`` ("multiframe" or "split") and the exact result for its lesions."""
    rng = np.random.default_rng(seed)
    views = tuple(view for view in View if view in views)
    canonical: dict[View, np.ndarray] = {}
    masks: dict[View, np.ndarray] = {}
    for view in views:
        disks = lesion_disks(view, rows, columns) if with_lesions else []
        canonical[view] = phantom(rows, columns, spacing, view, rng, disks)
        mask = np.zeros((rows, columns), np.uint8)
        rr, cc = np.mgrid[0:rows, 0:columns]
        for r, c, radius in disks:
            mask[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 1
        masks[view] = mask
    flips = {View.ANTERIOR: False, View.POSTERIOR: True}  # posterior stored as seen from behind
    stored = {v: (a[:, ::-1] if flips[v] else a) for v, a in canonical.items()}
    sources = nm_study(canonical, layout=layout, orientation=dict.fromkeys(views), pixel_spacing=(spacing, spacing),
                       patient_name=patient_name, geometry=geometry)
    for ds in sources:  # a patient whose Type 2 attributes have values, for the results to copy
        ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "PHANTOM-001", "19500101", "M"
        ds.StudyDescription = "NM whole body bone scan"
    if layout == "multiframe":
        placement = {v: (sources[0], i + 1) for i, v in enumerate(views)}
    else:
        placement = {v: (ds, 1) for v, ds in zip(views, sources, strict=True)}
    images: dict[View, ViewImage] = {}
    results: dict[View, ViewResult] = {}
    for view in views:
        ds, frame = placement[view]
        source = ViewSource(
            sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
            series_instance_uid=ds.SeriesInstanceUID, frame_number=frame, rows=rows,
            columns=columns, flip_lr=flips[view], flip_ud=False, rule=ViewRule.VIEW_CODE,
        )
        images[view] = ViewImage(view=view, counts=canonical[view].astype(np.float32),
                                 pixel_spacing=(spacing, spacing), source=source)
        stored_mask = source.to_stored(masks[view])
        results[view] = ViewResult(
            view=view, probability=stored_mask.astype(np.float32) * 0.9, mask=stored_mask,
            lesions=lesions_of(view, stored_mask, stored[view], spacing * spacing),
        )
    scan = BoneScan(study_instance_uid=sources[0].StudyInstanceUID, anterior=images.get(View.ANTERIOR),
                    posterior=images.get(View.POSTERIOR))
    return Study(sources=sources, result=SegmentationResult(scan=scan, views=results, algorithm=ALGORITHM))


def write(directory: Path, datasets: list[Dataset], prefix: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = directory / f"{prefix}{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy (dicom3tools) prints for one file."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def dcentvfy_errors(paths: list[Path]) -> list[str]:
    """The ``Error`` lines dcentvfy prints for a set of files checked together."""
    run = subprocess.run(["dcentvfy", *map(str, paths)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_phantom_sources_are_valid_nm_images(layout: str, tmp_path: Path) -> None:
    study = make_study(layout)
    paths = write(tmp_path, study.sources, "nm")
    assert len(paths) == (1 if layout == "multiframe" else 2)
    for path in paths:
        assert dciodvfy_errors(path) == []
    assert dcentvfy_errors(paths) == []


def test_phantom_masks_match_lesions_and_stored_layout() -> None:
    study = make_study("split")
    for view, view_result in study.result.views.items():
        assert len(view_result.lesions) == len(LESIONS[view])
        assert int(view_result.mask.sum()) == sum(les.pixel_count for les in view_result.lesions)
        # The posterior mask is stored mirrored: its canonical form has the lesion where it was drawn.
        canonical = study.result.scan.views[view].source.to_canonical(view_result.mask)
        for r, c, _ in lesion_disks(view, 1024, 256):
            assert canonical[r, c] == 1


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_phantom_views_are_what_the_pipeline_reads(layout: str) -> None:
    from dicomnode.segmentation.views import load_scan

    study = make_study(layout)
    scan = load_scan(study.sources)
    for view, image in study.result.scan.views.items():
        loaded = scan.views[view]
        assert loaded.source == image.source
        np.testing.assert_array_equal(loaded.counts, image.counts)
        assert loaded.pixel_spacing == image.pixel_spacing
