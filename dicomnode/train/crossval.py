"""Patient-level k-fold cross-validation on real scans, the operating point, and the final model.

    python -m dicomnode.train.crossval --config config/train/default.toml \\
        --data REAL_WHOLEBODY --data REAL_CROPS --data SIM_FOLDER --out runs/cv [--folds 5] [--final]

Folders are read by format (:func:`dicomnode.train.datasets.detect_format`). Whole-body studies with boxes
(BS-80K) and crops are dealt into ``--folds`` folds **by patient** (:func:`dicomnode.train.split.kfold_patients`;
crop patients and whole-body patients separately; stratified by whether the patient has a finding
unless ``--no-stratify``); every other study (the simulator's) is always
in training, never judged. For each fold ``k`` a model is trained on everything outside fold ``k``
(``OUT/fold<k>/``), then predicts fold ``k``: probability maps of its whole-body views and its
crops' scores, kept in ``OUT/fold<k>/oof.npz``.

Scoring is nested so no fold's numbers see that fold: fold ``k``'s **operating point** (pixel
threshold, peak threshold, minimum area; :func:`dicomnode.train.boxscore.choose_operating_point`, at most
``--max-fp`` false positives per study) and its **crop threshold** (sensitivity ≥ 0.90) are chosen
on the out-of-fold predictions of the *other* folds, then applied to fold ``k``. The table is the
mean ± std over folds (:mod:`dicomnode.train.boxscore` defines every number). With ``--sim-test`` each fold
model is also scored on a simulated test folder at its operating point, so a change that helps real
scans and hurts the simulator's 16-bit studies shows.

``--final`` trains the shipped model on all the data (``OUT/final/``) and writes into its card the
operating point chosen on all out-of-fold predictions and the cross-validated table. Pictures of
the worst fold's studies (boxes and the reported lesions) go to ``OUT/pictures/``. A fold whose
model card already records the same preset and held-out patients is not retrained (resumable).

``--fraction F`` trains each fold on a share ``F`` of the fold's training patients (whole-body and
crop patients drawn separately, keeping the share with a finding;
:func:`dicomnode.train.split.subsample_patients`), judged on the same held-out fold: one point of
a learning curve. Simulated studies stay in training whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicomnode.segmentation.inference import NetworkSegmenter, Segmenter
from dicomnode.segmentation.modelcard import load_card, update_card
from dicomnode.segmentation.postprocess import OperatingPoint, lesion_mask
from dicomnode.segmentation.scan import View

from .boxscore import (StudyCandidates, choose_operating_point, crop_summary, study_candidates,
                       threshold_for_sensitivity, wholebody_scores)
from .bs80k import Crop
from .config import TrainConfig, load_config
from .crops import crop_scores
from .datasets import TrainingData, describe_sources, load_studies, load_training_data
from .study import LabelledStudy
from .evaluate import evaluate_studies, summary
from .loop import run_training
from .report import write_box_overlay
from .split import kfold_patients, subsample_patients
from .weak import ABNORMAL

log = logging.getLogger(__name__)

METRICS = ("lesion_sensitivity", "mean_study_sensitivity", "false_positives_per_study", "normal_marked_fraction", "study_auc",
           "study_sensitivity", "study_specificity", "crop_auc", "crop_sensitivity", "crop_specificity",
           "crop_specificity_at_sensitivity_0.90")
SIM_METRICS = ("sim_lesion_sensitivity", "sim_false_positives_per_study", "sim_dsc")


@dataclasses.dataclass
class Fold:
    number: int
    trained_on: tuple[int, int]  # the real whole-body studies and crops its model trained on
    studies: list[LabelledStudy]
    crop_labels: np.ndarray
    model: Path
    maps: dict[str, dict[View, np.ndarray]]
    crop_scores: np.ndarray
    candidates: Searched  # of ``studies`` at every pixel threshold and minimum area searched


def _trained(config: TrainConfig, data: TrainingData, out: Path, held_out: list[str], args: argparse.Namespace) -> Path:
    """The fold's model, trained unless its card already records this preset and these held-out patients."""
    card = out / f"{config.name}.json"
    if card.is_file():
        training = json.loads(card.read_text()).get("training", {})
        if (training.get("preset") == config.model_dump(mode="json") and training.get("held_out_patients") == held_out
                and training.get("training_fraction", 1.0) == args.fraction):
            log.info("%s: reusing the trained model", out)
            return card.with_suffix(".safetensors")
    result = run_training(config, data, out, device=args.device, progress=False, num_threads=args.threads)
    update_card(result.card, training={**load_card(result.card).training, "held_out_patients": held_out,
                                       "training_fraction": args.fraction})
    return result.weights


