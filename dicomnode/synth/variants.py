"""Normal variants: physiological and benign hot spots a physician does not call bone lesions.

The normal-variants test set (issue 25; ``benchmarks/normal_variants.py``) forces one of these into
a simulated study, with or without metastases elsewhere. Each is drawn into the image like the
simulator's other benign mimics (:mod:`dicomnode.synth.lesions`) and never into the truth:

=========================  ===================================================================
variant                    what is drawn (assumptions, calibrated by eye on published scans)
=========================  ===================================================================
full-bladder               500–800 mL of urine at 150–250× soft tissue
urine-contamination        one or two 10–30 mm spots on the anterior skin of the groin or upper
                           thigh, 100–1000× soft tissue
hot-kidneys                kidneys at 12–25× soft tissue (obstruction, poor hydration)
injection-site             extravasation at the antecubital fossa or the dorsum of the hand,
                           10–20 mm, 1000–5000× soft tissue
degenerative-knees         both knees, 15–25 mm, 1.8–3× bone, the two sides within 25 %
degenerative-shoulders     both acromioclavicular joints, as the knees
iliac-crests               both iliac crests (muscle insertions), 15–25 mm, 1.5–2.5× bone
dental-sinus               alveolar ridge (teeth) and maxillary sinuses, 10–20 mm, 2–3.5× bone
=========================  ===================================================================
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dicomnode.synth.anatomy import LEFT, RIGHT, Phantom, bone_scale, side_name
from dicomnode.synth.lesions import Mimic
from dicomnode.synth.patient import Patient
from dicomnode.synth.shapes import Ellipsoid

VARIANTS = ("full-bladder", "urine-contamination", "hot-kidneys", "injection-site", "degenerative-knees",
            "degenerative-shoulders", "iliac-crests", "dental-sinus")


def check_variant(variant: str | None) -> None:
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown normal variant {variant!r}; known: {', '.join(VARIANTS)}")


def variant_patient(variant: str | None, patient: Patient, rng: np.random.Generator) -> Patient:
    """The patient with the variant's biodistribution (bladder, kidneys)."""
    if variant == "full-bladder":
        return dataclasses.replace(patient, bladder_volume_ml=float(rng.uniform(500.0, 800.0)),
                                   bladder_to_soft=float(rng.uniform(150.0, 250.0)))
    if variant == "hot-kidneys":
        return dataclasses.replace(patient, kidney_to_soft=float(rng.uniform(12.0, 25.0)))
    return patient


def variant_mimics(variant: str | None, phantom: Phantom, rng: np.random.Generator) -> list[Mimic]:
    """The variant's extra hot spots (none for the variants that change the biodistribution)."""
    if variant == "urine-contamination":
        return [_contamination(phantom, rng) for _ in range(int(rng.integers(1, 3)))]
    if variant == "injection-site":
        side = side_name(rng.choice([RIGHT, LEFT]))
        where = "antecubital fossa" if rng.uniform() < 0.6 else "dorsum of hand"
        joint = phantom.joints[f"{side} {where}"]
        size = float(rng.uniform(10.0, 20.0))
        return [Mimic("injection_site", joint.name, joint.x, joint.y, size / 2,
                      Ellipsoid(joint.x, joint.y, size / 2, size / 2, size / 2, depth=joint.depth),
                      float(np.exp(rng.uniform(np.log(1000.0), np.log(5000.0)))), joint.host)]
    pairs = {"degenerative-knees": ("knee", (1.8, 3.0)), "degenerative-shoulders": ("acromioclavicular", (1.8, 3.0))}
    if variant in pairs:
        name, ratio = pairs[variant]
        return _symmetric(phantom, rng, [phantom.joints[f"{s} {name}"] for s in ("right", "left")], ratio)
    if variant == "iliac-crests":
        crests = [s for s in phantom.bones if s.name.endswith("iliac crest")]
        points = []
        for crest in crests:
            point = crest.shape.sample(rng, t=float(rng.uniform(0.4, 0.7)))
            points.append((crest.name, point.x, point.y, crest.concentration))
        return _symmetric_points(rng, points, (1.5, 2.5), depth=0.65)
    if variant == "dental-sinus":
        H, s = phantom.patient.height_mm, bone_scale(phantom.patient.height_mm)
        bone = phantom.patient.bone_to_soft
        spots = [("teeth", 0.0, 0.118 * H, 0.15)] + [
            (f"{side_name(x)} maxillary sinus", x * 22 * s, 0.092 * H, 0.2) for x in (RIGHT, LEFT)]
        out = []
        for name, x, y, depth in spots:
            size = float(rng.uniform(10.0, 20.0))
            out.append(Mimic("dental", name, x, y, size / 2, Ellipsoid(x, y, size / 2, size / 2.5, size / 2, depth=depth),
                             (float(rng.uniform(2.0, 3.5)) - 1.0) * 0.9 * bone))
        return out
    return []


def _contamination(phantom: Phantom, rng: np.random.Generator) -> Mimic:
    H = phantom.patient.height_mm
    x = float(rng.choice([RIGHT, LEFT])) * float(rng.uniform(0.02, 0.08)) * H
    y = float(rng.uniform(0.50, 0.60)) * H
    size = float(rng.uniform(10.0, 30.0))
    return Mimic("contamination", "skin", x, y, size / 2, Ellipsoid(x, y, size / 2, size / 2, 2.0, depth=0.02),
                 float(np.exp(rng.uniform(np.log(100.0), np.log(1000.0)))) * 4)


def _symmetric(phantom: Phantom, rng: np.random.Generator, joints, ratio: tuple[float, float]) -> list[Mimic]:
    return _symmetric_points(rng, [(j.name, j.x, j.y, j.concentration) for j in joints], ratio,
                             depth=joints[0].depth)


def _symmetric_points(rng: np.random.Generator, points, ratio: tuple[float, float], depth: float) -> list[Mimic]:
    """The same degenerative focus on both sides: one size and uptake, each side within 25 %."""
    size, base = float(rng.uniform(15.0, 25.0)), float(rng.uniform(*ratio))
    out = []
    for name, x, y, concentration in points:
        r = base * float(rng.uniform(0.8, 1.25))
        shape = Ellipsoid(x, y, size / 2, size / 2 * 0.8, size / 2, depth=depth)
        out.append(Mimic("degenerative_joint", name, x, y, size / 2, shape, (r - 1.0) * concentration))
    return out
