"""The candidate's operating point at the active model's false-positive rate, chosen on the
training studies (never the held-out ones).

The issue's measure is lesion sensitivity *at the operating point's false-positive rate*: a
fine-tuned model that marks more of everything must not win by that alone. On the training studies
we count the active model's false positives per study at its own card's operating point, then
raise the candidate's peak threshold (:class:`~dicomnode.segmentation.postprocess.OperatingPoint`,
a component is reported when its peak probability reaches it) just above the peak of the
candidate's (k+1)-th most confident false-positive component, k = that rate × the number of studies,
so the candidate makes no more false positives there than the active model. The count is taken on
the lesion model's maps, before the anatomy reading (the same for both models); the gate then judges
both, with the reading, on the held-out studies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.postprocess import components
from dicomnode.train.study import LabelledStudy


def false_positive_peaks(segmenter: Segmenter, studies: Sequence[LabelledStudy]) -> list[float]:
    """The peak probability of every component at the card's threshold that touches no label lesion."""
    threshold = segmenter.card.threshold
    peaks: list[float] = []
    for study, maps in zip(studies, segmenter.probabilities([s.scan for s in studies]), strict=True):
        for view, truth in study.labels.items():
            labels, component_peaks, _ = components(maps[view], threshold, study.scan.views[view].pixel_area_mm2)
            for index, peak in enumerate(component_peaks, start=1):
                if not truth[labels == index].any():
                    peaks.append(float(peak))
    return peaks


def reported(peaks: Sequence[float], segmenter: Segmenter) -> int:
    """How many of ``peaks`` the segmenter's operating point reports."""
    point = segmenter.card.operating_point
    cut = point.peak_threshold if point.peak_threshold is not None else segmenter.card.threshold
    return sum(p >= cut for p in peaks)


def peak_for_rate(candidate_peaks: Sequence[float], allowed: int, current: float) -> float:
    """The lowest peak threshold (at least ``current``) that reports at most ``allowed`` of ``candidate_peaks``."""
    ranked = sorted(candidate_peaks, reverse=True)
    if len(ranked) <= allowed:
        return current
    return min(1.0, max(current, float(np.nextafter(ranked[allowed], math.inf))))


def match_false_positive_rate(candidate: Segmenter, active: Segmenter, studies: Sequence[LabelledStudy],
                              candidate_peaks: Sequence[float] | None = None) -> dict:
    """Set the candidate card's peak threshold (module docstring); return what was measured.
    ``candidate_peaks``: the candidate's false-positive peaks on ``studies`` read out of fold
    (:mod:`dicomnode.learn.crossval`), instead of the candidate's own reading of them."""
    studies = [s for s in studies if s.labelled]
    allowed = reported(false_positive_peaks(active, studies), active)
    point = candidate.card.operating_point
    current = point.peak_threshold if point.peak_threshold is not None else candidate.card.threshold
    peaks = list(candidate_peaks) if candidate_peaks is not None else false_positive_peaks(candidate, studies)
    chosen = peak_for_rate(peaks, allowed, current)
    candidate.card = dataclasses.replace(candidate.card, operating_point=dataclasses.replace(point, peak_threshold=chosen))
    return {"studies": len(studies), "active_false_positives": allowed,
            "candidate_false_positives_before": sum(p >= current for p in peaks),
            "candidate_false_positives_after": sum(p >= chosen for p in peaks), "peak_threshold": chosen,
            "counted_on": "out-of-fold maps" if candidate_peaks is not None else "the candidate's own maps"}
