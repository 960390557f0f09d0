"""``dicomnode synth``: simulate N studies and write them as a camera would, with truth and a manifest.

Layout on disk::

    OUT/manifest.json
    OUT/study_0001/wholebody.dcm            (layout "multiframe": one 2-frame NM instance)
    OUT/study_0002/anterior.dcm, posterior.dcm   (layout "split": one instance per view)
    OUT/study_000N/truth.npz                (uint8 masks "anterior", "posterior", stored layout)
    OUT/study_000N/overlay.png              (with --png)
    OUT/study_000N/*.dcm                    (with --vendor: a whole exam, see dicomnode.synth.vendors)

Study *i* (1-based) of seed *s* is simulated from ``numpy.random.default_rng([s, i])``, so a run is
deterministic and the first studies of a longer run are the same as those of a shorter one.  In
the ``mixed`` layout each study's layout is drawn from ``default_rng([s, i, 1])``.
Folder and file names come from the study index only, never from UIDs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from dicomnode.synth.dicom import StudyIdentity, write_nm_files
from dicomnode.synth.overlay import write_overlay
from dicomnode.synth.patient import check_population
from dicomnode.synth.simulate import SimulatedStudy, check_matrix, simulate_study
from dicomnode.synth.vendors import VENDORS, write_vendor_exam
from dicomnode.segmentation.scan import View

log = logging.getLogger(__name__)

LAYOUTS = ("multiframe", "split", "mixed")
STUDY_FILES = ("wholebody.dcm", "anterior.dcm", "posterior.dcm", "truth.npz", "overlay.png")
MANIFEST_VERSION = 1


def study_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of study ``index`` (1-based) of run ``seed``."""
    return np.random.default_rng([seed, index])


def study_layout(layout: str, seed: int, index: int) -> str:
    if layout != "mixed":
        return layout
    return "multiframe" if np.random.default_rng([seed, index, 1]).uniform() < 0.5 else "split"


def study_entry(study: SimulatedStudy, ident: StudyIdentity, folder: str, layout: str,
                files: list[dict]) -> dict:
    """The manifest record of one study."""
    counts = study.total_counts
    return {
        "folder": folder,
        "study_instance_uid": ident.study_uid,
        "patient_id": ident.patient_id,
        "layout": layout,
        "count_level": round(study.count_level),
        "total_counts": {v.value: counts[v] for v in View},
        "rows": study.rows, "columns": study.columns, "spacing_mm": study.spacing_mm,
        "patient": study.patient.as_dict(),
        "acquisition": study.acquisition.as_dict(),
        "files": files,
        "truth": "truth.npz",
        "lesions": [t.as_dict(study.spacing_mm) for t in study.lesions],
        "mimics": [{"kind": m.kind, "site": m.site,
                    "position_px": [round(float(r), 2), round(float(c), 2)]}
                   for m, (r, c) in zip(study.mimics, study.mimic_positions_px)],
    }


def write_studies(out: Path, *, studies: int, seed: int, layout: str, png: bool, rows: int = 1024,
                  columns: int = 256, spacing_mm: float = 2.26, vendor: str | None = None,
                  phases: int = 1, population: str = "adult") -> dict:
    """Simulate ``studies`` studies into ``out``; return (and write) the manifest dict.

    With ``vendor`` each study is a whole exam as that vendor sends it (``layout`` is then the
    vendor's; ``phases`` 2 adds a second whole-body scan), see :mod:`dicomnode.synth.vendors`;
    ``"mixed"`` takes the vendors in turn (study *i* gets ``VENDORS[(i - 1) % 5]``). ``population``:
    who is scanned (:data:`dicomnode.synth.patient.POPULATIONS`).
    """
    if vendor is not None and vendor not in (*VENDORS, "mixed"):
        raise ValueError(f"vendor must be one of {VENDORS} or 'mixed', got {vendor!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(studies, int) or studies < 1:
        raise ValueError(f"studies must be a positive integer, got {studies!r}")
    check_matrix(rows, columns, spacing_mm)
    check_population(population)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": "dicomnode-synth", "manifest_version": MANIFEST_VERSION, "seed": seed,
        "layout": layout, "vendor": vendor, "population": population, "rows": rows, "columns": columns, "spacing_mm": spacing_mm,
        "studies": [],
    }
    for index in range(1, studies + 1):
        study = simulate_study(study_rng(seed, index), rows=rows, columns=columns,
                               spacing_mm=spacing_mm, population=population)
        ident = StudyIdentity(seed, index)
        folder_name = f"study_{index:04d}"
        folder = out / folder_name
        folder.mkdir(exist_ok=True)
        for name in (*STUDY_FILES, *(path.name for path in folder.glob("*.dcm"))):
            (folder / name).unlink(missing_ok=True)  # a rerun with another layout leaves no old files
        if vendor is None:
            this_layout = study_layout(layout, seed, index)
            files = write_nm_files(study, ident, folder, this_layout)
        else:
            this_vendor = VENDORS[(index - 1) % len(VENDORS)] if vendor == "mixed" else vendor
            this_layout = f"vendor:{this_vendor}"
            files = write_vendor_exam(study, ident, folder, this_vendor, phases=phases)
        np.savez_compressed(folder / "truth.npz", **{v.value: study.truth[v] for v in View})
        if png:
            write_overlay(study, folder / "overlay.png")
        manifest["studies"].append(study_entry(study, ident, folder_name, this_layout, files))
        log.info("synth study %d/%d: %s, %d lesions", index, studies, this_layout, len(study.lesions))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
