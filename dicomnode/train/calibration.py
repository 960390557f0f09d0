"""Calibrate the lesion model on its cross-validation's out-of-fold predictions.

    python -m dicomnode.train.calibration --cv runs/cv --data REAL_WHOLEBODY --data REAL_CROPS \\
        --data SIM_FOLDER [--card dicomnode/segmentation/weights/default.json]

``--cv`` is a :mod:`dicomnode.train.crossval` output folder and ``--data`` the same folders in the same
order (study keys carry the folder's position). Every held-out study's probability maps
(``fold<k>/oof.npz``) give its candidates at the pooled operating point's pixel threshold and
minimum area (:func:`dicomnode.train.boxscore.study_candidates`): a **focus** is positive when it
touches an ``Abnormal`` box, a **study** when it holds one (its score is its highest peak, 0 without
a candidate).

Two Platt maps (:class:`dicomnode.segmentation.calibration.Calibration`) are fitted by maximum
likelihood: one on the foci, one on the studies. Judged nested like the operating point: fold
``k``'s foci and studies are scored with the maps fitted on the other folds, so the reliability
table (expected calibration error, Brier score, log loss; raw peak against calibrated) says what
the calibration does on patients it never saw. The maps fitted on all folds go into ``--card``: the
focus map as ``operating_point.calibration`` (the probability a reported focus carries), the study
map and the table under ``metrics.calibration``. A reliability diagram goes to
``CV/calibration.png``, the table to ``CV/calibration.json`` and ``.md``. docs/training.md,
"Calibration".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from dicomnode.segmentation.calibration import Calibration, logit
from dicomnode.segmentation.modelcard import load_card, update_card
from dicomnode.segmentation.reading import AnatomyReader, physiological_removed
from dicomnode.segmentation.scan import View

from .boxscore import StudyCandidates, study_candidates
from .datasets import load_training_data
from .study import LabelledStudy

log = logging.getLogger(__name__)

#: A small ridge on the slope and intercept keeps the fit finite when the classes separate.
RIDGE = 1e-3
BINS = 10


def fit_platt(scores: Sequence[float], labels: Sequence[bool]) -> Calibration:
    """Maximum-likelihood ``σ(a · logit(score) + b)`` for the labels (L-BFGS on the logistic log
    loss, :data:`RIDGE`-penalised), the slope kept positive so the order of the scores is never
    reversed. Needs both classes."""
    x, y = logit(np.asarray(scores, float)), np.asarray(labels, float)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("calibration needs positive and negative examples")

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * x + theta[1]
        residual = expit(z) - y
        value = np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * RIDGE * theta @ theta
        return float(value), np.array([residual @ x, residual.sum()]) + RIDGE * theta

    fitted = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                      bounds=[(1e-6, None), (None, None)])
    return Calibration(slope=float(fitted.x[0]), intercept=float(fitted.x[1]))


def reliability(probabilities: Sequence[float], labels: Sequence[bool], bins: int = BINS) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width bins (Naeini et al., AAAI 2015), the
    Brier score, the mean log loss, and each non-empty bin's (mean probability, observed rate, count)."""
    p = np.clip(np.asarray(probabilities, float), 1e-6, 1 - 1e-6)
    y = np.asarray(labels, float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            mean_p, rate = float(p[inside].mean()), float(y[inside].mean())
            ece += inside.mean() * abs(mean_p - rate)
            table.append({"bin": b, "mean_probability": round(mean_p, 4), "observed": round(rate, 4),
                          "count": int(inside.sum())})
    return {"ece": round(float(ece), 4), "brier": round(float(np.mean((p - y) ** 2)), 4),
            "log_loss": round(float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))), 4),
            "count": int(y.size), "positives": int(y.sum()), "bins": table}


@dataclasses.dataclass
class FoldCandidates:
    """One fold's held-out foci (peak, touches an Abnormal box) and studies (highest peak, abnormal)."""

    number: int
    focus_peaks: np.ndarray
    focus_labels: np.ndarray
    study_peaks: np.ndarray
    study_labels: np.ndarray


