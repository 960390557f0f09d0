"""Segmentation metrics as the papers report them, plus lesion-level detection.

Pixel level (paper 001 "Evaluation metrics", Eqs. 7–9; paper 002 Eqs. 24–26), for a predicted mask
P and truth T:
DSC = 2|P∩T| / (|P| + |T|), precision = |P∩T| / |P|, recall = |P∩T| / |T|; and for paper 003's
table IoU = |P∩T| / |P∪T|, specificity = TN / (TN + FP), accuracy = (TP + TN) / all pixels.

- **Empty masks**: a ratio whose denominator is 0 is 1.0 when prediction and truth are both empty
  (nothing to find, nothing found) and 0.0 otherwise. So both empty ⇒ DSC = precision = recall = 1;
  a prediction on an image without truth ⇒ DSC = precision = 0, recall = 0; no prediction on an
  image with truth ⇒ DSC = recall = 0, precision = 0. The same rule as ``dicomnode.train.validate``.
- **Aggregation** (:func:`summarise`): per image, then mean ± standard deviation over images
  (sample standard deviation, ``ddof=1``; 0 for a single image) — how papers 000/001/002 report
  "DSC 0.6671" style numbers — and **pooled** over all pixels of all images (Σ TP, Σ FP, Σ FN), which
  weighs large lesions more and is defined even when many images are empty.

Lesion level (:func:`lesion_scores`), on 8-connected components (as :mod:`dicomnode.segmentation.postprocess`):

- a truth lesion is **detected** when at least one predicted pixel overlaps it (overlap ≥ 1 pixel,
  i.e. IoU > 0);
- a predicted component that overlaps no truth pixel is a **false positive**.

Sensitivity = detected / truth lesions, pooled over a set of studies (:func:`summarise_lesions`);
false positives are counted per study (sum over its views) and reported as mean ± std per study.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PixelCounts:
    """True positive, false positive and false negative pixels of one image (or pooled)."""

    tp: int
    fp: int
    fn: int
    tn: int = 0
    """True negatives; counted by :func:`pixel_counts`, needed only for accuracy and specificity."""

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def empty(self) -> bool:
        """Prediction and truth both empty."""
        return self.tp + self.fp + self.fn == 0

    def _ratio(self, numerator: int, denominator: int) -> float:
        if denominator == 0:
            return 1.0 if self.empty else 0.0
        return numerator / denominator

    @property
    def dsc(self) -> float:
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def iou(self) -> float:
        """Intersection over union (Jaccard), |P∩T| / |P∪T| (paper 003 "IoU")."""
        return self._ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def specificity(self) -> float:
        """TN / (TN + FP); 1.0 with no negative pixel and no false positive."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else 1.0

    @property
    def accuracy(self) -> float:
        """(TP + TN) / all pixels."""
        total = self.tp + self.fp + self.fn + self.tn
        return (self.tp + self.tn) / total if total else 1.0


def pixel_counts(truth: np.ndarray, prediction: np.ndarray) -> PixelCounts:
    """TP / FP / FN of two masks of the same shape (any non-zero value is lesion)."""
    t, p = _masks(truth, prediction)
    return PixelCounts(
        tp=int(np.count_nonzero(t & p)),
        fp=int(np.count_nonzero(p & ~t)),
        fn=int(np.count_nonzero(t & ~p)),
        tn=int(np.count_nonzero(~t & ~p)),
    )


@dataclass(frozen=True)
class MetricSummary:
    """Mean ± std over images and the pooled value of one metric."""

    mean: float
    std: float
    pooled: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (pooled {self.pooled:.4f}, n={self.n})"


def summarise(per_image: Sequence[PixelCounts]) -> dict[str, MetricSummary]:
    """DSC, precision and recall over images: mean ± std of the per-image values, and pooled."""
    if not per_image:
        raise ValueError("no images to summarise")
    pooled = sum(per_image, PixelCounts(0, 0, 0))
    summary = {}
    for name in ("dsc", "precision", "recall"):
        values = np.array([getattr(counts, name) for counts in per_image])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[name] = MetricSummary(float(values.mean()), std, getattr(pooled, name), len(values))
    return summary


@dataclass(frozen=True)
class LesionCounts:
    """Lesion-level detection counts of one view, one study (sum of views) or a set of studies."""

    truth: int  # truth lesions
    detected: int  # truth lesions overlapped by the prediction
    predicted: int  # predicted components
    false_positives: int  # predicted components overlapping no truth lesion

    def __add__(self, other: LesionCounts) -> LesionCounts:
        return LesionCounts(
            self.truth + other.truth,
            self.detected + other.detected,
            self.predicted + other.predicted,
            self.false_positives + other.false_positives,
        )

    @property
    def sensitivity(self) -> float:
        """Detected / truth lesions; 1.0 when there is no truth lesion (nothing to miss)."""
        return self.detected / self.truth if self.truth else 1.0


def lesion_scores(truth: np.ndarray, prediction: np.ndarray) -> LesionCounts:
    """Lesion-level counts of one view (rules in the module docstring)."""
    t, p = _masks(truth, prediction)
    truth_labels, n_truth = ndimage.label(t, structure=EIGHT_CONNECTED)
    predicted_labels, n_predicted = ndimage.label(p, structure=EIGHT_CONNECTED)
    detected = np.unique(truth_labels[p & t]).size  # labels > 0 only: p & t excludes background
    hit = np.unique(predicted_labels[p & t]).size
    return LesionCounts(
        truth=n_truth, detected=detected, predicted=n_predicted, false_positives=n_predicted - hit
    )


@dataclass(frozen=True)
class LesionSummary:
    """Lesion-level results over studies: pooled sensitivity and false positives per study."""

    sensitivity: float
    false_positives_per_study: float
    false_positives_std: float
    studies: int
    totals: LesionCounts

    def __str__(self) -> str:
        return (
            f"sensitivity {self.sensitivity:.4f} ({self.totals.detected}/{self.totals.truth}), "
            f"FP/study {self.false_positives_per_study:.2f} ± {self.false_positives_std:.2f} "
            f"(n={self.studies})"
        )


def summarise_lesions(per_study: Iterable[LesionCounts]) -> LesionSummary:
    """Pool lesion counts of studies (each already the sum of its views)."""
    studies = list(per_study)
    if not studies:
        raise ValueError("no studies to summarise")
    totals = sum(studies, LesionCounts(0, 0, 0, 0))
    fps = np.array([study.false_positives for study in studies], dtype=float)
    return LesionSummary(
        sensitivity=totals.sensitivity,
        false_positives_per_study=float(fps.mean()),
        false_positives_std=float(fps.std(ddof=1)) if len(fps) > 1 else 0.0,
        studies=len(studies),
        totals=totals,
    )


def _masks(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
    return truth != 0, prediction != 0
