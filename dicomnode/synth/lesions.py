"""Metastases (the truth) and benign look-alikes (never the truth), placed on the simulated skeleton.

Metastases from lung cancer:

* Sites (per lesion): thoracic spine 22 %, lumbar 14 %, cervical 3 %, ribs 24 %, pelvis 10 %,
  sacrum 3 %, sternum 2 %, skull 2 % (axial 80 %); femur 8 %, humerus 5 %, scapula 4 %,
  clavicle 2 %, tibia 1 % (appendicular 20 %).  Source: lung-cancer bone-scan series report
  78.8 % of 595 lesions in the axial skeleton, ribs (75 % of patients), spine (54 %) and pelvis
  (23 %) most often involved (NINMAS Dhaka 2013–14, 123 patients, "99mTc-MDP bone scan in lung
  cancer: predilection sites for metastasis"); Dabbagh Kakhki et al., Nucl Med Rev 2013;16:66
  (spine, then ribs and pelvis).  The split inside the axial skeleton is our assumption.
* Lesions per study: 25 % of studies have none (a screening population; assumption); among
  positive studies 20 % solitary, 60 % multiple (2–10), 20 % extensive (11–30) — NINMAS: solitary
  18.2 %, multiple 59.6 %, extensive 18.2 %.  Paper 002 counts 1016 lesions in 168 patients (≈ 6).
* Size (largest diameter): log-uniform 4–40 mm (the brief's range; small lesions are more common).
* Uptake: log-uniform 1.3–6× the local bone (the brief's range; the SIM bone phantom uses 6 : 1,
  Radiol Phys Technol 2021;14:336).
* Long-bone lesions favour the proximal end (t ~ Beta(1, 2.5) along the bone): red marrow.
* A lesion is an ellipsoid inside its bone: the largest diameter along the bone's axis, the width
  limited to 90 % of the bone's width, the depth to the bone's chord (expansile lesions aside).

Benign mimics (drawn into the image, never into the truth):

* Degenerative joint disease: Poisson(0.5 + 0.04 × (age − 45)) foci at knees, shoulders
  (acromioclavicular), sternoclavicular joints, hips, lower lumbar facets, lower cervical spine,
  wrists and ankles; 10–25 mm, 1.5–3× the local bone (assumption).
* Rib fractures: 10 % of studies; 1–3 consecutive ribs at the same position along the rib,
  8–14 mm, 3–6× the rib (focal intense uptake in a vertical row is the pattern that tells
  fractures from metastases; assumption).
* Injection-site contamination or extravasation: 30 % of studies, antecubital fossa (70 %) or
  dorsum of the hand, 5–15 mm, 300–5000× soft tissue, i.e. from faint to hotter than the bladder
  (assumption).
* The bladder is always present (patient parameters) and is listed as a mimic.
* Open growth plates, for the ``"adolescent"`` population only (:mod:`dicomnode.synth.patient`):
  a 7 mm band across the proximal humerus, the distal femur and the proximal tibia on both sides,
  ``physis_to_bone`` (2–4) times the bone; adolescents have no degenerative joints.

Lesions keep at least 10 mm (plus both radii) away from any focal mimic, so a mimic never touches
a lesion's truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicomnode.synth.anatomy import LEFT, RIGHT, Joint, Phantom, Structure, bone_scale, side_name
from dicomnode.synth.shapes import Ellipsoid

SITE_FREQUENCIES: dict[str, float] = {
    "thoracic_spine": 0.22, "lumbar_spine": 0.14, "cervical_spine": 0.03, "ribs": 0.24,
    "pelvis": 0.10, "sacrum": 0.03, "sternum": 0.02, "skull": 0.02, "femur": 0.08,
    "humerus": 0.05, "scapula": 0.04, "clavicle": 0.02, "tibia": 0.01,
}
SIZE_RANGE_MM = (4.0, 40.0)
UPTAKE_RANGE = (1.3, 6.0)
P_NO_LESION = 0.25
BURDEN_CLASSES = ((0.20, 1, 1), (0.60, 2, 10), (0.20, 11, 30))  # (probability, min, max)
MIMIC_CLEARANCE_MM = 10.0

DEGENERATIVE_SITES = ("knee", "acromioclavicular", "sternoclavicular", "hip", "facet", "vertebra",
                      "wrist", "ankle")


@dataclass(frozen=True)
class Metastasis:
    """One metastasis: where it is, how big, how hot; ``structure`` is the host bone."""

    id: int
    site: str
    bone: str
    x: float
    y: float
    size_mm: float  # largest diameter (along the bone)
    width_mm: float  # diameter across the bone
    depth_mm: float  # extent along the camera axis
    angle: float
    uptake_ratio: float
    depth_fraction: float
    bone_concentration: float
    host: Structure

    @property
    def shape(self) -> Ellipsoid:
        return Ellipsoid(self.x, self.y, self.size_mm / 2, self.width_mm / 2, self.depth_mm / 2,
                         angle=self.angle, depth=self.depth_fraction)

    @property
    def excess_concentration(self) -> float:
        return (self.uptake_ratio - 1.0) * self.bone_concentration


@dataclass(frozen=True)
class Mimic:
    """A benign hot spot: degenerative joint, rib fracture, injection site, the bladder, or an open growth plate."""

    kind: str  # "degenerative_joint" | "rib_fracture" | "injection_site" | "bladder" | "physis"
    site: str
    x: float
    y: float
    radius_mm: float
    shape: Ellipsoid
    concentration: float  # excess activity per volume relative to soft tissue
    host: object | None = None

    @property
    def focal(self) -> bool:
        return self.kind != "bladder"


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def lesion_count(rng: np.random.Generator) -> int:
    """How many metastases a study has (see the module docstring)."""
    if rng.uniform() < P_NO_LESION:
        return 0
    probs = [c[0] for c in BURDEN_CLASSES]
    _, low, high = BURDEN_CLASSES[int(rng.choice(len(BURDEN_CLASSES), p=probs))]
    return int(rng.integers(low, high + 1))


def sample_mimics(rng: np.random.Generator, phantom: Phantom) -> list[Mimic]:
    """Degenerative joints, rib fractures, injection site and bladder for one patient."""
    p = phantom.patient
    mimics: list[Mimic] = []
    joints = [j for j in phantom.joints.values()
              if any(k in j.name for k in DEGENERATIVE_SITES) and "fossa" not in j.name]
    n_degenerative = 0 if p.physis_to_bone else rng.poisson(0.5 + 0.04 * max(p.age_years - 45, 0))
    for index in rng.choice(len(joints), size=min(n_degenerative, len(joints)), replace=False):
        joint: Joint = joints[int(index)]
        size = float(rng.uniform(10.0, 25.0))
        ratio = float(rng.uniform(1.5, 3.0))
        shape = Ellipsoid(joint.x, joint.y, size / 2, size / 2 * rng.uniform(0.6, 1.0), size / 2,
                          angle=float(rng.uniform(0, np.pi)), depth=joint.depth)
        mimics.append(Mimic("degenerative_joint", joint.name, joint.x, joint.y, size / 2, shape,
                            (ratio - 1.0) * joint.concentration, joint.host))
    if rng.uniform() < 0.10:
        side = side_name(rng.choice([-1.0, 1.0]))
        first = int(rng.integers(3, 9))
        t = float(rng.uniform(0.15, 0.5))  # along the rib from its head: posterior to lateral
        for k in range(first, first + int(rng.integers(1, 4))):
            rib = phantom.ribs[f"{side} rib {k}"]
            point = rib.sample(rng, t=t)
            size = float(rng.uniform(8.0, 14.0))
            ratio = float(rng.uniform(3.0, 6.0))
            shape = Ellipsoid(point.x, point.y, size / 2, min(size / 2, point.half_width),
                              point.half_depth, angle=point.axis_angle, depth=point.depth_fraction)
            mimics.append(Mimic("rib_fracture", f"{side} rib {k}", point.x, point.y, size / 2, shape,
                                (ratio - 1.0) * p.bone_to_soft * 0.85))
    if rng.uniform() < 0.30:
        side = side_name(rng.choice([-1.0, 1.0]))
        where = "antecubital fossa" if rng.uniform() < 0.7 else "dorsum of hand"
        joint = phantom.joints[f"{side} {where}"]
        size = float(rng.uniform(5.0, 15.0))
        shape = Ellipsoid(joint.x, joint.y, size / 2, size / 2, size / 2, depth=joint.depth)
        mimics.append(Mimic("injection_site", joint.name, joint.x, joint.y, size / 2, shape,
                            _log_uniform(rng, 300.0, 5000.0), joint.host))
    bladder = phantom.bladder
    mimics.append(Mimic("bladder", "bladder", bladder.cx, bladder.cy, max(bladder.a, bladder.b),
                        bladder, 0.0))
    if p.physis_to_bone:
        mimics += _physes(rng, phantom)
    return mimics


#: Open growth plates (``Patient.physis_to_bone`` > 0): the bone end they cross, and on which side of
#: its ellipse (-1 its top, +1 its bottom): proximal humerus, distal femur, proximal tibia.
PHYSES = (("humeral head", 1.0), ("femoral condyles", -1.0), ("tibial plateau", 1.0))


def _physes(rng: np.random.Generator, phantom: Phantom) -> list[Mimic]:
    """A thin band across each of :data:`PHYSES` on both sides, ``physis_to_bone`` times the bone
    (each site within 10 %, the two sides of a site within 5 % of each other): the symmetric,
    intense normal uptake of a child's knees and shoulders (dicomnode.synth.patient, "Population")."""
    p = phantom.patient
    s = bone_scale(p.height_mm)
    bones = {b.name: b for b in phantom.bones}
    out = []
    for part, edge in PHYSES:
        ratio = p.physis_to_bone * float(rng.uniform(0.9, 1.1))
        for side in (RIGHT, LEFT):
            name = f"{side_name(side)} {part}"
            host = bones[name]
            e = host.shape
            y = e.cy + edge * 0.85 * e.b
            shape = Ellipsoid(e.cx, y, 0.9 * e.a, 3.5 * s, 0.8 * e.c, depth=e.depth)
            out.append(Mimic("physis", f"{name} physis", e.cx, y, 0.9 * e.a, shape,
                             (ratio * float(rng.uniform(0.975, 1.025)) - 1.0) * host.concentration))
    return out