def _set_flip(model: Path, flip: bool) -> Path:
    card = load_card(model)
    update_card(model, operating_point=dataclasses.replace(card.operating_point, test_time_flip=flip))
    return model


def _predict(model: Path, studies: Sequence[LabelledStudy], crops: Sequence[Crop], device: str) -> tuple[dict, np.ndarray]:
    segmenter = Segmenter.from_weights(model, device=device)
    assert isinstance(segmenter, NetworkSegmenter)
    maps = {s.key: m for s, m in zip(studies, segmenter.probabilities([s.scan for s in studies]))}
    scores = np.zeros(0, np.float32)
    if crops:
        scores = crop_scores(segmenter.net, crops, segmenter.card.preprocessing, segmenter.device,
                             flip=segmenter.card.operating_point.test_time_flip)
    return maps, scores


def _save_out_of_fold(path: Path, maps: dict[str, dict[View, np.ndarray]], crops: Sequence[Crop],
                      scores: np.ndarray) -> None:
    """The fold's predictions, for a later look at other operating points without predicting again:
    each held-out view's probability map (float32, stored frame) as ``<study>/<view>``, and the crops'
    keys, labels and scores."""
    arrays = {f"{key}/{view.value}": probability.astype(np.float32)
              for key, views in maps.items() for view, probability in views.items()}
    np.savez_compressed(path, **arrays, crop_keys=np.array([c.key for c in crops]),
                        crop_labels=np.array([c.abnormal for c in crops]), crop_scores=scores)


#: Candidates of some studies per (pixel threshold, minimum area) searched.
Searched = Mapping[tuple[float, float], list[StudyCandidates]]


def pooled_operating_point(folds: Sequence[Searched], max_fp: float, flip: bool) -> tuple[float, OperatingPoint]:
    """The pixel threshold and operating point chosen on the candidates of ``folds`` together
    (:func:`dicomnode.train.boxscore.choose_operating_point`): for a fold, the *other* folds."""
    pooled = {key: [s for fold in folds for s in fold[key]] for key in folds[0]}
    threshold, point, _ = choose_operating_point(pooled, max_false_positives=max_fp, test_time_flip=flip)
    return threshold, point


def _searched(studies: Sequence[LabelledStudy], maps: dict, args: argparse.Namespace) -> Searched:
    at_threshold = {t: study_candidates(studies, maps, t) for t in args.thresholds}  # the area filter needs no relabelling
    return {(t, a): at_threshold[t] for t in args.thresholds for a in args.min_areas}


def _choose(folds: Sequence[Fold], args: argparse.Namespace) -> tuple[float, OperatingPoint, float]:
    """Operating point and crop threshold chosen on the out-of-fold predictions of ``folds``."""
    threshold, point = pooled_operating_point([f.candidates for f in folds], args.max_fp, args.flip)
    scores = np.concatenate([f.crop_scores for f in folds])
    labels = np.concatenate([f.crop_labels for f in folds])
    crop_threshold = threshold_for_sensitivity(scores, labels, 0.90) if labels.size else float("nan")
    return threshold, point, crop_threshold


def _score(fold: Fold, threshold: float, point: OperatingPoint, crop_threshold: float) -> dict[str, float]:
    scores = wholebody_scores(fold.candidates[threshold, point.min_area_mm2], point, threshold)
    if fold.crop_labels.size:
        scores.update(crop_summary(fold.crop_scores, fold.crop_labels, crop_threshold))
    return scores


def _sim_scores(model: Path, threshold: float, point: OperatingPoint, sim: Sequence[LabelledStudy], device: str) -> dict[str, float]:
    update_card(model, threshold=threshold, operating_point=point)
    outcome = summary(evaluate_studies(Segmenter.from_weights(model, device=device), sim))
    return {"sim_lesion_sensitivity": outcome["lesion_sensitivity"],
            "sim_false_positives_per_study": outcome["false_positives_per_study"],
            "sim_dsc": outcome.get("pixel_lesion_images", outcome["pixel_all_images"])["dsc"]["mean"]}