def fold_candidates(number: int, studies: Sequence[StudyCandidates], min_area_mm2: float) -> FoldCandidates:
    peaks, labels, best, abnormal = [], [], [], []
    for study in studies:
        kept = [c for v in study.views for c in v.components if c.area_mm2 >= min_area_mm2]
        peaks += [c.peak for c in kept]
        labels += [bool(c.abnormal) for c in kept]
        best.append(max((c.peak for c in kept), default=0.0))
        abnormal.append(study.abnormal)
    return FoldCandidates(number, np.array(peaks), np.array(labels, bool), np.array(best), np.array(abnormal, bool))


def judged_studies(roots: Sequence[Path]) -> dict[str, LabelledStudy]:
    """The whole-body studies with boxes of the cross-validation's ``--data`` folders, by key."""
    return {s.key: s for s in load_training_data(roots).studies if s.boxes}


def saved_maps(cv: Path, number: int, judged: Mapping[str, LabelledStudy]) -> tuple[dict[str, dict[View, np.ndarray]], Any]:
    """Fold ``number``'s held-out probability maps by study key (``fold<k>/oof.npz``, written by
    :mod:`dicomnode.train.crossval`), and the open file (its crop arrays)."""
    saved = np.load(cv / f"fold{number}" / "oof.npz")
    names = [n for n in saved.files if "/" in n]
    keys = sorted({n.rsplit("/", 1)[0] for n in names})
    missing = [k for k in keys if k not in judged]
    if missing:
        raise ValueError(f"fold {number}: studies {missing[:3]} are not in --data (same folders, same order?)")
    maps = {k: {View(n.rsplit("/", 1)[1]): saved[n].astype(np.float32) for n in names if n.rsplit("/", 1)[0] == k}
            for k in keys}
    return maps, saved


def fold_maps(cv: Path, number: int, judged: Mapping[str, LabelledStudy], threshold: float,
              reader: AnatomyReader | None = None) -> tuple[list[StudyCandidates], tuple[np.ndarray, np.ndarray]]:
    """Fold ``number``'s held-out studies' candidates at ``threshold`` from its saved maps, and its
    crops' (scores, labels); with ``reader``, only those the anatomy reading keeps
    (:func:`dicomnode.segmentation.reading.physiological_removed`)."""
    maps, saved = saved_maps(cv, number, judged)
    if reader is not None:
        maps = {k: physiological_removed(reader, judged[k].scan, m, threshold) for k, m in maps.items()}
    crops = (np.asarray(saved["crop_scores"], float), np.asarray(saved["crop_labels"], bool)) \
        if "crop_scores" in saved.files else (np.zeros(0), np.zeros(0, bool))
    return study_candidates([judged[k] for k in maps], maps, threshold), crops


def load_folds(cv: Path, roots: Sequence[Path]) -> tuple[list[FoldCandidates], dict[str, Any]]:
    """Every fold's held-out candidates from ``cv``'s saved maps, at the pooled operating point."""
    table = json.loads((cv / "crossval.json").read_text())
    point = table["pooled_operating_point"]
    judged = judged_studies(roots)
    folds = [fold_candidates(number, fold_maps(cv, number, judged, point["threshold"])[0], point["min_area_mm2"])
             for number in range(1, len(table["folds"]) + 1)]
    return folds, point