def sample_lesions(rng: np.random.Generator, phantom: Phantom, mimics: list[Mimic],
                   inside_field) -> list[Metastasis]:
    """Metastases for one patient; ``inside_field(x, y)`` says whether a point is imaged."""
    by_site: dict[str, list[Structure]] = {}
    for structure in phantom.bones:
        by_site.setdefault(structure.site, []).append(structure)
    sites = list(SITE_FREQUENCIES)
    probs = np.array([SITE_FREQUENCIES[s] for s in sites])
    probs /= probs.sum()
    lesions: list[Metastasis] = []
    wanted = lesion_count(rng)
    attempts = 0
    while len(lesions) < wanted and attempts < 50 * max(wanted, 1):
        attempts += 1
        site = sites[int(rng.choice(len(sites), p=probs))]
        candidates = by_site[site]
        weights = np.array([_volume_weight(c) for c in candidates])
        host = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
        if host.proximal_first:
            point = host.shape.sample(rng, t=float(rng.beta(1.0, 2.5)))
        else:
            point = host.shape.sample(rng)
        if not inside_field(point.x, point.y):
            continue
        size = _log_uniform(rng, *SIZE_RANGE_MM)
        width = min(size, 1.8 * point.half_width) * float(rng.uniform(0.7, 1.0))
        depth = min(size, max(2.0 * point.half_depth, 4.0))
        if any(np.hypot(point.x - m.x, point.y - m.y) < size / 2 + m.radius_mm + MIMIC_CLEARANCE_MM
               for m in mimics if m.focal):
            continue
        if any(np.hypot(point.x - o.x, point.y - o.y) < (size + o.size_mm) / 4 for o in lesions):
            continue
        lesions.append(Metastasis(
            id=len(lesions) + 1, site=site, bone=host.name, x=point.x, y=point.y, size_mm=size,
            width_mm=max(width, 3.0), depth_mm=depth, angle=point.axis_angle,
            uptake_ratio=_log_uniform(rng, *UPTAKE_RANGE), depth_fraction=point.depth_fraction,
            bone_concentration=host.concentration, host=host))
    return lesions


def _volume_weight(structure: Structure) -> float:
    """How likely a bone of a site is chosen: proportional to its coronal area (red-marrow proxy)."""
    x0, x1, y0, y1 = structure.shape.bbox()
    return max((x1 - x0) * (y1 - y0), 1.0)
