"""``dicomnode evaluate``: a model against labelled studies, scored as the papers score.

Every study goes through the production path (:meth:`Segmenter.from_weights` → ``segment``), and the
mask of each view is compared with that view's label in the stored source frame.

- **Pixel level** (:mod:`dicomnode.segmentation.metrics`): DSC, precision and recall per image (one view of
  one study), mean ± std over images, as papers 000/001/002 report them. The headline uses the
  images that hold at least one lesion (paper 002 segments "solely BM lesion images"); the pooled
  values over all images are given too.
- **Lesion level**: a truth lesion (8-connected component) is detected when the prediction overlaps
  it; a predicted component touching no truth is a false positive. Sensitivity is pooled over
  lesions; false positives are counted per study (both views).
- **Breakdown** by skeletal site and lesion size: each truth component takes the site and size of
  the simulated lesion at its position (``manifest.json`` of ``dicomnode synth``); components with no
  recorded lesion (e.g. SEG or LabelMe labels) get site ``unknown`` and the equivalent-circle
  diameter of their area.
- **Runs**: with several ``--weights`` (e.g. five training runs with seeds 42…46, as paper 001 repeats
  5 runs with seed 42) each model is one run. With one model, each run is a bootstrap resample of the
  patients (seed, seed + 1, …), so the ± of the run summary is the test-set sampling spread.
- **Speed**: wall-clock milliseconds per study of ``segment`` (preprocessing + network + mapping back),
  one study at a time, on the device used.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.segmentation.metrics import (
    EIGHT_CONNECTED,
    LesionCounts,
    PixelCounts,
    lesion_scores,
    pixel_counts,
    summarise,
    summarise_lesions,
)
from dicomnode.segmentation.scan import View

from .study import LabelledStudy

log = logging.getLogger(__name__)

SIZE_BINS_MM = (10.0, 20.0, 30.0)  # lesion size classes: <10, 10–20, 20–30, ≥30 mm
NEAREST_LESION_PX = 3.0  # a recorded lesion position this close to a component belongs to it


@dataclass(frozen=True)
class LesionOutcome:
    """One truth lesion (component) of one view: where, how big, found or not."""

    study: str
    view: View
    site: str
    size_mm: float
    detected: bool


@dataclass
class ViewOutcome:
    pixels: PixelCounts
    lesions: LesionCounts
    prediction: np.ndarray = field(repr=False)


@dataclass
class StudyOutcome:
    key: str
    patient_id: str
    views: dict[View, ViewOutcome]
    lesions: list[LesionOutcome]
    milliseconds: float

    @property
    def pixels(self) -> PixelCounts:
        return sum((v.pixels for v in self.views.values()), PixelCounts(0, 0, 0))

    @property
    def lesion_counts(self) -> LesionCounts:
        return sum((v.lesions for v in self.views.values()), LesionCounts(0, 0, 0, 0))

    @property
    def has_lesions(self) -> bool:
        return self.lesion_counts.truth > 0


def size_class(size_mm: float) -> str:
    if not math.isfinite(size_mm):
        return "unknown"
    edges = (0.0, *SIZE_BINS_MM)
    for low, high in zip(edges, (*SIZE_BINS_MM, math.inf)):
        if low <= size_mm < high:
            return f"{low:g}–{high:g} mm" if math.isfinite(high) else f"≥{low:g} mm"
    return "unknown"


def stored_position(study: LabelledStudy, view: View, position: tuple[float, float]) -> tuple[int, int]:
    """A canonical (row, column) position in the stored layout of the view's source frame."""
    source = study.scan.views[view].source
    row, column = position
    if source.flip_lr:
        column = source.columns - 1 - column
    if source.flip_ud:
        row = source.rows - 1 - row
    return int(round(row)), int(round(column))


