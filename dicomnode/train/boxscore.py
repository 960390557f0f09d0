"""Scoring against boxes and image-level labels, the BS-80K way, and choosing an operating point.

Whole-body studies with ``Abnormal`` / ``Normal`` boxes (:mod:`dicomnode.train.bs80k`):

- a reported lesion is an 8-connected component of ``probability ≥ threshold`` whose peak
  probability reaches the peak threshold and whose area reaches the minimum
  (:class:`dicomnode.segmentation.postprocess.OperatingPoint`);
- **lesion sensitivity**: an ``Abnormal`` box is found when a reported lesion touches it (at least one
  pixel inside the box; boxes are loose, so overlap with a derived mask would under-count); the
  **mean study sensitivity** averages each abnormal study's own, so a study with 50 lesions cannot
  dominate it;
- **false positives per study**: reported lesions touching no ``Abnormal`` box, both views;
- **Normal hot spots marked**: ``Normal`` boxes touched by a reported lesion, of all ``Normal`` boxes;
- **study level**: a study is abnormal when it holds an ``Abnormal`` box; its score is the highest
  peak probability of a component (at the pixel threshold and minimum area), so the AUC does not
  depend on the peak threshold; sensitivity / specificity at the operating point (abnormal when
  anything is reported).

Crops with image-level labels: a crop's score is its highest lesion probability
(:func:`dicomnode.train.crops.crop_scores`); AUC, and sensitivity / specificity at a score threshold.

The AUC is the Mann–Whitney statistic (ties count one half). The operating point
(:func:`choose_operating_point`) is searched exactly over the peak threshold for each candidate pixel
threshold and minimum area: the most sensitive point whose false positives per study stay within the
budget, ties broken by fewer false positives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from dicomnode.segmentation.postprocess import OperatingPoint, components
from dicomnode.segmentation.scan import View

from .study import LabelledStudy
from .weak import ABNORMAL, NORMAL, Box


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann–Whitney U / (n⁺ n⁻), ties ranked by their average); NaN
    without both classes."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    u = rankdata(scores)[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def sensitivity_specificity(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``score ≥ threshold``; NaN for a class that is absent."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    called = scores >= threshold
    sensitivity = float(called[labels].mean()) if labels.any() else float("nan")
    specificity = float((~called[~labels]).mean()) if (~labels).any() else float("nan")
    return sensitivity, specificity


def threshold_for_sensitivity(scores: Sequence[float], labels: Sequence[bool], target: float) -> float:
    """The highest score threshold whose sensitivity is at least ``target``."""
    positives = np.sort(np.asarray(scores, float)[np.asarray(labels, bool)])[::-1]
    if not len(positives):
        return float("nan")
    needed = int(np.ceil(target * len(positives)))
    return float(positives[max(needed, 1) - 1])


@dataclass(frozen=True)
class Component:
    """One candidate lesion of one view: its peak probability and the boxes it touches."""

    peak: float
    area_mm2: float
    abnormal: frozenset[int]  # indices of the view's Abnormal boxes it touches
    normal: frozenset[int]  # indices of the view's Normal boxes it touches


@dataclass(frozen=True)
class ViewCandidates:
    view: View
    components: tuple[Component, ...]
    abnormal_boxes: int
    normal_boxes: int


@dataclass(frozen=True)
class StudyCandidates:
    """The candidate lesions of a study at one pixel threshold, with what they touch."""

    key: str
    patient_id: str
    abnormal: bool  # the study holds at least one Abnormal box
    views: tuple[ViewCandidates, ...]


def view_candidates(
    view: View, probability: np.ndarray, boxes: Sequence[Box], threshold: float, pixel_area_mm2: float
) -> ViewCandidates:
    """Components of ``probability ≥ threshold`` on a stored frame and the boxes each touches."""
    labels, peaks, areas = components(probability, threshold, pixel_area_mm2)
    touching: list[dict[str, set[int]]] = [{ABNORMAL: set(), NORMAL: set()} for _ in peaks]
    for kind in (ABNORMAL, NORMAL):
        for number, box in enumerate(b for b in boxes if b.kind == kind):
            for label in np.unique(labels[box.clipped(labels.shape)]):
                if label:
                    touching[int(label) - 1][kind].add(number)
    found = tuple(
        Component(float(peak), float(area), frozenset(touched[ABNORMAL]), frozenset(touched[NORMAL]))
        for peak, area, touched in zip(peaks, areas, touching)
    )
    return ViewCandidates(view, found, sum(b.kind == ABNORMAL for b in boxes), sum(b.kind == NORMAL for b in boxes))


def study_candidates(
    studies: Sequence[LabelledStudy], maps: Mapping[str, Mapping[View, np.ndarray]], threshold: float
) -> list[StudyCandidates]:
    """The candidates of each study from its stored-frame probability maps (keyed by study key)."""
    out = []
    for study in studies:
        views = tuple(
            view_candidates(view, maps[study.key][view], study.boxes.get(view, ()), threshold,
                            study.scan.views[view].pixel_area_mm2)
            for view in study.scan.views
        )
        abnormal = any(b.kind == ABNORMAL for boxes in study.boxes.values() for b in boxes)
        out.append(StudyCandidates(study.key, study.patient_id, abnormal, views))
    return out


def wholebody_scores(studies: Sequence[StudyCandidates], point: OperatingPoint, threshold: float) -> dict[str, float]:
    """The BS-80K whole-body numbers of a set of studies at one operating point (module docstring)."""
    peak = point.peak_threshold if point.peak_threshold is not None else threshold
    found = boxes = false_positives = normal_marked = normal_boxes = 0
    study_scores, study_labels, study_called, own_sensitivity = [], [], [], []
    for study in studies:
        best = 0.0
        called = False
        found_before, boxes_before = found, boxes
        for view in study.views:
            kept = [c for c in view.components if c.area_mm2 >= point.min_area_mm2]
            best = max([best, *(c.peak for c in kept)])
            reported = [c for c in kept if c.peak >= peak]
            called = called or bool(reported)
            hit = set().union(*(c.abnormal for c in reported)) if reported else set()
            found += len(hit)
            boxes += view.abnormal_boxes
            false_positives += sum(1 for c in reported if not c.abnormal)
            normal_marked += len(set().union(*(c.normal for c in reported))) if reported else 0
            normal_boxes += view.normal_boxes
        study_scores.append(best)
        study_labels.append(study.abnormal)
        study_called.append(called)
        if boxes > boxes_before:
            own_sensitivity.append((found - found_before) / (boxes - boxes_before))
    study_sensitivity, study_specificity = sensitivity_specificity(np.array(study_called, float), study_labels, 1.0)
    return {
        "studies": len(studies),
        "abnormal_boxes": boxes,
        "lesion_sensitivity": found / boxes if boxes else float("nan"),
        "mean_study_sensitivity": float(np.mean(own_sensitivity)) if own_sensitivity else float("nan"),
        "false_positives_per_study": false_positives / max(len(studies), 1),
        "normal_boxes": normal_boxes,
        "normal_marked_fraction": normal_marked / normal_boxes if normal_boxes else float("nan"),
        "study_auc": roc_auc(study_scores, study_labels),
        "study_sensitivity": study_sensitivity,
        "study_specificity": study_specificity,
    }


def crop_summary(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, float]:
    """Crop AUC, sensitivity / specificity at ``threshold``, and the specificity reached where the
    sensitivity is at least 0.90 (the issue's crop target)."""
    sensitivity, specificity = sensitivity_specificity(scores, labels, threshold)
    at90 = threshold_for_sensitivity(scores, labels, 0.90)
    return {
        "crops": len(scores),
        "crop_auc": roc_auc(scores, labels),
        "crop_sensitivity": sensitivity,
        "crop_specificity": specificity,
        "crop_specificity_at_sensitivity_0.90": sensitivity_specificity(scores, labels, at90)[1],
    }


def choose_operating_point(
    candidates: Mapping[tuple[float, float], Sequence[StudyCandidates]],
    *,
    max_false_positives: float = 1.0,
    test_time_flip: bool = False,
) -> tuple[float, OperatingPoint, dict[str, float]]:
    """The (pixel threshold, operating point) with the highest lesion sensitivity whose false
    positives per study stay within ``max_false_positives`` on ``candidates`` — keyed by
    (pixel threshold, minimum area mm²) — searched exactly over every component peak as the peak
    threshold. Returns the threshold, the point and its scores."""
    best: tuple[tuple[float, float], float, OperatingPoint, dict[str, float]] | None = None
    for (threshold, min_area), studies in sorted(candidates.items()):
        peaks = sorted({c.peak for s in studies for v in s.views for c in v.components if c.area_mm2 >= min_area})
        # ascending: the first peak threshold within the budget is the most sensitive at this setting;
        # 1.0 keeps only saturated components (or none)
        for peak in [*(p for p in peaks if p < 1.0), 1.0]:
            point = OperatingPoint(peak_threshold=max(peak, threshold), min_area_mm2=min_area,
                                   test_time_flip=test_time_flip)
            scores = wholebody_scores(studies, point, threshold)
            if scores["false_positives_per_study"] > max_false_positives:
                continue
            key = (scores["lesion_sensitivity"], -scores["false_positives_per_study"])
            if best is None or key > best[0]:
                best = (key, threshold, point, scores)
            break
    if best is None:
        raise ValueError("no operating point meets the false-positive budget")
    return best[1], best[2], best[3]