def nested(folds: Sequence[FoldCandidates], which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw scores, calibrated scores, labels) of every fold, each calibrated by the map fitted on
    the other folds; ``which`` is ``"focus"`` or ``"study"``."""
    raw, calibrated, labels = [], [], []
    for fold in folds:
        others = [f for f in folds if f is not fold]
        fitted = fit_platt(np.concatenate([getattr(f, f"{which}_peaks") for f in others]),
                           np.concatenate([getattr(f, f"{which}_labels") for f in others]))
        scores = getattr(fold, f"{which}_peaks")
        raw.append(scores)
        calibrated.append(fitted(scores))
        labels.append(getattr(fold, f"{which}_labels"))
    return np.concatenate(raw), np.concatenate(calibrated), np.concatenate(labels)


def calibrate(cv: Path, roots: Sequence[Path]) -> dict[str, Any]:
    """The nested reliability table and the maps fitted on all folds (module docstring)."""
    folds, point = load_folds(cv, roots)
    report: dict[str, Any] = {"cv": str(cv), "operating_point": point, "folds": len(folds)}
    for which in ("focus", "study"):
        raw, calibrated, labels = nested(folds, which)
        fitted = fit_platt(np.concatenate([getattr(f, f"{which}_peaks") for f in folds]),
                           np.concatenate([getattr(f, f"{which}_labels") for f in folds]))
        report[which] = {"raw": reliability(raw, labels), "calibrated_out_of_fold": reliability(calibrated, labels),
                         "fitted_on_all_folds": fitted.to_dict(),
                         "at_operating_point": round(fitted.probability(point["peak_threshold"]), 4)}
    return report


def markdown(report: dict[str, Any]) -> str:
    point = report["operating_point"]
    lines = [f"Out-of-fold candidates of `{report['cv']}` ({report['folds']} folds) at pixel threshold "
             f"{point['threshold']:g}, minimum area {point['min_area_mm2']:g} mm²; each fold calibrated by the "
             "map fitted on the others.", "",
             "| | count (positive) | ECE raw → calibrated | Brier raw → calibrated | log loss raw → calibrated "
             "| calibrated probability at the peak threshold |", "|---|---|---|---|---|---|"]
    for which, name in (("focus", "foci (touch an `Abnormal` box)"), ("study", "studies (hold an `Abnormal` box)")):
        raw, cal = report[which]["raw"], report[which]["calibrated_out_of_fold"]
        lines.append(f"| {name} | {raw['count']} ({raw['positives']}) | {raw['ece']:.3f} → {cal['ece']:.3f} | "
                     f"{raw['brier']:.3f} → {cal['brier']:.3f} | {raw['log_loss']:.3f} → {cal['log_loss']:.3f} | "
                     f"{report[which]['at_operating_point']:.3f} (peak {point['peak_threshold']:.4g}) |")
    return "\n".join(lines) + "\n"


def reliability_diagram(report: dict[str, Any], path: Path) -> None:
    """Observed rate against mean probability per bin, raw and calibrated, foci and studies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for axis, which in zip(axes, ("focus", "study")):
        axis.plot([0, 1], [0, 1], color="0.7", linewidth=1)
        for key, label, style in (("raw", "raw peak", "o--"), ("calibrated_out_of_fold", "calibrated (out of fold)", "s-")):
            bins = report[which][key]["bins"]
            axis.plot([b["mean_probability"] for b in bins], [b["observed"] for b in bins], style,
                      label=f"{label}, ECE {report[which][key]['ece']:.3f}")
        axis.set(title=f"{which}: {report[which]['raw']['count']} ({report[which]['raw']['positives']} positive)",
                 xlabel="predicted probability", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1))
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_into_card(card_path: Path, report: dict[str, Any], command: str) -> None:
    """The focus map as the card's ``operating_point.calibration``, the rest under ``metrics.calibration``."""
    card = load_card(card_path)
    focus = Calibration(**report["focus"]["fitted_on_all_folds"])
    metrics = {**card.metrics, "calibration": {
        "command": command, "cross_validation": report["cv"], "folds": report["folds"],
        "operating_point_of_the_folds": report["operating_point"],
        "study_map": report["study"]["fitted_on_all_folds"],
        "focus_at_the_folds_peak_threshold": report["focus"]["at_operating_point"],
        "study_at_the_folds_peak_threshold": report["study"]["at_operating_point"],
        "focus_at_this_cards_peak_threshold": round(focus.probability(card.operating_point.peak_threshold), 4)
        if card.operating_point.peak_threshold is not None else None,
        "out_of_fold": {which: {key: {k: v for k, v in report[which][key].items() if k != "bins"}
                                for key in ("raw", "calibrated_out_of_fold")} for which in ("focus", "study")}}}
    update_card(card_path, operating_point=dataclasses.replace(card.operating_point, calibration=focus), metrics=metrics)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.train.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", type=Path, required=True, help="a dicomnode.train.crossval output folder")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="the cross-validation's data folders, same order (repeatable)")
    parser.add_argument("--card", type=Path, default=None, help="write the fitted maps into this model card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = calibrate(args.cv, args.data)
    (args.cv / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.cv / "calibration.md").write_text(markdown(report), encoding="utf-8")
    reliability_diagram(report, args.cv / "calibration.png")
    if args.card:
        write_into_card(args.card, report, " ".join(["python -m dicomnode.train.calibration",
                                                      *(argv if argv is not None else sys.argv[1:])]))
    print(markdown(report))


if __name__ == "__main__":
    main()
