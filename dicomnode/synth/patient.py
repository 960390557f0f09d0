"""Who is on the table and how the scan was acquired: the random draws that make each study different.

Every number and its source:

* Height: men N(175, 7) cm, women N(162, 6.5) cm, clipped to 150–195 cm (adult stature; the
  brief's range).  Sex 60 % male (lung cancer bone-metastasis series are ~60–85 % male: paper 002
  Table 2, 591 of 1016 lesions in men; NINMAS 2013–14 series 104/123 men).
* Age 45–85 years (paper 002: mean age 58 years); used for the number of degenerative foci.
* Build (soft-tissue width/thickness factor): log-normal, median 1.0, σ 0.12, clipped 0.8–1.4;
  widths scale with build^0.8, AP thickness with build (fat adds depth more than width).
* Position: vertex 20–100 mm below the top of the field, midline shift ±25 mm, in-plane rotation
  ±3° (patients are never perfectly straight on the table; assumption).
* Arm pose: at the sides 60 %, hands on the abdomen 25 %, slightly abducted 10–25° 15 %
  (assumption; all three are seen in routine whole-body scans).
* Biodistribution (concentration relative to soft tissue): bone 8–16× (chosen so bone pixels are
  ~2–5× the neighbouring soft tissue in the image, notes §3 [U]); kidneys 2–6× (faint at 2–5 h);
  bladder 40–200× with 150–450 mL urine: a few % of the injected activity in the urine against
  ~14 % spread over ~60 L of soft tissue (notes §3, PubMed 9323270) gives concentration ratios of
  order 100, and the bladder is then often the hottest region.
* Population (``population``): ``"adult"`` is everything above. ``"adolescent"`` is a paediatric
  oncology site (osteosarcoma, Ewing sarcoma, neuroblastoma follow-up): age 10–17, both sexes
  equally, height N(140 + 4 × (age − 10), 7) cm clipped to 125–190 cm, build median 0.9 (σ 0.12,
  clipped 0.75–1.3), bone 12–20× soft tissue (a growing skeleton takes up more tracer), open growth
  plates (``physis_to_bone`` 2–4: the physes are the hottest normal bone of a child's scan,
  symmetric; :func:`dicomnode.synth.lesions.sample_mimics` draws them), no degenerative joints,
  250–550 MBq. These are assumptions chosen by eye on published paediatric scans, not measured:
  the population exists to give a simulated site a camera-independent domain shift that an
  adult-trained model has never seen (docs/training.md, "The site's own model").
* Acquisition: 450–800 MBq 99mTc-MDP (EANM adult 300–740 MBq, typical 740 MBq; notes §3), imaging
  2–5 h after injection (Zuckier & Martineau 2015), table speed 10–16 cm/min (SNM guideline 10–15),
  detector–skin gap 20–50 mm anterior (body contouring), 25 mm posterior (table + gap); 99mTc
  half-life 6.01 h.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

TC99M_HALF_LIFE_H = 6.01
#: Who a simulated site sees (:func:`sample_patient`; the module docstring).
POPULATIONS = ("adult", "adolescent")


class ArmPose(str, Enum):
    SIDES = "sides"
    ABDOMEN = "abdomen"
    ABDUCTED = "abducted"


@dataclass(frozen=True)
class Patient:
    """Body and biodistribution of one simulated patient (lengths in mm)."""

    sex: str  # "M" or "F" (PS3.3 C.7.1.1 Patient's Sex)
    age_years: int
    height_mm: float
    build: float
    vertex_mm: float  # distance of the vertex below the top edge of the field of view
    shift_mm: float  # midline offset from the centre of the field (positive = towards patient's left)
    rotation_deg: float
    arm_pose: ArmPose
    abduction_deg: float
    feet_apart_mm: float
    bone_to_soft: float
    kidney_to_soft: float
    bladder_to_soft: float
    bladder_volume_ml: float
    physis_to_bone: float = 0.0  # open growth plates' uptake over bone; 0: closed (adults)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["arm_pose"] = self.arm_pose.value
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


@dataclass(frozen=True)
class AcquisitionProtocol:
    """How the whole-body scan was acquired (dual-head: both views in one pass)."""

    activity_mbq: float
    hours_post_injection: float
    scan_speed_cm_min: float
    anterior_gap_mm: float
    posterior_gap_mm: float
    scan_length_mm: float

    @property
    def duration_s(self) -> float:
        return self.scan_length_mm / (self.scan_speed_cm_min * 10.0 / 60.0)

    @property
    def activity_at_scan_mbq(self) -> float:
        return self.activity_mbq * 0.5 ** (self.hours_post_injection / TC99M_HALF_LIFE_H)

    def as_dict(self) -> dict:
        out = {k: round(v, 3) for k, v in asdict(self).items()}
        out["duration_s"] = round(self.duration_s, 1)
        return out


def check_population(population: str) -> None:
    if population not in POPULATIONS:
        raise ValueError(f"unknown population {population!r}; known: {', '.join(POPULATIONS)}")


def sample_patient(rng: np.random.Generator, population: str = "adult") -> Patient:
    """Draw a patient of ``population`` (see the module docstring for every range)."""
    check_population(population)
    if population == "adolescent":
        return _adolescent(rng)
    sex = "M" if rng.uniform() < 0.6 else "F"
    mean, sd = (1750.0, 70.0) if sex == "M" else (1620.0, 65.0)
    height = float(np.clip(rng.normal(mean, sd), 1500.0, 1950.0))
    build = float(np.clip(np.exp(rng.normal(0.0, 0.12)), 0.8, 1.4))
    pose = _pose(rng)
    return Patient(sex=sex, age_years=int(rng.integers(45, 86)), height_mm=height, build=build,
                   **_on_the_table(rng, pose, feet_apart_mm=(60.0, 160.0)),
                   **_biodistribution(rng, bone_to_soft=(8.0, 16.0), bladder_volume_ml=(150.0, 450.0)))


def _adolescent(rng: np.random.Generator) -> Patient:
    """A patient of the ``"adolescent"`` population (module docstring)."""
    sex = "M" if rng.uniform() < 0.5 else "F"
    age = int(rng.integers(10, 18))
    pose = _pose(rng)
    return Patient(sex=sex, age_years=age,
                   height_mm=float(np.clip(rng.normal(1400.0 + 40.0 * (age - 10), 70.0), 1250.0, 1900.0)),
                   build=float(np.clip(0.9 * np.exp(rng.normal(0.0, 0.12)), 0.75, 1.3)),
                   **_on_the_table(rng, pose, feet_apart_mm=(60.0, 140.0)),
                   **_biodistribution(rng, bone_to_soft=(12.0, 20.0), bladder_volume_ml=(100.0, 300.0)),
                   physis_to_bone=float(rng.uniform(2.0, 4.0)))


def _pose(rng: np.random.Generator) -> ArmPose:
    return ArmPose(rng.choice([p.value for p in ArmPose], p=[0.60, 0.25, 0.15]))


def _on_the_table(rng: np.random.Generator, pose: ArmPose, feet_apart_mm: tuple[float, float]) -> dict:
    """Where the patient lies and how the arms and feet are: the ``Patient`` fields of "Position"
    and "Arm pose" (the same for every population but how far apart the feet are)."""
    return {"vertex_mm": float(rng.uniform(20.0, 100.0)), "shift_mm": float(rng.uniform(-25.0, 25.0)),
            "rotation_deg": float(rng.uniform(-3.0, 3.0)), "arm_pose": pose,
            "abduction_deg": float(rng.uniform(10.0, 25.0)) if pose is ArmPose.ABDUCTED else 0.0,
            "feet_apart_mm": float(rng.uniform(*feet_apart_mm))}


def _biodistribution(rng: np.random.Generator, bone_to_soft: tuple[float, float],
                     bladder_volume_ml: tuple[float, float]) -> dict:
    """The ``Patient`` fields of "Biodistribution" (kidneys and bladder concentration alike in every population)."""
    return {"bone_to_soft": float(rng.uniform(*bone_to_soft)), "kidney_to_soft": float(rng.uniform(2.0, 6.0)),
            "bladder_to_soft": float(rng.uniform(40.0, 200.0)),
            "bladder_volume_ml": float(rng.uniform(*bladder_volume_ml))}


def sample_acquisition(rng: np.random.Generator, patient: Patient) -> AcquisitionProtocol:
    """Draw the acquisition; the scan covers the patient plus 50 mm."""
    return AcquisitionProtocol(
        activity_mbq=float(rng.uniform(*((250.0, 550.0) if patient.physis_to_bone else (450.0, 800.0)))),
        hours_post_injection=float(rng.uniform(2.0, 5.0)),
        scan_speed_cm_min=float(rng.uniform(10.0, 16.0)),
        anterior_gap_mm=float(rng.uniform(20.0, 50.0)),
        posterior_gap_mm=25.0,
        scan_length_mm=patient.vertex_mm + patient.height_mm + 50.0,
    )
