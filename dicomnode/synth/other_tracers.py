"""Whole-body scans of tracers that are not bone agents: the same simulated patient, physics and
camera as a bone scan (:mod:`dicomnode.synth.simulate`), with no skeletal uptake.

They are what a node must not read as a bone scan when nothing states the tracer
(:mod:`dicomnode.segmentation.skeleton`; docs/segmentation.md, "Is it a bone scan?"):

* ``"sestamibi"``: 99mTc-sestamibi (MIBI) at rest: myocardium, liver, bowel, kidneys, bladder and
  thyroid over muscle; the organ concentrations relative to soft tissue (heart 8, liver 5, kidneys 4,
  bowel 3, thyroid 4) are assumptions that rank the organs as on published MIBI whole-body images;
* ``"renal"``: a renal agent (MAG3, DTPA) late: kidneys (15) and bladder over soft tissue;
* ``"soft-tissue"``: soft tissue, kidneys and bladder at a bone scan's own levels, no bone.

:func:`as_sestamibi` rewrites the headers of a simulated exam's instance as a sestamibi study's
were seen on a real camera: the study named MIBI, the TOMO stating "Sestamibi", every other instance
stating no agent (the node must decide from the whole study; docs/conformance.md).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.synth.anatomy import Structure, bone_scale
from dicomnode.synth.physics import add_scatter, counts_scale
from dicomnode.synth.shapes import Ellipsoid
from dicomnode.synth.simulate import _Study, to_stored
from dicomnode.segmentation.scan import View

TRACERS = ("sestamibi", "renal", "soft-tissue")


def _organs(study: _Study, tracer: str) -> list[Structure]:
    """The phantom's own kidneys and bladder, re-weighted, plus the tracer's other organs."""
    organs = list(study.phantom.organs)
    if tracer == "soft-tissue":
        return organs
    kidney = {"sestamibi": 4.0, "renal": 15.0}[tracer]
    organs = [Structure(o.name, o.site, o.shape, kidney if o.site == "kidney" else o.concentration, o.host)
              for o in organs]
    if tracer == "sestamibi":
        height = study.patient.height_mm
        s = bone_scale(height)
        organs += [
            Structure("heart", "heart", Ellipsoid(25 * s, 0.28 * height, 55 * s, 65 * s, 50 * s, depth=0.35), 8.0),
            Structure("liver", "liver", Ellipsoid(-60 * s, 0.33 * height, 90 * s, 70 * s, 70 * s, depth=0.5), 5.0),
            Structure("bowel", "bowel", Ellipsoid(0.0, 0.42 * height, 80 * s, 45 * s, 50 * s, depth=0.4), 3.0),
            Structure("thyroid", "thyroid", Ellipsoid(0.0, 0.155 * height, 20 * s, 15 * s, 10 * s, depth=0.2), 4.0),
        ]
    return organs


def simulate_other_tracer(seed: int, tracer: str, *, rows: int = 1024, columns: int = 256,
                          spacing_mm: float = 2.26) -> dict[View, np.ndarray]:
    """Both views (stored layout, uint16 counts) of one whole-body scan of ``tracer`` (:data:`TRACERS`)."""
    if tracer not in TRACERS:
        raise ValueError(f"unknown tracer {tracer!r}: one of {', '.join(TRACERS)}")
    rng = np.random.default_rng(seed)
    study = _Study(rng, rows, columns, spacing_mm)
    study.phantom.organs = _organs(study, tracer)
    study.phantom.bones = []
    study.render_anatomy([])
    primary = {view: study.projector.primary(view) for view in View}
    scale = counts_scale(study.acquisition, {v: float(primary[v].sum()) for v in View}, study.projector.emitted)
    images = {}
    for view in View:
        expected = add_scatter(primary[view], spacing_mm) * scale
        counts = rng.poisson(expected).clip(0, np.iinfo(np.uint16).max).astype(np.uint16)
        images[view] = to_stored(view, counts)
    return images


def as_sestamibi(ds: Dataset, kind: str) -> None:
    """Rewrite one instance of a simulated exam (of instance ``kind``: "tomo", "whole-body", ...) in
    place as a sestamibi study's (module docstring)."""
    ds.StudyDescription = "NM MIBI Parathyroid"
    for keyword in ("SeriesDescription", "ImageID", "ProtocolName"):  # a MIBI exam names no bone
        if keyword in ds:
            setattr(ds, keyword, str(ds.get(keyword)).replace("Bone", "MIBI"))
    if kind == "tomo":
        ds.RadiopharmaceuticalInformationSequence[0].Radiopharmaceutical = "Sestamibi"
        del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence
    else:
        ds.pop("RadiopharmaceuticalInformationSequence", None)