def lesion_outcomes(study: LabelledStudy, view: View, prediction: np.ndarray) -> list[LesionOutcome]:
    """Each truth component of a view with its site and size (see the module docstring)."""
    truth = study.labels[view]
    labels, count = ndimage.label(truth != 0, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    spacing = study.scan.views[view].pixel_spacing
    # nearest component of every pixel, to attach recorded lesions that sit just outside a footprint
    distance, (near_r, near_c) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    recorded: dict[int, tuple[str, float]] = {}
    for lesion in study.lesions:
        if lesion.view is not view:
            continue
        r, c = stored_position(study, view, lesion.position)
        if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]) or distance[r, c] > NEAREST_LESION_PX:
            continue
        label = int(labels[near_r[r, c], near_c[r, c]])
        if label not in recorded or lesion.size_mm > recorded[label][1]:
            recorded[label] = (lesion.site, lesion.size_mm)
    areas = ndimage.sum_labels(np.ones_like(truth, dtype=float), labels, np.arange(1, count + 1))
    hits = ndimage.maximum(prediction != 0, labels, np.arange(1, count + 1))
    outcomes = []
    for label in range(1, count + 1):
        site, size = recorded.get(
            label, ("unknown", 2 * math.sqrt(areas[label - 1] * spacing[0] * spacing[1] / math.pi))
        )
        outcomes.append(LesionOutcome(study.key, view, site, float(size), bool(hits[label - 1])))
    return outcomes


def score_study(study: LabelledStudy, masks: dict[View, np.ndarray], milliseconds: float = 0.0) -> StudyOutcome:
    """Score the predicted masks (stored layout, per view) of one study against its labels."""
    views = {}
    lesions: list[LesionOutcome] = []
    for view, truth in study.labels.items():
        if view not in masks:
            raise ValueError(f"{study.key}: no prediction for the labelled {view.value} view")
        prediction = masks[view]
        views[view] = ViewOutcome(pixel_counts(truth, prediction), lesion_scores(truth, prediction), prediction)
        lesions += lesion_outcomes(study, view, prediction)
    return StudyOutcome(study.key, study.patient_id, views, lesions, milliseconds)


def evaluate_studies(segmenter: Segmenter, studies: Sequence[LabelledStudy]) -> list[StudyOutcome]:
    """Segment each labelled study (one at a time, timed) and score every labelled view."""
    outcomes = []
    for study in studies:
        if not study.labelled:
            continue
        started = time.perf_counter()
        result = segmenter.segment(study.scan)
        milliseconds = (time.perf_counter() - started) * 1000
        outcomes.append(score_study(study, {v: r.mask for v, r in result.views.items()}, milliseconds))
    if not outcomes:
        raise ValueError("no labelled studies to evaluate")
    return outcomes


def summary(outcomes: Sequence[StudyOutcome]) -> dict[str, Any]:
    """The numbers of one run: pixel metrics (lesion images and all images), lesion detection, speed."""
    images = [v.pixels for o in outcomes for v in o.views.values()]
    lesion_images = [v.pixels for o in outcomes for v in o.views.values() if v.lesions.truth > 0]
    detection = summarise_lesions(o.lesion_counts for o in outcomes)
    times = np.array([o.milliseconds for o in outcomes])
    out: dict[str, Any] = {
        "studies": len(outcomes),
        "images": len(images),
        "lesion_images": len(lesion_images),
        "pixel_all_images": {k: vars(v) for k, v in summarise(images).items()},
        "lesion_sensitivity": detection.sensitivity,
        "truth_lesions": detection.totals.truth,
        "detected_lesions": detection.totals.detected,
        "false_positives_per_study": detection.false_positives_per_study,
        "false_positives_per_study_std": detection.false_positives_std,
        "ms_per_study": float(times.mean()),
        "ms_per_study_std": float(times.std(ddof=1)) if len(times) > 1 else 0.0,
    }
    if lesion_images:
        out["pixel_lesion_images"] = {k: vars(v) for k, v in summarise(lesion_images).items()}
    return out


def breakdown(outcomes: Sequence[StudyOutcome]) -> dict[str, dict[str, dict[str, float]]]:
    """Lesion sensitivity by skeletal site and by size class."""
    tables: dict[str, dict[str, list[bool]]] = {"site": defaultdict(list), "size": defaultdict(list)}
    for outcome in outcomes:
        for lesion in outcome.lesions:
            tables["site"][lesion.site].append(lesion.detected)
            tables["size"][size_class(lesion.size_mm)].append(lesion.detected)
    return {
        name: {
            key: {"lesions": len(found), "detected": int(sum(found)), "sensitivity": float(np.mean(found))}
            for key, found in sorted(table.items())
        }
        for name, table in tables.items()
    }


