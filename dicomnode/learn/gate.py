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

from dicomnode.segmentation.inference import Segmenter
from dicomnode.train.bootstrap import MEASURES, Interval, StudyScore, differences, measures
from dicomnode.train.evaluate import score_study
from dicomnode.train.study import LabelledStudy


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