def mean_std(rows: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean ± std (ddof 1) over folds of each named number (NaN folds left out)."""
    table = {}
    for name in names:
        values = np.array([r.get(name, np.nan) for r in rows], float)
        values = values[np.isfinite(values)]
        if values.size:
            table[name] = {"mean": round(float(values.mean()), 4),
                           "std": round(float(values.std(ddof=1)) if values.size > 1 else 0.0, 4),
                           "folds": int(values.size)}
    return table


def _pictures(fold: Fold, threshold: float, point: OperatingPoint, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for study in fold.studies:
        masks = {view: lesion_mask(fold.maps[study.key][view], threshold, point, study.scan.views[view].pixel_area_mm2)
                 for view in study.scan.views}
        name = f"fold{fold.number}_{study.key.replace(':', '_').replace('/', '_')}.png"
        write_box_overlay(study, masks, out / name)
        written.append(name)
    return written


def crossvalidate(args: argparse.Namespace) -> dict[str, Any]:
    """Train, predict and score every fold, then (``--final``) the shipped model; see the module docstring."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = load_training_data(args.data)
    judged = [s for s in data.studies if s.boxes]
    always = [s for s in data.studies if not s.boxes]
    if not judged:
        raise ValueError("no whole-body studies with boxes to cross-validate on")
    config = load_config(args.config, **{"data.train_fraction": 1.0, "data.val_fraction": 0.0, "data.test_fraction": 0.0,
                                         **({"optim.epochs": args.epochs} if args.epochs else {})})
    abnormal_studies = {s.patient_id for s in judged if any(b.kind == ABNORMAL for v in s.boxes.values() for b in v)}
    abnormal_crops = {c.patient_id for c in data.crops if c.abnormal}
    study_folds = kfold_patients((s.patient_id for s in judged), args.folds, seed=args.seed,
                                 positive=abnormal_studies if args.stratify else None)
    crop_folds = kfold_patients((c.patient_id for c in data.crops), args.folds, seed=args.seed,
                                positive=abnormal_crops if args.stratify else None) if data.crops else None
    sim = load_studies(args.sim_test)[: args.sim_studies] if args.sim_test else []
    folds = []
    for k in range(args.folds):
        held = study_folds[k]
        held_crops = crop_folds[k] if crop_folds else frozenset()
        train_studies = [s for s in judged if s.patient_id not in held]
        train_crops = [c for c in data.crops if c.patient_id not in held_crops]
        if args.fraction < 1:
            kept = subsample_patients((s.patient_id for s in train_studies), args.fraction, seed=args.seed + k,
                                      positive=abnormal_studies)
            kept_crops = subsample_patients((c.patient_id for c in train_crops), args.fraction, seed=args.seed + k,
                                            positive=abnormal_crops) if train_crops else frozenset()
            train_studies = [s for s in train_studies if s.patient_id in kept]
            train_crops = [c for c in train_crops if c.patient_id in kept_crops]
        train = TrainingData(always + train_studies, train_crops, data.formats)
        fold_dir = out / f"fold{k + 1}"
        model = _set_flip(_trained(config, train, fold_dir, sorted(held), args), args.flip)
        studies = [s for s in judged if s.patient_id in held]
        test_crops = [c for c in data.crops if c.patient_id in held_crops]
        maps, scores = _predict(model, studies, test_crops, args.device)
        _save_out_of_fold(fold_dir / "oof.npz", maps, test_crops, scores)
        folds.append(Fold(k + 1, (len(train_studies), len(train_crops)), studies,
                          np.array([c.abnormal for c in test_crops], bool), model, maps, scores,
                          _searched(studies, maps, args)))
        log.info("fold %d/%d: %d studies, %d crops predicted", k + 1, args.folds, len(studies), len(scores))

    rows = []
    for fold in folds:
        others = [f for f in folds if f is not fold]
        threshold, point, crop_threshold = _choose(others, args)
        row = {"fold": fold.number, "training_studies": fold.trained_on[0], "training_crops": fold.trained_on[1],
               "threshold": threshold, **point.to_dict(), "crop_threshold": crop_threshold,
               **_score(fold, threshold, point, crop_threshold)}
        if sim:
            row.update(_sim_scores(fold.model, threshold, point, sim, args.device))
        rows.append(row)
        log.info("fold %d scored: %s", fold.number, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    threshold, point, crop_threshold = _choose(folds, args)
    worst = min(folds, key=lambda f: (rows[f.number - 1]["lesion_sensitivity"], -rows[f.number - 1]["false_positives_per_study"]))
    wf = rows[worst.number - 1]
    pictures = _pictures(worst, wf["threshold"], OperatingPoint(wf["peak_threshold"], wf["min_area_mm2"], args.flip),
                         out / "pictures")
    table = {
        "folds": rows,
        "cross_validated": mean_std(rows, METRICS + SIM_METRICS),
        "pooled_operating_point": {"threshold": threshold, **point.to_dict(), "crop_threshold": crop_threshold},
        "data": data.formats,
        "judged_studies": len(judged),
        "crops": len(data.crops),
        "always_in_training": len(always),
        "training_fraction": args.fraction,
        "pictures": {"fold": worst.number, "files": pictures},
        "preset": config.model_dump(mode="json"),
    }
    if args.final:
        result = run_training(config, data, out / "final", device=args.device, progress=False, num_threads=args.threads)
        update_card(result.card, threshold=threshold, operating_point=point,
                    training={**load_card(result.card).training, "data_sources": describe_sources(data)},
                    metrics={**load_card(result.card).metrics, "cross_validated_real": table["cross_validated"],
                             "cross_validation": {"folds": args.folds, "seed": args.seed, "stratified": args.stratify, "max_false_positives": args.max_fp,
                                                  "crop_threshold": crop_threshold, "data": data.formats}})
        table["final"] = str(result.card)
    (out / "crossval.json").write_text(json.dumps(table, indent=2, default=float) + "\n")
    (out / "crossval.md").write_text(markdown(table), encoding="utf-8")
    return table


def markdown(table: dict[str, Any]) -> str:
    """The cross-validated table as the README and the closing note show it."""
    lines = ["| metric | mean ± std over folds |", "|---|---|"]
    for name, entry in table["cross_validated"].items():
        lines.append(f"| {name.replace('_', ' ')} | {entry['mean']:.3f} ± {entry['std']:.3f} |")
    point = table["pooled_operating_point"]
    lines += ["", f"Operating point on all out-of-fold predictions: pixel threshold {point['threshold']:g}, "
              f"peak threshold {point['peak_threshold']:.4g}, minimum area {point['min_area_mm2']:g} mm², "
              f"test-time flip {point['test_time_flip']}; crop threshold {point['crop_threshold']:.4g}.", ""]
    lines += ["| fold | threshold | peak | min area | sensitivity | FP/study | study AUC | crop AUC |", "|---|---|---|---|---|---|---|---|"]
    for row in table["folds"]:
        lines.append(f"| {row['fold']} | {row['threshold']:g} | {row['peak_threshold']:.4g} | {row['min_area_mm2']:g} | "
                     f"{row['lesion_sensitivity']:.3f} | {row['false_positives_per_study']:.2f} | "
                     f"{row['study_auc']:.3f} | {row.get('crop_auc', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.train.crossval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="training preset")
    parser.add_argument("--data", type=Path, action="append", required=True, help="data folder (repeatable)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42, help="seed of the fold assignment")
    parser.add_argument("--stratify", action=argparse.BooleanOptionalAction, default=True,
                        help="deal patients with and without Abnormal boxes (abnormal crops) separately into the folds")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's optim.epochs")
    parser.add_argument("--max-fp", type=float, default=1.0, help="false positives per study allowed at the operating point")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5], help="pixel thresholds searched")
    parser.add_argument("--min-areas", type=float, nargs="+", default=[0.0, 25.0, 60.0], help="minimum lesion areas (mm²) searched")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="test-time left–right flip")
    parser.add_argument("--sim-test", type=Path, default=None, help="simulated test folder scored with every fold model")
    parser.add_argument("--sim-studies", type=int, default=40, help="how many of its studies")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="train each fold on this share of its training patients (a learning-curve point)")
    parser.add_argument("--final", action="store_true", help="also train the shipped model on all the data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1 or (args.final and args.fraction < 1):
        parser.error("--fraction must be in (0, 1], and 1 with --final (the shipped model learns from all the data)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    table = crossvalidate(args)
    print(markdown(table))


if __name__ == "__main__":
    main()
