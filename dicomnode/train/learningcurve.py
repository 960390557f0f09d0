"""What more real data buys: cross-validated scores against the share of development studies trained on.

    python -m dicomnode.train.learningcurve runs/cv-25 runs/cv-50 runs/cv-100 [--out runs/learning-curve]

Each folder is a :mod:`dicomnode.train.crossval` run of the same preset and folds, with
``--fraction`` 0.25, 0.5 and 1 (every fold trains on that share of its patients and is judged on
the same held-out fold). The table holds each point's mean ± std over folds; the picture plots
them against the real whole-body studies each fold trained on. docs/training.md, "Calibration,
fold averaging and the learning curve".
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The numbers the curve follows (:mod:`dicomnode.train.boxscore`).
CURVE = ("lesion_sensitivity", "mean_study_sensitivity", "false_positives_per_study", "study_auc", "crop_auc")


def points(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """One point per run, in order of the share trained on; the runs must share folds and preset."""
    tables = [json.loads((run / "crossval.json").read_text()) for run in runs]
    if len({json.dumps(t["preset"], sort_keys=True) for t in tables}) > 1 or len({len(t["folds"]) for t in tables}) > 1:
        raise ValueError("the runs of a learning curve must share one preset and one number of folds")
    out = []
    for run, table in zip(runs, tables):
        studies = [row.get("training_studies") for row in table["folds"]]
        out.append({"run": str(run), "fraction": table.get("training_fraction", 1.0),
                    "training_studies": float(np.mean(studies)) if None not in studies else None,
                    **{name: table["cross_validated"].get(name) for name in CURVE}})
    return sorted(out, key=lambda p: p["fraction"])


def markdown(curve: Sequence[dict[str, Any]]) -> str:
    lines = ["| share of the development studies | whole-body studies per fold | "
             + " | ".join(name.replace("_", " ") for name in CURVE) + " |", "|---" * (len(CURVE) + 2) + "|"]
    for point in curve:
        cells = [f"{point[name]['mean']:.3f} ± {point[name]['std']:.3f}" if point[name] else "–" for name in CURVE]
        studies = f"{point['training_studies']:.1f}" if point["training_studies"] is not None else "–"
        lines.append(f"| {point['fraction']:.0%} | {studies} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curve: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

    figure, axes = plt.subplots(1, 2, figsize=(9, 4))
    x = [100 * p["fraction"] for p in curve]
    for axis, names in zip(axes, (("lesion_sensitivity", "mean_study_sensitivity", "study_auc", "crop_auc"),
                                  ("false_positives_per_study",))):
        for name in names:
            present = [(xi, p[name]) for xi, p in zip(x, curve) if p[name]]
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
    parser.add_argument("--out", type=Path, default=Path("runs/learning-curve"))
    args = parser.parse_args(argv)
    curve = points(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning-curve.json").write_text(json.dumps(curve, indent=2) + "\n")
    (args.out / "learning-curve.md").write_text(markdown(curve), encoding="utf-8")
    plot(curve, args.out / "learning-curve.png")
    print(markdown(curve))


if __name__ == "__main__":
    main()
