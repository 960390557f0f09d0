"""The gate's arithmetic on cases worked by hand."""

from __future__ import annotations

import math

import pytest

from dicomnode.learn.gate import decide, render
from dicomnode.train.bootstrap import StudyScore, differences, measures


def test_measures_by_hand() -> None:
    # sensitivity (2 + 1 + 0 + 0) / (2 + 2 + 0 + 0); FP (0 + 1 + 2 + 1) / 4; AUC: positives 1.9, 1.2 rank above
    # negatives 0.3, 0.4 -> 1.0
    studies = [StudyScore("p1", 2, 2, 0, 1.9), StudyScore("p2", 2, 1, 1, 1.2),
               StudyScore("p3", 0, 0, 2, 0.3), StudyScore("p4", 0, 0, 1, 0.4)]
    assert measures(studies) == {"lesion_sensitivity": 0.75, "mean_study_sensitivity": 0.75,
                                 "false_positives_per_study": 1.0, "study_auc": 1.0}
    # positives score 0.3 and 1.5 among 0.1, 0.3, 1.2, 1.5 -> ranks 2 and 4: U = 6 - 3 = 3, AUC = 3 / 4
    studies = [StudyScore("p1", 1, 0, 0, 0.3), StudyScore("p2", 1, 1, 0, 1.5),
               StudyScore("p3", 0, 0, 0, 1.2), StudyScore("p4", 0, 0, 0, 0.1)]
    assert measures(studies)["study_auc"] == 0.75


def test_a_better_candidate_passes_with_the_interval_worked_by_hand() -> None:
    # Two patients. Candidate finds 2/2 and 1/2, active 1/2 and 0/2: every resample ({1,1}, {2,2}, {1,2})
    # gives a sensitivity difference of exactly +0.5, so the interval is [0.5, 0.5]. FP differences:
    # {1,1}: 0 - 1 = -1, {2,2}: 0, {1,2}: -0.5, so the upper bound is at most 0.
    candidate = [StudyScore("p1", 2, 2, 0, 1.9), StudyScore("p2", 2, 1, 0, 1.8)]
    active = [StudyScore("p1", 2, 1, 1, 1.5), StudyScore("p2", 2, 0, 0, 0.7)]
    diff = differences(candidate, active, runs=200)
    assert (diff["lesion_sensitivity"].point, diff["lesion_sensitivity"].low, diff["lesion_sensitivity"].high) \
        == (0.5, 0.5, 0.5)
    assert diff["false_positives_per_study"].point == -0.5
    assert -1.0 <= diff["false_positives_per_study"].low and diff["false_positives_per_study"].high <= 0.0
    assert math.isnan(diff["study_auc"].point)  # every held-out study abnormal: AUC undefined, not a rule
    decision = decide(candidate, active, runs=200, max_extra_false_positives=0.5)
    assert decision.passed and decision.reasons == []
    assert "gate: PASSED" in render(decision)


def test_an_equal_candidate_is_refused_and_the_report_says_why() -> None:
    studies = [StudyScore(f"p{i}", 2, 1, 0, 1.5) for i in range(5)] + [StudyScore("n", 0, 0, 0, 0.2)]
    decision = decide(studies, studies, runs=200, max_extra_false_positives=0.5)
    assert not decision.passed
    assert decision.reasons == ["lesion sensitivity difference +0.000, 95% CI [+0.000, +0.000] does not lie above 0"]
    assert "REFUSED" in render(decision)


def test_more_false_positives_and_a_lower_auc_are_each_a_reason() -> None:
    candidate = [StudyScore("p1", 2, 2, 3, 0.2), StudyScore("p2", 0, 0, 3, 1.9)]
    active = [StudyScore("p1", 2, 1, 0, 1.9), StudyScore("p2", 0, 0, 0, 0.2)]
    # more lesions found (+0.5 on every resample with a lesion), but +3 false positives per study and
    # the study ranking inverted (AUC 0 against 1)
    decision = decide(candidate, active, runs=200, max_extra_false_positives=0.5)
    assert not decision.passed
    assert [r.split(" ")[0] for r in decision.reasons] == ["false", "study"]


def test_a_lower_auc_within_its_uncertainty_is_not_a_reason() -> None:
    # 5 patients with lesions and 2 without; the candidate finds more lesions in every abnormal
    # patient but ranks one normal study above one abnormal one, which the active model did not
    candidate = [StudyScore(f"p{i}", 2, 2, 0, 1.9 if i else 1.1) for i in range(5)] + \
        [StudyScore("n1", 0, 0, 0, 1.5), StudyScore("n2", 0, 0, 0, 0.1)]
    active = [StudyScore(f"p{i}", 2, 1, 0, 1.8) for i in range(5)] + \
        [StudyScore("n1", 0, 0, 0, 0.2), StudyScore("n2", 0, 0, 0, 0.1)]
    decision = decide(candidate, active, runs=500, max_extra_false_positives=0.5)
    auc = decision.difference["study_auc"]
    assert auc.point == pytest.approx(-0.1) and auc.low < 0 <= auc.high  # lower, within its uncertainty
    assert decision.passed and decision.reasons == []


def test_the_two_lists_must_be_the_same_studies() -> None:
    with pytest.raises(ValueError):
        differences([StudyScore("p", 1, 1, 0, 1.0)], [], runs=10)


def test_the_candidates_peak_threshold_is_set_to_the_active_false_positive_count_by_hand() -> None:
    from dicomnode.learn.operatingpoint import peak_for_rate

    peaks = [0.9, 0.99, 0.95]  # the candidate's false-positive components on the training studies
    chosen = peak_for_rate(peaks, 1, 0.5)  # the active model made 1 there: keep only the 0.99 one
    assert 0.95 < chosen <= 0.99 and sum(p >= chosen for p in peaks) == 1
    assert peak_for_rate(peaks, 3, 0.5) == 0.5  # no more than allowed already: the card's own point
    assert 0.99 < peak_for_rate(peaks, 0, 0.5) <= 1.0
    assert peak_for_rate(peaks, 1, 0.999) == 0.999  # never below the card's point
