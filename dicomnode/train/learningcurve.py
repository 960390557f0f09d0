"""What more real data buys: cross-validated scores against the share of development studies trained on.

    python -m dicomnode.train.learningcurve runs/cv-25 runs/cv-50 runs/cv-100 --data REAL/bs80k-wholebody \
        --data REAL/bs80k-crops --data data/synth-mix [--max-fp 0.5] [--reading] [--out runs/learning-curve]

Each folder is a :mod:`dicomnode.train.crossval` run of the same preset and folds, with
``--fraction`` 0.25, 0.5 and 1 (every fold trains on that share of its patients and is judged on
the same held-out fold); ``--data`` are the runs' data folders in the same order. The curve is
scored from the runs' saved out-of-fold maps (``fold<k>/oof.npz``) on the folds **every** run has
finished, so a run stopped early still gives a point on the same patients: each fold's operating
point (pixel threshold 0.3, the most sensitive peak threshold within ``--max-fp`` false positives
per study) is chosen on the other common folds
(:func:`dicomnode.train.crossval.pooled_operating_point`), and the table holds each share's mean ±
std over those folds. With ``--reading`` the maps are first read
with the shipped anatomy map and the fixed rules (the components they dismiss are removed,
:func:`dicomnode.segmentation.reading.physiological_removed`), and the operating points are chosen
on what remains; a single run gives its table. The shipped second stage is left out: it was fitted
on these out-of-fold maps, and :mod:`dicomnode.train.secondstage` cross-validates it.
docs/training.md, "Calibration, fold averaging and the learning curve".
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.segmentation.modelcard import load_card
from dicomnode.segmentation.reading import AnatomyReader

from .boxscore import StudyCandidates, roc_auc, wholebody_scores
from .calibration import fold_maps, judged_studies
from .crossval import mean_std, pooled_operating_point

#: The numbers the curve follows (:mod:`dicomnode.train.boxscore`).
CURVE = ("lesion_sensitivity", "mean_study_sensitivity", "false_positives_per_study", "normal_marked_fraction",
         "study_auc", "crop_auc")
PIXEL_THRESHOLD = 0.3


def finished_folds(run: Path) -> set[int]:
    return {int(f.name[4:]) for f in run.glob("fold*") if f.name[4:].isdigit() and (f / "oof.npz").is_file()}


def _fraction(run: Path, fold: int) -> float:
    """The share its fold model trained on (cards written before ``--fraction`` existed: all)."""
    weights = next(iter(sorted((run / f"fold{fold}").glob("*.safetensors"))), None)
    training = load_card(weights).training if weights is not None else {}
    return float(training.get("training_fraction", 1.0))


def points(runs: Sequence[Path], roots: Sequence[Path], max_fp: float,
           reader: AnatomyReader | None = None) -> list[dict[str, Any]]:
    """One point per run on the folds every run finished, in order of the share trained on; with
    ``reader``, of the maps as the reading leaves them (module docstring)."""
    common = sorted(set.intersection(*(finished_folds(run) for run in runs)))
    if len(common) < 2:
        raise ValueError(f"the runs share {len(common)} finished fold(s); a nested operating point needs two")
    judged = judged_studies(roots)
    out = []
    for run in runs:
        folds: dict[int, list[StudyCandidates]] = {}
        crops: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in common:
            folds[k], crops[k] = fold_maps(run, k, judged, PIXEL_THRESHOLD, reader)
        rows = []
        for k in common:
            threshold, point = pooled_operating_point([{(PIXEL_THRESHOLD, 0.0): folds[j]} for j in common if j != k],
                                                      max_fp, flip=True)
            row = wholebody_scores(folds[k], point, threshold)
            row["crop_auc"] = roc_auc(crops[k][0], crops[k][1]) if crops[k][1].size else float("nan")
            rows.append(row)
        out.append({"run": str(run), "fraction": _fraction(run, common[0]), "folds": common,
                    "reading": reader is not None, **mean_std(rows, CURVE)})
    return sorted(out, key=lambda p: p["fraction"])


def markdown(curve: Sequence[dict[str, Any]]) -> str:
    read = "read with the anatomy map and the fixed rules" if curve[0].get("reading") else "the lesion model alone"
    lines = [f"Folds {', '.join(map(str, curve[0]['folds']))} of every run, {read}; mean ± std over them.", "",
             "| share of the development studies | " + " | ".join(n.replace("_", " ") for n in CURVE) + " |",
             "|---" * (len(CURVE) + 1) + "|"]
    for point in curve:
        cells = [f"{point[n]['mean']:.3f} ± {point[n]['std']:.3f}" if n in point else "–" for n in CURVE]
        lines.append(f"| {point['fraction']:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curve: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

    figure, axes = plt.subplots(1, 2, figsize=(9, 4))
    x = [100 * p["fraction"] for p in curve]
    for axis, names in zip(axes, (("lesion_sensitivity", "mean_study_sensitivity", "normal_marked_fraction",
                                   "study_auc", "crop_auc"),
                                  ("false_positives_per_study",))):
        for name in names:
            present = [(xi, p[name]) for xi, p in zip(x, curve) if name in p]
            if present:
                axis.errorbar([xi for xi, _ in present], [e["mean"] for _, e in present],
                              yerr=[e["std"] for _, e in present], marker="o", capsize=3, label=name.replace("_", " "))
        axis.set(xlabel="% of the development studies trained on", xticks=x)
        axis.legend(fontsize=8)
    axes[0].set(ylim=(0, 1), ylabel="mean ± std over folds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.train.learningcurve", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="dicomnode.train.crossval output folders")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="the runs' data folders, same order (repeatable)")
    parser.add_argument("--max-fp", type=float, default=0.5, help="false positives per study allowed at the operating point")
    parser.add_argument("--reading", action="store_true",
                        help="read the maps with the shipped anatomy map and fixed rules first")
    parser.add_argument("--out", type=Path, default=Path("runs/learning-curve"))
    args = parser.parse_args(argv)
    # the fixed rules only: the shipped second stage was fitted on these out-of-fold maps
    reader = AnatomyReader.default(second_stage=False) if args.reading else None
    if args.reading and reader is None:
        parser.error("--reading: the anatomy map is not shipped in this checkout")
    curve = points(args.runs, args.data, args.max_fp, reader)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning-curve.json").write_text(json.dumps(curve, indent=2) + "\n")
    (args.out / "learning-curve.md").write_text(markdown(curve), encoding="utf-8")
    plot(curve, args.out / "learning-curve.png")
    print(markdown(curve))


if __name__ == "__main__":
    main()
