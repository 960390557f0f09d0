"""Cross-validation by patient inside the site's training studies.

The candidate trained on every training study has seen them: its false positives there are fewer
than on a new study, so a peak threshold matched to the active model's false-positive rate on its
own training studies is too low. With ``[learn] folds`` ≥ 2 the training patients are dealt into
that many folds (:func:`dicomnode.train.split.kfold_patients`, stratified by whether a patient has a
lesion label); for each fold a model is trained on the other folds with the same preset and start
(``RUN/fold<k>/``, resumable like the candidate's run), and its maps of the fold's studies give
**out-of-fold** false-positive peaks. :mod:`dicomnode.learn.operatingpoint` matches the active
model's rate on those, and the fold models read their folds at the chosen point: the
cross-validated estimate the report carries beside the gate's held-out numbers
(docs/training.md, "The site's own model").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dicomnode.learn.gate import study_score
from dicomnode.train.bootstrap import measures
from dicomnode.learn.operatingpoint import false_positive_peaks
from dicomnode.learn.trainset import has_lesion, training_data
from dicomnode.segmentation.inference import Segmenter
from dicomnode.train.config import TrainConfig
from dicomnode.train.datasets import TrainingData
from dicomnode.train.loop import run_training
from dicomnode.train.split import kfold_patients
from dicomnode.train.study import LabelledStudy


@dataclass(frozen=True)
class FoldModel:
    """One fold: the model trained without it, and the fold's studies it reads."""

    card: Path
    studies: tuple[LabelledStudy, ...]


def train_folds(preset: TrainConfig, training: Sequence[LabelledStudy], extra: TrainingData, folds: int, out: Path,
                *, device: str, threads: int, resume: bool, progress: bool) -> list[FoldModel]:
    """A model per fold of the training patients, each trained on the other folds (and ``extra``)."""
    dealt = kfold_patients((s.patient_id for s in training), folds, seed=0,
                           positive={s.patient_id for s in training if has_lesion(s)})
    models = []
    for number, held in enumerate(dealt, start=1):
        kept = [s for s in training if s.patient_id not in held]
        trained = run_training(preset, training_data(kept, extra), out / f"fold{number}", device=device,
                               resume=resume, progress=progress, num_threads=threads)
        models.append(FoldModel(trained.card, tuple(s for s in training if s.patient_id in held)))
    return models


def out_of_fold_peaks(models: Sequence[FoldModel], load: Callable[[Path], Segmenter]) -> list[float]:
    """Every training study's false-positive peaks, read by the model that did not train on it."""
    return [peak for fold in models for peak in false_positive_peaks(load(fold.card), fold.studies)]


def cross_validated(models: Sequence[FoldModel], load: Callable[[Path], Segmenter], peak_threshold: float) -> dict[str, Any]:
    """The gate's measures of the training studies, each read by its fold model at ``peak_threshold``."""
    scores = []
    for fold in models:
        segmenter = load(fold.card)
        segmenter.card = replace(segmenter.card, operating_point=replace(segmenter.card.operating_point,
                                                                           peak_threshold=peak_threshold))
        scores += [study_score(segmenter, s) for s in fold.studies]
    return {"folds": len(models), "studies": len(scores), **measures(scores)}
