"""Per-study counts and the patient-level bootstrap of a paired difference between two readings of
the same studies (Efron & Tibshirani 1993, percentile interval: resample patients with
replacement, all of a patient's studies together). The gate of ``dicomnode learn``
(:mod:`dicomnode.learn.gate`) and the second stage's table (:mod:`dicomnode.train.secondstage`)
compare two readings with it; every measure is defined as in the model card (docs/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .boxscore import roc_auc

#: What the gate's rules and report compare (:func:`measures` also gives the mean per-study sensitivity).
MEASURES = ("lesion_sensitivity", "false_positives_per_study", "study_auc")


@dataclass(frozen=True)
class StudyScore:
    """One held-out study as one model read it."""

    patient_id: str
    truth_lesions: int
    detected: int
    false_positives: int
    score: float  # study-level suspicion (how a reading ranks its studies)


def measures(studies: Sequence[StudyScore]) -> dict[str, float]:
    """Lesion sensitivity, the mean of the abnormal studies' own, false positives per study and study
    AUC of a set of studies (NaN where undefined)."""
    truth = sum(s.truth_lesions for s in studies)
    own = [s.detected / s.truth_lesions for s in studies if s.truth_lesions]
    return {
        "lesion_sensitivity": sum(s.detected for s in studies) / truth if truth else math.nan,
        "mean_study_sensitivity": float(np.mean(own)) if own else math.nan,
        "false_positives_per_study": float(np.mean([s.false_positives for s in studies])) if studies else math.nan,
        "study_auc": roc_auc([s.score for s in studies], [s.truth_lesions > 0 for s in studies]),
    }


@dataclass(frozen=True)
class Interval:
    point: float  # candidate − active on the held-out set as it is
    low: float  # 2.5th percentile of the bootstrap differences
    high: float  # 97.5th


def _percentiles(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def differences(candidate: Sequence[StudyScore], active: Sequence[StudyScore], *, runs: int,
                seed: int = 0, names: Sequence[str] = MEASURES) -> dict[str, Interval]:
    """The difference candidate − active of each measure in ``names`` (of :func:`measures`), with its
    patient-level bootstrap interval. ``candidate[i]`` and ``active[i]`` are the same study."""
    if len(candidate) != len(active) or not candidate:
        raise ValueError("a paired difference needs the same, non-empty list of studies for both readings")
    patients = sorted({s.patient_id for s in candidate})
    rows = {p: [i for i, s in enumerate(candidate) if s.patient_id == p] for p in patients}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(runs):
        chosen = [i for p in rng.choice(patients, size=len(patients), replace=True) for i in rows[str(p)]]
        a, b = measures([candidate[i] for i in chosen]), measures([active[i] for i in chosen])
        for m in names:
            samples[m].append(a[m] - b[m])
    whole_a, whole_b = measures(candidate), measures(active)
    return {m: Interval(whole_a[m] - whole_b[m], *_percentiles(samples[m])) for m in names}
