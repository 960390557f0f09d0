"""``dicomnode synth --spect-ct``: simulated hybrid bone exams on disk, with known masks.

Layout::

    OUT/manifest.json
    OUT/exam_0001/ct/CT_0001.dcm …   CT Image Storage, one file per slice (instance 1 the top)
    OUT/exam_0001/spect.dcm          NM Image Storage, RECON TOMO, attenuation corrected
    OUT/exam_0001/truth.npz          "labels_ct" (CT grid) and "labels_spect" (SPECT grid), uint8
                                     0 background, 1 metastatic, 2 benign; slice 0 the most inferior
                                     (the order of dicomnode.segmentation.volume's geometry, by position)

Exam *i* (1-based) of seed *s* draws from ``numpy.random.default_rng([s, i, 3])``, so a run is
deterministic whatever the number of worker processes. Folder names come from the index only.

Grids (``size``): ``standard`` CT 256 × 256 at 1.953 mm (500 mm field), 96 slices of 4 mm; ``small``
the same field at 128 × 128 (3.906 mm); ``tiny`` 64 × 64 at 7.8 mm, 48 slices of 8 mm (tests). The
SPECT grid is 128 × 128 at 4.795 mm with 80 slices (the Siemens reconstruction quoted in the issue)
for ``standard`` and ``small``, 64 × 64 × 40 at 9.59 mm for ``tiny``; both centred on the same point,
in one Frame of Reference.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicomnode.synth.dicom import StudyIdentity
from dicomnode.segmentation.volume import VolumeGeometry, resample_labels

from .dicom import ct_datasets, nm_recon_dataset, write_exam_files
from .imaging import spect_counts
from .phantom import Z_RANGE, build_phantom

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
CLASSES = ("background", "metastatic", "benign")


@dataclass(frozen=True)
class Grids:
    ct_matrix: int
    ct_spacing: float
    ct_slices: int
    ct_slice_mm: float
    spect_matrix: int
    spect_spacing: float
    spect_slices: int


SIZES = {
    "standard": Grids(256, 500 / 256, 96, 4.0, 128, 4.795, 80),
    "small": Grids(128, 500 / 128, 96, 4.0, 128, 4.795, 80),
    "tiny": Grids(64, 500 / 64, 48, 8.0, 64, 9.59, 40),
}


def _axial(matrix: int, spacing: float, slices: int, slice_mm: float, centre_z: float, frame: str) -> VolumeGeometry:
    half = (matrix - 1) / 2 * spacing
    return VolumeGeometry((slices, matrix, matrix), (-half, -half, centre_z - (slices - 1) / 2 * slice_mm),
                          (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (spacing, spacing), (0.0, 0.0, slice_mm), frame)


def exam_grids(size: str, frame_of_reference: str) -> tuple[VolumeGeometry, VolumeGeometry]:
    """(CT, SPECT) geometries of one exam."""
    g = SIZES[size]
    centre = (Z_RANGE[0] + Z_RANGE[1]) / 2
    ct = _axial(g.ct_matrix, g.ct_spacing, g.ct_slices, g.ct_slice_mm, centre, frame_of_reference)
    spect = _axial(g.spect_matrix, g.spect_spacing, g.spect_slices, g.spect_spacing, centre, frame_of_reference)
    return ct, spect


def simulate_exam(out: Path, seed: int, index: int, size: str) -> dict:
    """Simulate and write exam ``index``; return its manifest record."""
    rng = np.random.default_rng([seed, index, 3])
    ident = StudyIdentity(seed, index)
    ct_geo, spect_geo = exam_grids(size, ident.uid("frame-of-reference"))
    phantom = build_phantom(rng, ct_geo)
    fwhm, bone_counts = rng.uniform(10, 15), rng.uniform(60, 150)
    counts, params = spect_counts(rng, phantom, spect_geo, fwhm_mm=fwhm, bone_counts=bone_counts)
    activity, hours = rng.uniform(600, 800), rng.uniform(2.5, 4.0)
    folder_name = f"exam_{index:04d}"
    folder = out / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    files = write_exam_files(folder, ct_datasets(ident, phantom.hu, ct_geo),
                             nm_recon_dataset(ident, counts, spect_geo, activity_mbq=activity,
                                              hours_post_injection=hours, fwhm_mm=fwhm))
    spect_labels = resample_labels(phantom.labels, ct_geo, spect_geo, len(CLASSES))
    np.savez_compressed(folder / "truth.npz", labels_ct=phantom.labels, labels_spect=spect_labels)
    log.info("synth spect-ct exam %d: %d lesions", index, len(phantom.lesions))
    return {
        "folder": folder_name, "study_instance_uid": ident.study_uid, "patient_id": ident.patient_id,
        "frame_of_reference_uid": ct_geo.frame_of_reference, "files": files, "truth": "truth.npz",
        "spect": {**params, "activity_mbq": round(activity, 1), "hours_post_injection": round(hours, 2)},
        "lesions": [lesion.as_dict() for lesion in phantom.lesions],
        "voxels": {"ct": {c: int((phantom.labels == k).sum()) for k, c in enumerate(CLASSES) if k},
                   "spect": {c: int((spect_labels == k).sum()) for k, c in enumerate(CLASSES) if k}},
    }


def _one(args: tuple[Path, int, int, str]) -> dict:
    return simulate_exam(*args)


def write_exams(out: Path, *, exams: int, seed: int, size: str = "standard", workers: int = 1) -> dict:
    """Simulate ``exams`` hybrid exams into ``out`` (``workers`` processes); return the manifest."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not isinstance(exams, int) or exams < 1:
        raise ValueError(f"exams must be a positive integer, got {exams!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, index, size) for index in range(1, exams + 1)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(_one, jobs))
    else:
        records = [_one(job) for job in jobs]
    manifest = {"generator": "dicomnode-synth-spectct", "manifest_version": MANIFEST_VERSION, "seed": seed,
                "size": size, "classes": list(CLASSES), "exams": records}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
