"""The simulated adult: skeleton, soft tissue, lungs, kidneys and bladder as parametric solids.

Coordinates are patient millimetres in the coronal plane: ``x`` towards the patient's left (0 on
the midline), ``y`` from the vertex towards the feet.  Every bone is a :mod:`shapes` solid with an
activity concentration relative to soft tissue and a depth fraction (0 anterior skin … 1 posterior
skin) that the physics turns into per-view attenuation and blur.

Proportions are fractions of body height H.  Vertical landmarks (vertex = 0) follow Drillis &
Contini's segment lengths as redrawn by Winter (*Biomechanics and Motor Control of Human Movement*,
Fig. 4.1): chin 0.130 H, shoulder (acromion) 0.182 H, elbow 0.370 H, wrist 0.515 H, greater
trochanter 0.470 H, knee 0.715 H, ankle 0.961 H; shoulder width 0.259 H, hip width 0.191 H, upper
arm 0.186 H, forearm 0.146 H, hand 0.108 H.  Spine segments (cervical ≈ 12 cm, thoracic ≈ 27 cm,
lumbar ≈ 17 cm in a 170 cm adult) and bone widths (vertebral bodies 25 → 52 mm from C3 to L5, rib
≈ 12 × 7 mm, femoral shaft ≈ 28 mm, head of femur ≈ 48 mm, calvarium 7 mm thick) are standard
anatomy-atlas values (Gray's Anatomy, 41st ed.), scaled by H / 1700 mm.

Depth fractions (0 anterior, 1 posterior) encode what every nuclear-medicine reader knows: the
spine, scapulae, kidneys and posterior ribs lie near the back (brighter in the posterior view), the
sternum, face, mandible, patellae, anterior ribs and pubis near the front (brighter anteriorly).

Relative MDP uptake per unit volume (bone concentration multipliers; an assumption calibrated by
eye so that the projected brightness ranks as on published whole-body scans: spine, sacro-iliac
joints and pelvis brightest, then skull, ribs and joints, long-bone shafts faint): vertebral
bodies, sternum, sacrum 1.0; sacro-iliac joints 1.4; ilium 0.95; ribs, clavicles 0.85; scapulae
0.8–1.0; calvarium 0.7; long-bone shafts 0.6–0.65; large trabecular joint ends (femoral and
humeral heads, condyles, tibial plateaux) 0.45–0.6 because their projected chord is long; feet 0.3
for the same reason.  Women get breasts (soft tissue lying on the anterior chest wall, 250–900 mL
each), which attenuate the anterior ribs as in real scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dicomnode.synth.patient import ArmPose, Patient
from dicomnode.synth.shapes import Ellipsoid, Plate, Shape, Shell, Trunk, Tube

# Skeletal sites used for lesion placement and the bone label map (index + 1 = label value).
BONE_SITES: tuple[str, ...] = (
    "skull", "mandible", "cervical_spine", "thoracic_spine", "lumbar_spine", "sacrum", "pelvis",
    "ribs", "sternum", "clavicle", "scapula", "humerus", "forearm", "hand", "femur", "patella",
    "tibia", "fibula", "foot",
)

RIGHT, LEFT = -1.0, 1.0


def side_name(side: float) -> str:
    return "left" if side > 0 else "right"


@dataclass(frozen=True)
class Structure:
    """One activity-bearing solid: a bone (``site`` in :data:`BONE_SITES`) or an organ."""

    name: str  # e.g. "T7", "left rib 5", "left femur", "bladder"
    site: str
    shape: Shape
    concentration: float  # activity per unit volume relative to soft tissue
    host: Shape | None = None  # soft-tissue part that sets its depth (None: the whole body there)
    proximal_first: bool = False  # a long bone whose first node is its proximal end


@dataclass(frozen=True)
class Joint:
    """A landmark where degenerative change or an injection can sit."""

    name: str
    x: float
    y: float
    depth: float
    size: float  # typical extent (mm)
    concentration: float  # bone concentration there (relative to soft tissue)
    host: Shape | None = None


@dataclass
class Phantom:
    """Everything the physics needs to project one patient."""

    patient: Patient
    body_parts: list[Shape] = field(default_factory=list)  # soft tissue (chord = thickness)
    stacked_parts: list[Shape] = field(default_factory=list)  # lying on the trunk (forearms)
    lungs: list[Shape] = field(default_factory=list)
    bones: list[Structure] = field(default_factory=list)
    organs: list[Structure] = field(default_factory=list)
    joints: dict[str, Joint] = field(default_factory=dict)
    ribs: dict[str, Tube] = field(default_factory=dict)
    bladder: Ellipsoid | None = None


def _bezier(p0, p1, p2, n: int = 6) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)
    return [tuple(map(float, p)) for p in pts]


def bone_scale(height_mm: float) -> float:
    """How much a patient's bones are larger than the atlas's (module docstring: scaled by H / 1700 mm)."""
    return height_mm / 1700.0


class _Builder:
    """Builds a :class:`Phantom`; one method per body region, reading like an anatomy chapter."""

    def __init__(self, patient: Patient) -> None:
        self.p = patient
        self.H = patient.height_mm
        self.s = bone_scale(patient.height_mm)
        self.w = patient.build ** 0.8  # soft-tissue width scale
        self.t = patient.build  # soft-tissue thickness scale
        self.bone = patient.bone_to_soft
        self.ph = Phantom(patient)

    # ---- helpers -------------------------------------------------------------------------------
    def h(self, fraction: float) -> float:
        return fraction * self.H

    def add_bone(self, name: str, site: str, shape: Shape, uptake: float, **kw) -> None:
        self.ph.bones.append(Structure(name, site, shape, uptake * self.bone, **kw))

    # ---- soft tissue -----------------------------------------------------------------------------
    def trunk_half_width(self, y: float) -> float:
        ys = np.array([0.160, 0.175, 0.19, 0.23, 0.30, 0.36, 0.42, 0.47, 0.50, 0.53])
        ws = np.array([0.040, 0.075, 0.110, 0.106, 0.098, 0.088, 0.095, 0.104, 0.098, 0.075])
        return float(np.interp(y / self.H, ys, ws)) * self.H * self.w

    def soft_tissue(self) -> None:
        w, t = self.w, self.t
        head = Ellipsoid(0.0, self.h(0.066), self.h(0.048) * w ** 0.3, self.h(0.068),
                         self.h(0.057) * t ** 0.3)
        neck = Tube(((0.0, self.h(0.11)), (0.0, self.h(0.175))), (self.h(0.034) * w,) * 2,
                    (0.5, 0.5), aspect=1.0 * t / w)
        ys = [0.160, 0.175, 0.19, 0.23, 0.30, 0.36, 0.42, 0.47, 0.50, 0.53]
        # AP depth / width: chest 22 cm deep at 170 cm; neck base 12 cm
        depth = [0.036, 0.045, 0.055, 0.064, 0.066, 0.064, 0.064, 0.062, 0.058, 0.045]
        trunk = Trunk(tuple(self.h(y) for y in ys), tuple(self.trunk_half_width(self.h(y)) for y in ys),
                      tuple(self.h(d) * t for d in depth), round_mm=25.0)
        self.ph.body_parts += [head, neck, trunk]
        for side in (RIGHT, LEFT):
            hip_x = side * self.h(0.052)
            knee_x = side * (self.h(0.045) + 0.15 * self.p.feet_apart_mm * 0.3)
            ankle_x = side * (0.5 * self.p.feet_apart_mm + self.h(0.01))
            thigh = Tube(((hip_x * 1.25, self.h(0.49)), (knee_x, self.h(0.715)),
                          (ankle_x, self.h(0.961))),
                         (self.h(0.050) * w, self.h(0.032) * w ** 0.7, self.h(0.018)),
                         (0.5, 0.5, 0.5), aspect=0.95)
            foot = Ellipsoid(ankle_x, self.h(0.975), self.h(0.025), self.h(0.028), self.h(0.045),
                             depth=0.5)
            self.ph.body_parts += [thigh, foot]
        if self.p.sex == "F":  # breasts lie on the chest wall: extra anterior soft tissue
            size = self.p.build ** 1.5
            for side in (RIGHT, LEFT):
                self.ph.stacked_parts.append(Ellipsoid(
                    side * self.h(0.052) * w, self.h(0.275), self.h(0.038) * size ** 0.5,
                    self.h(0.034) * size ** 0.5, self.h(0.022) * size ** 0.5, depth=0.5))
        # lungs: ~30 % tissue density, so 0.7 of their chord is "missing" water
        for side in (RIGHT, LEFT):
            self.ph.lungs.append(Ellipsoid(side * self.h(0.052) * w ** 0.3, self.h(0.255),
                                           self.h(0.042), self.h(0.062), self.h(0.040), depth=0.5))

    # ---- arms (soft tissue and bone together: pose moves both) -----------------------------------
    def arms(self) -> None:
        pose = self.p.arm_pose
        for side in (RIGHT, LEFT):
            sn = side_name(side)
            shoulder = np.array([side * self.h(0.108), self.h(0.192)])
            upper_len, fore_len, hand_len = self.h(0.186), self.h(0.146), self.h(0.108)
            arm_r = self.h(0.024) * self.w
            clearance = self.trunk_half_width(self.h(0.36)) + arm_r + 5.0
            if pose is ArmPose.ABDUCTED:
                ang = np.radians(self.p.abduction_deg)
                elbow_dir = np.array([side * np.sin(ang), np.cos(ang)])
            else:
                dx = max(clearance - abs(shoulder[0]), 0.0)
                elbow_dir = np.array([side * dx, np.sqrt(max(upper_len ** 2 - dx ** 2, 1.0))])
                elbow_dir /= np.linalg.norm(elbow_dir)
            elbow = shoulder + upper_len * elbow_dir
            if pose is ArmPose.ABDOMEN:
                hand_target = np.array([side * self.h(0.035), self.h(0.43)])
                wrist_dir = hand_target - elbow
                wrist_dir /= np.linalg.norm(wrist_dir)
            else:
                wrist_dir = elbow_dir.copy()
                if pose is ArmPose.SIDES:  # forearm follows the hip outline
                    hip_clear = self.trunk_half_width(self.h(0.47)) + self.h(0.018) + 5.0
                    target = np.array([side * max(hip_clear, abs(elbow[0])), elbow[1] + fore_len])
                    wrist_dir = (target - elbow) / np.linalg.norm(target - elbow)
            wrist = elbow + fore_len * wrist_dir
            hand_end = wrist + hand_len * wrist_dir
            upper = Tube((tuple(shoulder), tuple(elbow)), (arm_r, self.h(0.019) * self.w),
                         (0.5, 0.5))
            fore = Tube((tuple(elbow), tuple(wrist)), (self.h(0.019) * self.w, self.h(0.013) * self.w),
                        (0.5, 0.5), aspect=0.8)
            hand = Tube((tuple(wrist), tuple(hand_end)), (self.h(0.018), self.h(0.014)), (0.5, 0.5),
                        aspect=0.45)
            self.ph.body_parts.append(upper)
            stacked = pose is ArmPose.ABDOMEN
            (self.ph.stacked_parts if stacked else self.ph.body_parts).extend([fore, hand])
            host_fore = fore if stacked else None
            host_hand = hand if stacked else None
            # bones
            s = self.s
            self.add_bone(f"{sn} humerus", "humerus",
                          Tube((tuple(shoulder + 12 * s * elbow_dir), tuple(elbow - 15 * s * elbow_dir)),
                               (11 * s, 9 * s), (0.5, 0.5)), 0.6, proximal_first=True)
            self.add_bone(f"{sn} humeral head", "humerus",
                          Ellipsoid(shoulder[0], shoulder[1], 23 * s, 23 * s, 23 * s, depth=0.5), 0.55)
            perp = np.array([-elbow_dir[1], elbow_dir[0]])
            self.add_bone(f"{sn} distal humerus", "humerus",
                          Ellipsoid(*(elbow - 8 * s * elbow_dir), 26 * s, 12 * s, 14 * s,
                                    angle=float(np.arctan2(perp[1], perp[0])), depth=0.5), 0.45)
            perp_f = np.array([-wrist_dir[1], wrist_dir[0]]) * 8 * s
            for bone, off, rad in (("radius", perp_f, 7 * s), ("ulna", -perp_f, 6 * s)):
                self.add_bone(f"{sn} {bone}", "forearm",
                              Tube((tuple(elbow + off + 12 * s * wrist_dir), tuple(wrist + off)),
                                   (rad, rad), (0.5, 0.5)), 0.65, host=host_fore, proximal_first=True)
            self.add_bone(f"{sn} carpus", "hand",
                          Ellipsoid(*(wrist + 15 * s * wrist_dir), 20 * s, 16 * s, 10 * s,
                                    angle=float(np.arctan2(wrist_dir[1], wrist_dir[0])), depth=0.5),
                          1.0, host=host_hand)
            self.add_bone(f"{sn} hand", "hand",
                          Tube((tuple(wrist + 35 * s * wrist_dir), tuple(hand_end)), (14 * s, 10 * s),
                               (0.5, 0.5), aspect=0.35), 0.7, host=host_hand)
            self.ph.joints[f"{sn} shoulder"] = Joint(f"{sn} shoulder", *shoulder, 0.5, 22 * s, 1.1 * self.bone)
            self.ph.joints[f"{sn} elbow"] = Joint(f"{sn} elbow", *(elbow - 8 * s * elbow_dir), 0.5,
                                                  18 * s, 1.1 * self.bone)
            self.ph.joints[f"{sn} wrist"] = Joint(f"{sn} wrist", *(wrist + 15 * s * wrist_dir), 0.5,
                                                  15 * s, self.bone, host=host_hand)
            self.ph.joints[f"{sn} antecubital fossa"] = Joint(
                f"{sn} antecubital fossa", *elbow, 0.2, 8.0, 1.0, host=host_fore or upper)
            self.ph.joints[f"{sn} dorsum of hand"] = Joint(
                f"{sn} dorsum of hand", *(wrist + 45 * s * wrist_dir), 0.3, 8.0, 1.0, host=hand)

    # ---- head and neck ---------------------------------------------------------------------------
    def skull(self) -> None:
        s = self.s
        outer = Ellipsoid(0.0, self.h(0.060), 72 * s, 92 * s, 95 * s)
        for depth, half in ((0.2, "frontal"), (0.8, "occipital")):
            o = Ellipsoid(outer.cx, outer.cy, outer.a, outer.b, outer.c, depth=depth)
            self.add_bone(f"calvarium ({half})", "skull", Shell(o, 7.0 * s, weight=0.5), 0.7)
        self.add_bone("facial bones", "skull",
                      Ellipsoid(0.0, self.h(0.098), 45 * s, 30 * s, 14 * s, depth=0.15), 0.6)
        self.add_bone("skull base", "skull",
                      Ellipsoid(0.0, self.h(0.090), 55 * s, 22 * s, 30 * s, depth=0.55), 0.2)
        jaw = [(-48 * s, self.h(0.090)), (-44 * s, self.h(0.116)), (-20 * s, self.h(0.126)),
               (0.0, self.h(0.129)), (20 * s, self.h(0.126)), (44 * s, self.h(0.116)),
               (48 * s, self.h(0.090))]
        self.add_bone("mandible", "mandible",
                      Tube(tuple(jaw), (7 * s,) * 7, (0.55, 0.4, 0.15, 0.08, 0.15, 0.4, 0.55)), 0.9)

    def spine(self) -> None:
        s = self.s
        levels = ([(f"C{i}", "cervical_spine") for i in range(1, 8)]
                  + [(f"T{i}", "thoracic_spine") for i in range(1, 13)]
                  + [(f"L{i}", "lumbar_spine") for i in range(1, 6)])
        # top of C1 … bottom of C7, T12, L5 (fractions of H)
        bounds = {"cervical_spine": (0.103, 0.178), "thoracic_spine": (0.178, 0.335),
                  "lumbar_spine": (0.335, 0.448)}
        widths = {"cervical_spine": (26, 28), "thoracic_spine": (30, 40),
                  "lumbar_spine": (46, 52)}
        depths = {"cervical_spine": 0.55, "thoracic_spine": 0.72, "lumbar_spine": 0.64}
        counts = {"cervical_spine": 7, "thoracic_spine": 12, "lumbar_spine": 5}
        index = {k: 0 for k in counts}
        self.vertebra_y: dict[str, float] = {}
        for name, site in levels:
            i, n = index[site], counts[site]
            index[site] += 1
            top, bottom = (self.h(b) for b in bounds[site])
            pitch = (bottom - top) / n
            cy = top + (i + 0.5) * pitch
            width = (widths[site][0] + (widths[site][1] - widths[site][0]) * i / max(n - 1, 1)) * s
            self.vertebra_y[name] = cy
            self.add_bone(name, site, Ellipsoid(0.0, cy, width / 2, 0.55 * pitch, width * 0.38,
                                                depth=depths[site]), 1.0)
            # posterior arch (laminae, transverse and spinous processes)
            self.add_bone(f"{name} posterior arch", site,
                          Ellipsoid(0.0, cy, width * 0.6, 0.7 * pitch, 9 * s,
                                    depth=min(depths[site] + 0.16, 0.9)), 0.55)
        # sacrum (inverted triangle) and coccyx
        top, tip = self.h(0.448), self.h(0.525)
        self.add_bone("sacrum", "sacrum",
                      Plate(((-50 * s, top), (50 * s, top), (0.0, tip)), 24 * s, 0.8, edge=8 * s), 1.0)
        self.vertebra_y["S1"] = top + 12 * s
        for side in (RIGHT, LEFT):
            self.add_bone(f"{side_name(side)} sacro-iliac joint", "pelvis",
                          Tube(((side * 38 * s, self.h(0.452)), (side * 30 * s, self.h(0.49))),
                               (8 * s, 7 * s), (0.78, 0.78)), 1.4)
        for name in ("L4", "L5", "S1"):  # facet joints (degenerative change is common here)
            for side in (RIGHT, LEFT):
                self.ph.joints[f"{name} {side_name(side)} facet"] = Joint(
                    f"{name} {side_name(side)} facet", side * 18 * s, self.vertebra_y[name], 0.85,
                    12 * s, self.bone)
        for name in ("C5", "C6"):
            self.ph.joints[f"{name} vertebra"] = Joint(f"{name} vertebra", 0.0, self.vertebra_y[name],
                                                       0.55, 14 * s, self.bone)

    # ---- thorax --------------------------------------------------------------------------------------
    def thorax(self) -> None:
        s = self.s
        half_widths = [0.040, 0.058, 0.072, 0.081, 0.087, 0.091, 0.093, 0.093, 0.091, 0.087, 0.080,
                       0.070]
        for side in (RIGHT, LEFT):
            sn = side_name(side)
            for k in range(1, 13):
                y0 = self.vertebra_y[f"T{k}"]
                head = (side * 22 * s, y0)
                lat = (side * self.h(half_widths[k - 1]) * self.w ** 0.2, y0 + self.h(0.006 + 0.0025 * k))
                back = _bezier(head, (lat[0] * 0.75, y0 - self.h(0.006)), lat)
                depths_back = list(np.linspace(0.82, 0.5, len(back)))
                if k <= 10:
                    drop = self.h(0.022 + 0.0055 * (k - 1))
                    end_x = side * self.h(0.022 + 0.0035 * (k - 1) + (0.012 if k > 7 else 0.0))
                    end = (end_x, y0 + drop)
                    front = _bezier(lat, (lat[0] * 1.0, lat[1] + 0.55 * (end[1] - lat[1])), end)[1:]
                    depths_front = list(np.linspace(0.45, 0.12, len(front)))
                else:
                    front, depths_front = [], []
                pts = tuple(back + front)
                radius = (6.5 if k == 1 else 5.0) * s
                rib = Tube(pts, (radius,) * len(pts), tuple(depths_back + depths_front), aspect=0.7)
                self.add_bone(f"{sn} rib {k}", "ribs", rib, 0.85)
                self.ph.ribs[f"{sn} rib {k}"] = rib
            # clavicle: sternal end → S-curve → acromial end
            clav = ((side * 20 * s, self.h(0.187)), (side * 60 * s, self.h(0.183)),
                    (side * 110 * s, self.h(0.180)), (side * self.h(0.100), self.h(0.179)))
            self.add_bone(f"{sn} clavicle", "clavicle", Tube(clav, (8 * s,) * 4, (0.15, 0.15, 0.22, 0.4)),
                          0.85)
            # scapula: superior angle, glenoid, inferior angle; scapular spine; coracoid/acromion
            sup = (side * 62 * s, self.h(0.187))
            glen = (side * self.h(0.098), self.h(0.197))
            inf = (side * 78 * s, self.h(0.300))
            self.add_bone(f"{sn} scapula", "scapula", Plate((sup, glen, inf), 6 * s, 0.86, edge=6 * s),
                          0.8)
            self.add_bone(f"{sn} scapular spine", "scapula",
                          Tube(((side * 66 * s, self.h(0.207)), (side * self.h(0.102), self.h(0.182))),
                               (6 * s, 7 * s), (0.88, 0.7)), 0.9)
            self.add_bone(f"{sn} glenoid", "scapula",
                          Ellipsoid(*glen, 10 * s, 18 * s, 14 * s, depth=0.55), 1.0)
            self.ph.joints[f"{sn} acromioclavicular"] = Joint(
                f"{sn} acromioclavicular", side * self.h(0.100), self.h(0.180), 0.45, 12 * s, self.bone)
            self.ph.joints[f"{sn} sternoclavicular"] = Joint(
                f"{sn} sternoclavicular", side * 18 * s, self.h(0.188), 0.12, 12 * s, self.bone)
        # sternum: manubrium and body, just under the anterior skin
        self.add_bone("manubrium", "sternum",
                      Ellipsoid(0.0, self.h(0.197), 26 * s, 24 * s, 6 * s, depth=0.08), 1.0)
        self.add_bone("sternal body", "sternum",
                      Tube(((0.0, self.h(0.214)), (0.0, self.h(0.292))), (14 * s, 12 * s), (0.07, 0.08),
                           aspect=0.4), 1.0)

    # ---- pelvis and legs -------------------------------------------------------------------------------
    def pelvis_and_legs(self) -> None:
        s = self.s
        for side in (RIGHT, LEFT):
            sn = side_name(side)
            hip = (side * self.h(0.052), self.h(0.484))
            # iliac wing: from the SI joint up to the crest and out to the anterior superior spine
            self.add_bone(f"{sn} ilium", "pelvis",
                          Plate(((side * 38 * s, self.h(0.448)), (side * self.h(0.085), self.h(0.420)),
                                 (side * self.h(0.058), self.h(0.478))), 16 * s, 0.55, edge=12 * s), 0.95)
            crest = _bezier((side * 40 * s, self.h(0.437)), (side * self.h(0.07), self.h(0.405)),
                            (side * self.h(0.088), self.h(0.432)))
            self.add_bone(f"{sn} iliac crest", "pelvis", Tube(tuple(crest), (6 * s,) * len(crest),
                                                              (0.65,) * len(crest)), 0.9)
            self.add_bone(f"{sn} acetabulum", "pelvis",
                          Ellipsoid(hip[0] - side * 6 * s, hip[1] - 6 * s, 30 * s, 28 * s, 20 * s,
                                    depth=0.5), 0.6)
            # obturator ring: superior pubic ramus, inferior ramus and ischium
            ring = ((side * 10 * s, self.h(0.502)), (side * 45 * s, self.h(0.497)),
                    (hip[0] - side * 4 * s, hip[1] + 18 * s), (side * 62 * s, self.h(0.525)),
                    (side * 38 * s, self.h(0.532)), (side * 14 * s, self.h(0.516)))
            self.add_bone(f"{sn} pubis and ischium", "pelvis",
                          Tube(ring, (9 * s, 8 * s, 10 * s, 10 * s, 8 * s, 8 * s),
                               (0.22, 0.3, 0.5, 0.55, 0.45, 0.25)), 0.9)
            # femur: head, neck, greater trochanter, shaft, condyles
            knee = (side * (self.h(0.045) + 0.05 * self.p.feet_apart_mm), self.h(0.715))
            ankle = (side * (0.5 * self.p.feet_apart_mm + self.h(0.01)), self.h(0.961))
            troch = (side * self.h(0.080) * self.w ** 0.1, self.h(0.487))
            self.add_bone(f"{sn} femoral head", "femur", Ellipsoid(*hip, 24 * s, 24 * s, 24 * s), 0.55)
            self.add_bone(f"{sn} femoral neck", "femur",
                          Tube((hip, troch), (15 * s, 17 * s), (0.5, 0.5)), 0.9)
            self.add_bone(f"{sn} femur", "femur",
                          Tube(((troch[0] - side * 8 * s, troch[1] + 10 * s),
                                (knee[0], knee[1] - 40 * s)), (15 * s, 13 * s), (0.5, 0.5)),
                          0.6, proximal_first=True)
            self.add_bone(f"{sn} femoral condyles", "femur",
                          Ellipsoid(knee[0], knee[1] - 18 * s, 40 * s, 24 * s, 30 * s), 0.45)
            self.add_bone(f"{sn} patella", "patella",
                          Ellipsoid(knee[0], knee[1] - 20 * s, 20 * s, 22 * s, 10 * s, depth=0.12), 0.7)
            self.add_bone(f"{sn} tibial plateau", "tibia",
                          Ellipsoid(knee[0], knee[1] + 14 * s, 38 * s, 16 * s, 26 * s, depth=0.45), 0.45)
            self.add_bone(f"{sn} tibia", "tibia",
                          Tube(((knee[0], knee[1] + 28 * s), (ankle[0] - side * 4 * s, ankle[1] - 20 * s)),
                               (14 * s, 11 * s), (0.35, 0.35)), 0.6, proximal_first=True)
            self.add_bone(f"{sn} fibula", "fibula",
                          Tube(((knee[0] + side * 30 * s, knee[1] + 25 * s),
                                (ankle[0] + side * 22 * s, ankle[1] - 10 * s)), (7 * s, 6 * s), (0.6, 0.6)),
                          0.5)
            self.add_bone(f"{sn} ankle and foot", "foot",
                          Ellipsoid(ankle[0], self.h(0.972), 28 * s, 34 * s, 45 * s), 0.3)
            self.ph.joints[f"{sn} hip"] = Joint(f"{sn} hip", *hip, 0.5, 20 * s, 1.1 * self.bone)
            self.ph.joints[f"{sn} knee"] = Joint(f"{sn} knee", knee[0] - side * 15 * s, knee[1], 0.45,
                                                 18 * s, 1.15 * self.bone)
            self.ph.joints[f"{sn} ankle"] = Joint(f"{sn} ankle", *ankle, 0.5, 16 * s, self.bone)

    # ---- organs ---------------------------------------------------------------------------------------
    def organs(self) -> None:
        p, s = self.p, self.s
        for side, dy in ((RIGHT, 0.012), (LEFT, 0.0)):  # the right kidney sits lower (liver)
            self.ph.organs.append(Structure(
                f"{side_name(side)} kidney", "kidney",
                Ellipsoid(side * 55 * s, self.h(0.355 + dy), 30 * s, 55 * s, 25 * s,
                          angle=side * np.radians(-12), depth=0.72),
                p.kidney_to_soft))
        # bladder: a flattened ellipsoid above the symphysis holding the urine volume
        volume_mm3 = p.bladder_volume_ml * 1000.0
        c = 0.6 * (volume_mm3 / (4 / 3 * np.pi * 0.6 * 0.8)) ** (1 / 3)  # a:b:c = 1 : 0.8 : 0.6
        a, b = c / 0.6, 0.8 * c / 0.6
        bladder = Ellipsoid(0.0, self.h(0.497) - b, a, b, c, depth=0.3)
        self.ph.bladder = bladder
        self.ph.organs.append(Structure("bladder", "bladder", bladder, p.bladder_to_soft))


def build_phantom(patient: Patient) -> Phantom:
    """The patient's skeleton, soft tissue and organs in patient millimetres."""
    builder = _Builder(patient)
    builder.soft_tissue()
    builder.skull()
    builder.spine()
    builder.thorax()
    builder.arms()
    builder.pelvis_and_legs()
    builder.organs()
    return builder.ph