def bootstrap(outcomes: Sequence[StudyOutcome], runs: int, seed: int) -> list[list[StudyOutcome]]:
    """``runs`` resamples of the patients with replacement (all studies of a drawn patient)."""
    by_patient: dict[str, list[StudyOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_patient[outcome.patient_id].append(outcome)
    patients = sorted(by_patient)
    resamples = []
    for run in range(runs):
        rng = np.random.default_rng(seed + run)
        drawn = rng.choice(len(patients), size=len(patients), replace=True)
        resamples.append([o for i in drawn for o in by_patient[patients[i]]])
    return resamples


HEADLINE = (
    ("dsc", ("pixel_lesion_images", "dsc", "mean")),
    ("precision", ("pixel_lesion_images", "precision", "mean")),
    ("recall", ("pixel_lesion_images", "recall", "mean")),
    ("lesion_sensitivity", ("lesion_sensitivity",)),
    ("false_positives_per_study", ("false_positives_per_study",)),
    ("ms_per_study", ("ms_per_study",)),
)


def _get(record: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return float("nan")
        value = value[key]
    return float(value)


def over_runs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± std (ddof 1) of the headline numbers over runs."""
    table = {}
    for name, path in HEADLINE:
        values = np.array([_get(run, path) for run in runs])
        values = values[np.isfinite(values)]
        table[name] = {
            "mean": float(values.mean()) if values.size else float("nan"),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "runs": int(values.size),
        }
    return table


@dataclass
class Evaluation:
    """Everything ``dicomnode evaluate`` reports."""

    models: list[str]
    data: str
    subset: str
    runs_kind: str  # "models" or "bootstrap"
    runs: list[dict[str, Any]]
    across_runs: dict[str, dict[str, float]]
    first: dict[str, Any]  # summary of the first model on the full subset
    breakdown: dict[str, dict[str, dict[str, float]]]
    outcomes: list[StudyOutcome] = field(repr=False)  # first model's per-study outcomes

    @property
    def headline(self) -> dict[str, float]:
        """The headline numbers of the first model on every study (the point estimates; the runs'
        mean ± std is their spread, and with one bootstrap run it is one resample's value)."""
        return {name: _get(self.first, path) for name, path in HEADLINE}

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "data": self.data,
            "subset": self.subset,
            "runs_kind": self.runs_kind,
            "headline": self.headline,
            "runs": self.runs,
            "across_runs": self.across_runs,
            "summary": self.first,
            "breakdown": self.breakdown,
            "studies": [
                {"study": o.key, "dsc": o.pixels.dsc, "lesions": o.lesion_counts.truth,
                 "detected": o.lesion_counts.detected, "false_positives": o.lesion_counts.false_positives,
                 "ms": round(o.milliseconds, 1)}
                for o in self.outcomes
            ],
        }


def evaluate(
    models: Sequence[Path],
    studies: Sequence[LabelledStudy],
    *,
    runs: int = 5,
    seed: int = 42,
    device: str | None = None,
    data: str = "",
    subset: str = "all",
    reader: AnatomyReader | None = None,
) -> Evaluation:
    """Evaluate one or several models on ``studies`` (see the module docstring for "runs");
    with ``reader``, their lesions read on the anatomy map as the node reads them
    (:mod:`dicomnode.segmentation.reading`), else the lesion model alone."""
    if not models:
        raise ValueError("no model to evaluate")
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    per_model = []
    for path in models:
        segmenter = Segmenter.from_weights(path, device=device)
        segmenter.reader = reader
        per_model.append(evaluate_studies(segmenter, studies))
        log.info("evaluated %s on %d studies", path, len(per_model[-1]))
    if len(models) > 1:
        kind, run_summaries = "models", [summary(o) for o in per_model]
    else:
        kind, run_summaries = "bootstrap", [summary(r) for r in bootstrap(per_model[0], runs, seed)]
    return Evaluation(
        models=[str(m) for m in models],
        data=data,
        subset=subset,
        runs_kind=kind,
        runs=run_summaries,
        across_runs=over_runs(run_summaries),
        first=summary(per_model[0]),
        breakdown=breakdown(per_model[0]),
        outcomes=per_model[0],
    )
