"""Per-epoch training records: a CSV file and a training-curve PNG (losses and validation metrics)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

LOSS_KEYS = ("loss", "segmentation", "adversarial", "critic", "unsupervised", "val_loss")
METRIC_KEYS = ("val_dsc", "val_precision", "val_recall")


def write_history_csv(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """One row per epoch, columns in first-seen order."""
    columns: list[str] = []
    for record in history:
        columns += [key for key in record if key not in columns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [
        (float(r["epoch"]), float(r[key]))
        for r in history
        if key in r and r[key] is not None and math.isfinite(float(r[key]))
    ]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(history: Sequence[Mapping[str, float]], path: Path, title: str) -> None:
    """Losses (left) and validation DSC / precision / recall (right) against the epoch."""
    figure, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4))
    for key in LOSS_KEYS:
        x, y = _series(history, key)
        if x:
            losses.plot(x, y, marker="o", markersize=3, label=key)
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.set_title("training losses")
    losses.legend(fontsize=8)
    for key in METRIC_KEYS:
        x, y = _series(history, key)
        if x:
            metrics.plot(x, y, marker="o", markersize=3, label=key.removeprefix("val_"))
    metrics.set_xlabel("epoch")
    metrics.set_ylim(0, 1)
    metrics.set_title("validation (pixel level)")
    if metrics.lines:  # a run without a validation subset has no curve here
        metrics.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
