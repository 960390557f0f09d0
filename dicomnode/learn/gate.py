"""The gate: a candidate model replaces the active one only when it is better on the site's own
held-out studies by more than the uncertainty.

Both models read every held-out study at their own card's operating point; per study we keep the
truth lesions, those detected, the false positives and a study score (1 + the highest lesion
probability inside a reported lesion, else the highest probability anywhere; so a study with a
reported lesion always ranks above one without). Measures (those of the model card,
docs/training.md): lesion sensitivity (pooled detected / truth lesions), false positives per study,
study AUC (Mann–Whitney, abnormal = any truth lesion). The uncertainty is a patient-level bootstrap
(resampling patients with replacement, all of a patient's studies together; Efron & Tibshirani 1993,
percentile interval) of the *difference* candidate − active on the same resample.

The candidate passes when all hold: the 95 % interval of the lesion-sensitivity difference lies
above 0; the false-positives-per-study difference is at most ``[learn] max_extra_false_positives``
(a guard on the estimate: the candidate's operating point already matches the active model's
false-positive rate on the training studies, :mod:`dicomnode.learn.operatingpoint`, and on a handful of
held-out studies the interval of a count spans several per study); the study AUC (when the
held-out set has both normal and abnormal studies) is not significantly lower: its difference's
interval does not lie below 0. On a handful of held-out studies with one or two normal ones, a point
AUC difference is the rank of one study, and a lesion model's confident false positive there (a
peak a float64 sigmoid still rounds to 1) decides it whichever model is better; a candidate that
ranks the studies worse on every resample is refused. Every unmet rule is a reason in the report,
with its interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dicomnode.segmentation.inference import Segmenter
from dicomnode.train.boxscore import roc_auc
from dicomnode.train.evaluate import score_study
from dicomnode.train.study import LabelledStudy

MEASURES = ("lesion_sensitivity", "false_positives_per_study", "study_auc")


@dataclass(frozen=True)
class StudyScore:
    """One held-out study as one model read it."""

    patient_id: str
    truth_lesions: int
    detected: int
    false_positives: int
    score: float  # study-level suspicion (see the module docstring)


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


def study_score(segmenter: Segmenter, study: LabelledStudy) -> StudyScore:
    """One held-out study read by ``segmenter`` at its card's operating point (:mod:`dicomnode.learn.gate`)."""
    result = segmenter.segment(study.scan)
    outcome = score_study(study, {v: r.mask for v, r in result.views.items()})
    counts = outcome.lesion_counts
    marked = [r.probability[r.mask != 0] for r in result.views.values() if r.mask.any()]
    score = 1.0 + max(float(p.max()) for p in marked) if marked else \
        max(float(r.probability.max()) for r in result.views.values())
    return StudyScore(study.patient_id, counts.truth, counts.detected, counts.false_positives, score)


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
        raise ValueError("the gate needs the same, non-empty list of held-out studies for both models")
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


@dataclass(frozen=True)
class Decision:
    passed: bool
    reasons: list[str]  # each rule not met (empty when passed)
    candidate: dict[str, float]
    active: dict[str, float]
    difference: dict[str, Interval]
    studies: int
    patients: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (an undefined measure is null)."""
        def clean(values: dict[str, float]) -> dict[str, float | None]:
            return {k: v if math.isfinite(v) else None for k, v in values.items()}

        return {"passed": self.passed, "reasons": self.reasons, "candidate": clean(self.candidate),
                "active": clean(self.active), "studies": self.studies, "patients": self.patients,
                "difference": {m: clean(asdict(i)) for m, i in self.difference.items()}}


def decide(candidate: Sequence[StudyScore], active: Sequence[StudyScore], *, runs: int,
           max_extra_false_positives: float, seed: int = 0) -> Decision:
    """Apply the gate's rules (module docstring) to the two models' held-out scores."""
    diff = differences(candidate, active, runs=runs, seed=seed)
    reasons = []
    sensitivity = diff["lesion_sensitivity"]
    if not sensitivity.low > 0:
        reasons.append(f"lesion sensitivity difference {sensitivity.point:+.3f}, 95% CI "
                       f"[{sensitivity.low:+.3f}, {sensitivity.high:+.3f}] does not lie above 0")
    extra = diff["false_positives_per_study"]
    if not extra.point <= max_extra_false_positives:
        reasons.append(f"false positives per study difference {extra.point:+.3f} (95% CI [{extra.low:+.3f}, "
                       f"{extra.high:+.3f}]) exceeds {max_extra_false_positives:g}")
    auc = diff["study_auc"]
    if math.isfinite(auc.point) and (auc.high < 0 if math.isfinite(auc.high) else auc.point < 0):
        reasons.append(f"study AUC is lower by {-auc.point:.3f}, 95% CI [{auc.low:+.3f}, {auc.high:+.3f}] below 0")
    return Decision(not reasons, reasons, measures(candidate), measures(active), diff, len(candidate),
                    len({s.patient_id for s in candidate}))


def render(decision: Decision) -> str:
    """The gate's report as a short text table."""
    lines = [f"{'measure':<28}{'active':>9}{'candidate':>11}{'difference':>12}  95% CI (patient bootstrap)"]
    for m in MEASURES:
        d = decision.difference[m]
        lines.append(f"{m:<28}{decision.active[m]:>9.3f}{decision.candidate[m]:>11.3f}{d.point:>+12.3f}  "
                     f"[{d.low:+.3f}, {d.high:+.3f}]")
    lines.append(f"held-out: {decision.studies} studies, {decision.patients} patients")
    lines.append("gate: PASSED" if decision.passed else "gate: REFUSED: " + "; ".join(decision.reasons))
    return "\n".join(lines)
