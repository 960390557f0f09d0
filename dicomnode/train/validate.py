"""Validation during training, through the production inference path.

The network of the epoch is written as a model (weights + card, :func:`dicomnode.segmentation.modelcard.save_model`)
and loaded back with :meth:`dicomnode.segmentation.inference.Segmenter.from_weights`, so validation sees exactly
what the node will run: the card's preprocessing, windows and stitching, mapping back to the stored
source frame, the 0.5 threshold. Scores are pixel level, pooled over all validation views
(Σ TP, Σ FP, Σ FN), which is stable from the first epoch on, when many per-view scores are undefined.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dicomnode.segmentation.inference import Segmenter

from .study import LabelledStudy


def pooled_scores(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Pixel DSC, precision and recall of (prediction, truth) 0/1 masks pooled over all pairs.

    An empty denominator counts as perfect (1.0) only when the masks are empty on both sides (nothing
    to find, nothing found), else as 0.0.
    """
    tp = fp = fn = 0
    for prediction, truth in pairs:
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
        p, t = prediction.astype(bool), truth.astype(bool)
        tp += int(np.count_nonzero(p & t))
        fp += int(np.count_nonzero(p & ~t))
        fn += int(np.count_nonzero(~p & t))

    def score(num: int, den: int) -> float:
        return num / den if den else float(tp + fp + fn == 0)

    return {
        "dsc": score(2 * tp, 2 * tp + fp + fn),
        "precision": score(tp, tp + fp),
        "recall": score(tp, tp + fn),
    }


def validate(model: Path, studies: Sequence[LabelledStudy], device: str = "cpu") -> dict[str, float]:
    """Pooled pixel scores of the model (a saved weights/card pair) on the labelled views of ``studies``."""
    segmenter = Segmenter.from_weights(model, device=device)
    results = segmenter.segment_many([s.scan for s in studies])
    pairs = [
        (result.views[view].mask, study.labels[view])
        for study, result in zip(studies, results)
        for view in study.labels
    ]
    return pooled_scores(pairs)
