"""A voxel torso/pelvis phantom with CT numbers, 99mTc-MDP activity and labelled bone lesions.

Everything is built on the CT grid in patient coordinates (LPS, mm; x to the patient's left,
y posterior, z towards the head) from a few solids: an elliptic body with a subcutaneous fat layer,
lungs above the diaphragm, heart, liver, kidneys and a bladder; a spine of vertebral bodies (cortical
shell, trabecular interior) with discs and neural arches (facet joints, spinous processes), ribs
(cortical tubes around marrow), sternum, iliac wings, sacrum, femoral heads and shafts (cortical
tube around fatty marrow). Anatomy spans z ∈ [−230, 150] mm (lower thorax to proximal femora).

CT numbers (HU; typical adult values, varied per patient): air −1000, lung −850, fat −100, soft
tissue 40, blood/heart 45, liver 60, kidney 35, urine 10, disc 80, marrow −30 (fatty, long bones),
trabecular bone 150–300, cortical bone 1000–1400.

Activity (relative concentration at 3 h p.i., docs/simulation.md "SPECT/CT"): soft tissue 1, blood
pool 1.3, liver 1.2, kidneys 4–8, bladder 30–80 (the hottest voxels, as in planar bone scans),
cortical and trabecular bone 5–8 (bone ~ 2–5× soft tissue per unit volume after partial volume,
notes §3), marrow 1.5.

Lesions (label 1 metastatic, 2 benign; label 0 everything else), each a region of bone:

- **metastases** in vertebral bodies, pelvis, sacrum, ribs, sternum and femora: spheres of radius
  6–16 mm clipped to bone; CT look *lytic* (bone replaced by 20–60 HU, cortex thinned), *blastic*
  (sclerosis 600–1000 HU) or *mixed* (sclerotic rim, lytic core); uptake 3–8× the local bone
  (lytic 2–4×).
- **benign**: *osteophytes* (a cortical bump, 800–1100 HU, growing off a vertebral endplate corner;
  2–5×), *facet joint arthropathy* (an enlarged sclerotic facet, 600–900 HU; 2–4×), *rib fractures*
  (a callus cuff 400–700 HU around a lucent fracture line; 3–6×) and *Schmorl nodes* (an endplate
  pit with a lytic core and a sclerotic rim; 1.5–3×).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dicomnode.segmentation.volume import VolumeGeometry

Z_RANGE = (-230.0, 150.0)
"""mm: the anatomy's extent along z (inferior to superior)."""

# tissue codes (also the ``tissue`` map the phantom returns)
AIR, FAT, SOFT, LUNG, HEART, LIVER, KIDNEY, BLADDER, DISC, MARROW, TRABECULAR, CORTICAL = range(12)
BONE = (TRABECULAR, CORTICAL)

METASTASIS_KINDS = ("lytic", "blastic", "mixed")
BENIGN_KINDS = ("osteophyte", "facet", "fracture", "schmorl")
BACKGROUND, METASTATIC, BENIGN = 0, 1, 2


@dataclass(frozen=True)
class PhantomLesion:
    label: int
    kind: str
    site: str
    centre_mm: tuple[float, float, float]
    radius_mm: float
    uptake: float
    voxels: int

    def as_dict(self) -> dict:
        return {"class": "metastatic" if self.label == METASTATIC else "benign", "kind": self.kind,
                "site": self.site, "centre_mm": [round(v, 1) for v in self.centre_mm],
                "radius_mm": round(self.radius_mm, 1), "uptake": round(self.uptake, 2), "voxels": self.voxels}


@dataclass
class VolumePhantom:
    """Maps on the CT grid (``geometry.shape``)."""

    geometry: VolumeGeometry
    hu: np.ndarray
    activity: np.ndarray
    mu_per_mm: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    lesions: list[PhantomLesion] = field(default_factory=list)


@dataclass(frozen=True)
class Vertebra:
    z: float
    height: float
    rx: float
    ry: float
    y: float


def _grid(geometry: VolumeGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient x, y, z of every voxel centre (broadcastable arrays of the volume's shape)."""
    k, i, j = (np.arange(n, dtype=np.float32) for n in geometry.shape)
    pts = geometry.to_patient(np.stack(np.meshgrid(k, i, j, indexing="ij"), axis=-1).reshape(-1, 3))
    x, y, z = (pts[:, d].reshape(geometry.shape).astype(np.float32) for d in range(3))
    return x, y, z


def _shell(solid: np.ndarray, thickness_mm: float, spacing_mm: float) -> np.ndarray:
    """Voxels of ``solid`` within ``thickness_mm`` of its surface (at least one voxel)."""
    steps = max(1, int(round(thickness_mm / spacing_mm)))
    return solid & ~ndimage.binary_erosion(solid, iterations=steps)


def build_phantom(rng: np.random.Generator, geometry: VolumeGeometry, *, metastases: int | None = None,
                  benign: int | None = None) -> VolumePhantom:
    """One patient: anatomy drawn from ``rng``, then lesions (counts drawn when not given)."""
    x, y, z = _grid(geometry)
    spacing = float(min(geometry.pixel_spacing))
    scale = rng.uniform(0.85, 1.15)
    a, b = 165.0 * scale, 115.0 * scale * rng.uniform(0.9, 1.1)
    tissue = np.full(geometry.shape, AIR, np.uint8)
    in_anatomy = (z >= Z_RANGE[0]) & (z <= Z_RANGE[1])
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    body = (rho <= 1.0) & in_anatomy
    tissue[body] = SOFT
    fat = body & (rho > 1.0 - rng.uniform(10, 25) / b)
    tissue[fat] = FAT
    diaphragm = 40.0 + rng.uniform(-15, 15)
    for side in (-1, 1):
        lung = (((x - side * 0.45 * a) / (0.33 * a)) ** 2 + ((y - 5) / (0.62 * b)) ** 2 <= 1) & (z > diaphragm) & body
        tissue[lung] = LUNG
    heart = ((x - 15) / 55) ** 2 + ((y + 0.3 * b) / 45) ** 2 + ((z - diaphragm - 50) / 50) ** 2 <= 1
    tissue[heart & body] = HEART
    liver = (((x + 0.4 * a) / (0.5 * a)) ** 2 + ((y + 5) / (0.65 * b)) ** 2 + ((z - diaphragm + 50) / 70) ** 2 <= 1) & (z <= diaphragm)
    tissue[liver & body] = LIVER
    kidneys = np.zeros(geometry.shape, bool)
    for side in (-1, 1):
        kidneys |= ((x - side * 70) / 28) ** 2 + ((y - 0.45 * b) / 22) ** 2 + ((z + 30 - side * 8) / 50) ** 2 <= 1
    tissue[kidneys & body] = KIDNEY
    fill = rng.uniform(0.6, 1.3)
    bladder = ((x / (40 * fill)) ** 2 + ((y + 0.4 * b) / (30 * fill)) ** 2 + ((z + 212) / (30 * fill)) ** 2 <= 1) & body
    tissue[bladder] = BLADDER

    # skeleton: solids, then a cortical shell on each
    part = np.zeros(geometry.shape, np.uint8)  # which bone (index into PARTS) a bone voxel belongs to
    vertebrae = _spine(rng, b)
    for v in vertebrae:
        solid = ((x / v.rx) ** 2 + ((y - v.y) / v.ry) ** 2 <= 1) & (np.abs(z - v.z) <= v.height / 2)
        _bone(tissue, part, solid, PARTS.index("vertebral body"), spacing, rng)
        disc = ((x / v.rx) ** 2 + ((y - v.y) / v.ry) ** 2 <= 1) & (np.abs(z - v.z - v.height / 2 - 3) <= 3)
        tissue[disc & (tissue == SOFT)] = DISC
        ay = v.y + v.ry + 11
        ring = np.hypot(x, y - ay)
        arch = (ring <= 15) & (ring >= 8) & (y > v.y + v.ry - 2) & (np.abs(z - v.z) <= v.height / 2 - 1)
        spinous = (np.abs(x) <= 4) & (y > ay + 10) & (y < ay + 36) & (np.abs(z - v.z + 4) <= 7)
        facets = np.zeros_like(arch)
        for side in (-1, 1):
            facets |= np.sqrt((x - side * 14) ** 2 + (y - ay) ** 2 + (z - v.z - v.height / 2 + 2) ** 2) <= 5
        _bone(tissue, part, (arch | spinous | facets) & ~_bone_mask(tissue), PARTS.index("neural arch"), spacing, rng)
    thorax = z > diaphragm - 60
    phi = np.degrees(np.arctan2(y / b, x / a))
    from_posterior = np.abs(((phi - 90) + 180) % 360 - 180)
    for zr in np.arange(Z_RANGE[1] - 5, diaphragm - 70, -27.0):
        zc = zr - 28 * from_posterior / 180
        d = np.hypot((rho - 0.87) * 0.5 * (a + b), z - zc)
        rib = (d <= 5.5) & (from_posterior > 14) & (from_posterior < 150) & thorax
        _bone(tissue, part, rib & ~_bone_mask(tissue), PARTS.index("rib"), spacing, rng, marrow_inside=True)
    sternum = (np.abs(x) <= 15) & (y > -b + 8) & (y < -b + 22) & (z > diaphragm) & (z < Z_RANGE[1])
    _bone(tissue, part, sternum, PARTS.index("sternum"), spacing, rng)
    t = np.clip((z + 175) / 90, 0, 1)
    for side in (-1, 1):
        inner = 55 + 55 * t
        iliac = (side * x >= inner) & (side * x <= inner + 11) & (y > -15 - 35 * t) & (y < 0.5 * b) & (z > -178) & (z < -85)
        _bone(tissue, part, iliac & ~_bone_mask(tissue), PARTS.index("pelvis"), spacing, rng)
        head = np.sqrt((x - side * 88) ** 2 + (y - 5) ** 2 + (z + 205) ** 2) <= 23
        shaft = (np.hypot(x - side * 100, y - 5) <= 14) & (z < -212)
        _bone(tissue, part, head | shaft, PARTS.index("femur"), spacing, rng, marrow_inside=True)
    s = np.clip((-95 - z) / 105, 0, 1)
    sacrum = (np.abs(x) <= 48 - 25 * s) & (y > 0.25 * b - 5 + 20 * s) & (y < 0.25 * b + 28 + 20 * s) & (z < -95) & (z > -200)
    _bone(tissue, part, sacrum & ~_bone_mask(tissue), PARTS.index("sacrum"), spacing, rng)

    hu, activity = _hu_and_activity(rng, tissue, part)
    labels = np.zeros(geometry.shape, np.uint8)
    phantom = VolumePhantom(geometry, hu, activity, np.zeros(0), labels, tissue)
    n_met = int(rng.integers(0, 5)) if metastases is None else metastases
    n_ben = int(rng.integers(0, 4)) if benign is None else benign
    lesion_plan = [METASTATIC] * n_met + [BENIGN] * n_ben
    rng.shuffle(lesion_plan)
    coords = (x, y, z)
    for label in lesion_plan:
        _add_lesion(rng, phantom, part, coords, vertebrae, label)
    phantom.mu_per_mm = _mu(phantom.hu)
    return phantom


PARTS = ("none", "vertebral body", "neural arch", "rib", "sternum", "pelvis", "femur", "sacrum")


def _bone_mask(tissue: np.ndarray) -> np.ndarray:
    return np.isin(tissue, BONE)


def _bone(tissue: np.ndarray, part: np.ndarray, solid: np.ndarray, index: int, spacing: float,
          rng: np.random.Generator, *, marrow_inside: bool = False) -> None:
    """Fill ``solid`` with trabecular bone (or fatty marrow) inside a cortical shell."""
    if not solid.any():
        return
    cortex = _shell(solid, rng.uniform(1.5, 2.5), spacing)
    tissue[solid] = MARROW if marrow_inside else TRABECULAR
    tissue[cortex] = CORTICAL
    part[solid] = index


def _spine(rng: np.random.Generator, b: float) -> list[Vertebra]:
    """Vertebral bodies from the top of the field to the sacrum, growing in size caudally."""
    out, z = [], Z_RANGE[1] - rng.uniform(0, 20)
    while z > -85:
        t = (Z_RANGE[1] - z) / (Z_RANGE[1] + 85)
        height = 20 + 8 * t
        out.append(Vertebra(z=z - height / 2, height=height, rx=17 + 8 * t, ry=14 + 6 * t, y=0.22 * b))
        z -= height + 6
    return out


TISSUE_HU = {AIR: (-1000, 0), FAT: (-100, 10), SOFT: (40, 5), LUNG: (-850, 30), HEART: (45, 5), LIVER: (60, 5),
             KIDNEY: (35, 5), BLADDER: (10, 3), DISC: (80, 10), MARROW: (-30, 20), TRABECULAR: (220, 40),
             CORTICAL: (1200, 100)}
"""Mean and patient-to-patient spread of each tissue's CT number."""
TISSUE_ACTIVITY = {AIR: (0, 0), FAT: (0.6, 0.1), SOFT: (1.0, 0.1), LUNG: (0.25, 0.05), HEART: (1.3, 0.2),
                   LIVER: (1.2, 0.2), KIDNEY: (6.0, 1.5), BLADDER: (50.0, 20.0), DISC: (1.0, 0.1),
                   MARROW: (1.5, 0.3), TRABECULAR: (6.0, 1.0), CORTICAL: (6.5, 1.0)}


def _hu_and_activity(rng: np.random.Generator, tissue: np.ndarray, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hu_values = np.array([rng.normal(*TISSUE_HU[t]) for t in range(len(TISSUE_HU))], np.float32)
    act_values = np.array([max(0.0, rng.normal(*TISSUE_ACTIVITY[t])) for t in range(len(TISSUE_ACTIVITY))], np.float32)
    act_values[BLADDER] = max(act_values[BLADDER], 20.0)
    hu = hu_values[tissue] + rng.normal(0, 12, tissue.shape).astype(np.float32)  # CT noise
    activity = act_values[tissue]
    # spine and pelvis take up more than ribs (trabecular bone with more turnover)
    activity[np.isin(part, (PARTS.index("vertebral body"), PARTS.index("pelvis"), PARTS.index("sacrum")))] *= 1.2
    return hu, activity


def _mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation at 140 keV per mm from HU (bilinear: water 0.0154/mm, bone scaled by 0.6
    of its CT-number excess, a common SPECT/CT conversion)."""
    water = 0.0154
    mu = np.where(hu <= 0, water * (1 + hu / 1000.0), water * (1 + 0.6 * hu / 1000.0))
    return np.clip(mu, 0, None).astype(np.float32)


SITES_METASTASIS = ("vertebral body", "vertebral body", "pelvis", "sacrum", "rib", "sternum", "femur")
"""Metastasis sites drawn uniformly from this list (the axial skeleton is the commonest site)."""


def _pick_voxel(rng: np.random.Generator, part: np.ndarray, name: str) -> tuple[int, int, int] | None:
    candidates = np.argwhere(part == PARTS.index(name))
    if not len(candidates):
        return None
    return tuple(int(v) for v in candidates[rng.integers(len(candidates))])


def _sphere(coords, centre, radius: float) -> np.ndarray:
    x, y, z = coords
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius ** 2


def _add_lesion(rng: np.random.Generator, ph: VolumePhantom, part: np.ndarray, coords, vertebrae: list[Vertebra],
                label: int) -> None:
    """Add one lesion if a free place is found (a few tries); lesions never overlap."""
    x, y, z = coords
    for _ in range(6):
        if label == METASTATIC:
            site = SITES_METASTASIS[rng.integers(len(SITES_METASTASIS))]
            voxel = _pick_voxel(rng, part, site)
            if voxel is None:
                continue
            centre = (float(x[voxel]), float(y[voxel]), float(z[voxel]))
            radius = rng.uniform(6, 16) if site not in ("rib", "sternum") else rng.uniform(6, 10)
            kind = METASTASIS_KINDS[rng.integers(3)]
            region = _sphere(coords, centre, radius) & (part > 0)
            uptake = rng.uniform(2, 4) if kind == "lytic" else rng.uniform(3, 8)
        else:
            kind = BENIGN_KINDS[rng.integers(len(BENIGN_KINDS))]
            inside = [v for v in vertebrae if Z_RANGE[0] < v.z < Z_RANGE[1] and _in_field(coords, v.z)]
            if kind != "fracture" and not inside:
                continue
            v = inside[rng.integers(len(inside))] if inside else None
            end = 1 if rng.uniform() < 0.5 else -1
            if kind == "osteophyte":
                angle = rng.uniform(-np.pi, 0)  # anterior or lateral margin
                centre = (v.rx * np.cos(angle), v.y + v.ry * np.sin(angle), v.z + end * v.height / 2)
                radius = rng.uniform(5, 8)
                bump = _sphere(coords, centre, radius) & ~np.isin(ph.tissue, (LUNG,))
                region = bump & ((part > 0) | (ph.tissue == SOFT) | (ph.tissue == DISC) | (ph.tissue == FAT))
                site, uptake = "vertebral endplate", rng.uniform(2, 5)
            elif kind == "facet":
                side = 1 if rng.uniform() < 0.5 else -1
                centre = (side * 14.0, v.y + v.ry + 11, v.z + v.height / 2 - 2)
                radius = rng.uniform(6, 8)
                region = _sphere(coords, centre, radius) & ((part > 0) | (ph.tissue == SOFT) | (ph.tissue == FAT))
                site, uptake = "facet joint", rng.uniform(2, 4)
            elif kind == "schmorl":
                centre = (0.0, v.y, v.z + end * (v.height / 2 - 2))
                radius = rng.uniform(4, 7)
                region = _sphere(coords, centre, radius) & (part == PARTS.index("vertebral body"))
                site, uptake = "vertebral endplate", rng.uniform(1.5, 3)
            else:
                voxel = _pick_voxel(rng, part, "rib")
                if voxel is None:
                    continue
                centre = (float(x[voxel]), float(y[voxel]), float(z[voxel]))
                radius = rng.uniform(6, 9)
                rib = part == PARTS.index("rib")
                region = _sphere(coords, centre, radius) & ndimage.binary_dilation(rib, iterations=1)
                site, uptake = "rib", rng.uniform(3, 6)
        if region.sum() < 3 or (ph.labels[ndimage.binary_dilation(region)] > 0).any():
            continue
        _ct_look(rng, ph, region, kind, coords, centre, radius)
        bone_activity = float(np.median(ph.activity[region & np.isin(ph.tissue, BONE)])) if (region & np.isin(ph.tissue, BONE)).any() else TISSUE_ACTIVITY[TRABECULAR][0]
        ph.activity[region] = bone_activity * uptake
        ph.labels[region] = label
        ph.lesions.append(PhantomLesion(label, kind, site, tuple(float(c) for c in centre), float(radius), float(uptake),
                                        int(region.sum())))
        return


def _in_field(coords, z_mm: float) -> bool:
    """A vertebra at ``z_mm`` lies inside the field, 10 mm clear of its ends."""
    z = coords[2]
    return float(z.min()) + 10 < z_mm < float(z.max()) - 10


def _ct_look(rng: np.random.Generator, ph: VolumePhantom, region: np.ndarray, kind: str, coords, centre, radius: float) -> None:
    """Change the CT numbers (and tissue) of a lesion region by its kind."""
    x, y, z = coords
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    noise = rng.normal(0, 12, int(region.sum())).astype(np.float32)
    if kind == "lytic":
        ph.hu[region] = rng.uniform(20, 60) + noise
        ph.tissue[region] = SOFT
    elif kind in ("blastic", "facet"):
        ph.hu[region] = rng.uniform(600, 1000) + noise
        ph.tissue[region] = CORTICAL
    elif kind == "mixed":
        core = region & (r <= 0.55 * radius)
        ph.hu[region] = rng.uniform(600, 900)
        ph.hu[core] = rng.uniform(20, 60)
        ph.hu[region] += noise
        ph.tissue[region] = CORTICAL
        ph.tissue[core] = SOFT
    elif kind == "osteophyte":
        ph.hu[region] = np.maximum(ph.hu[region], rng.uniform(800, 1100) + noise)
        ph.tissue[region] = CORTICAL
    elif kind == "schmorl":
        core = region & (r <= radius - 2)
        ph.hu[region] = rng.uniform(600, 800)
        ph.hu[core] = rng.uniform(40, 80)
        ph.hu[region] += noise
        ph.tissue[region] = CORTICAL
    elif kind == "fracture":
        ph.hu[region] = rng.uniform(400, 700) + noise
        ph.tissue[region] = CORTICAL
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        plane = np.abs((x - centre[0]) * normal[0] + (y - centre[1]) * normal[1] + (z - centre[2]) * normal[2]) <= 1.5
        ph.hu[region & plane] = rng.uniform(50, 150)
