"""The evaluation report: a markdown file and overlay pictures of the best and worst studies.

:func:`evaluate_folder` is what ``dicomnode evaluate`` runs: studies from a folder, optionally only
the validation or test patients of the model's own training split (rebuilt from its model card), the
evaluation of :mod:`dicomnode.train.evaluate`, and this report.

Overlays show each view as stored (what a viewer shows), counts windowed to the 99th percentile of
the body, the truth outline in green and the model's outline in red. Best and worst are ranked by
the study's pixel DSC (both views pooled) among studies that hold lesions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from dicomnode.segmentation.modelcard import load_card  # noqa: E402
from dicomnode.segmentation.reading import AnatomyReader  # noqa: E402
from dicomnode.segmentation.scan import View  # noqa: E402

from .config import DataSection  # noqa: E402
from .datasets import load_studies  # noqa: E402
from .study import LabelledStudy  # noqa: E402
from .evaluate import Evaluation, StudyOutcome, evaluate  # noqa: E402
from .split import Split, split_patients  # noqa: E402


def best_and_worst(outcomes: Sequence[StudyOutcome], count: int = 2) -> tuple[list[StudyOutcome], list[StudyOutcome]]:
    """The ``count`` best and worst studies with lesions by pooled pixel DSC (ties: study key)."""
    ranked = sorted((o for o in outcomes if o.has_lesions), key=lambda o: (-o.pixels.dsc, o.key))
    worst = [o for o in reversed(ranked) if o not in ranked[:count]][:count]
    return ranked[:count], worst


def _show_stored(axis: Any, study: LabelledStudy, view: View) -> None:
    """A view as stored (what a viewer shows), counts windowed to the 99th percentile of the body."""
    image = study.scan.views[view]
    stored = image.source.to_stored(image.counts)
    top = float(np.percentile(stored[stored > 0], 99)) if np.any(stored > 0) else 1.0
    axis.imshow(stored, cmap="gray_r", vmin=0, vmax=max(top, 1.0), interpolation="nearest")


def write_overlay(study: LabelledStudy, outcome: StudyOutcome, path: Path) -> None:
    """Anterior and posterior side by side with truth (green) and prediction (red) outlines."""
    views = [v for v in View if v in outcome.views]
    figure, axes = plt.subplots(1, len(views), figsize=(3.2 * len(views), 9), squeeze=False)
    for axis, view in zip(axes[0], views):
        _show_stored(axis, study, view)
        for mask, colour in ((study.labels[view], "lime"), (outcome.views[view].prediction, "red")):
            if mask.any():
                axis.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
        scores = outcome.views[view]
        axis.set_title(
            f"{view.value}: DSC {scores.pixels.dsc:.2f}\n"
            f"lesions {scores.lesions.detected}/{scores.lesions.truth}, FP {scores.lesions.false_positives}",
            fontsize=9,
        )
        axis.axis("off")
    figure.suptitle(f"{outcome.key}  (green: truth, red: model)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_box_overlay(study: LabelledStudy, masks: dict[View, np.ndarray], path: Path) -> None:
    """Each view as stored with its annotated boxes (``Abnormal`` yellow, ``Normal`` blue) and the
    reported lesions outlined in red: the picture of a BS-80K study a person checks."""
    from matplotlib.patches import Rectangle

    from .weak import ABNORMAL

    views = [v for v in View if v in study.scan.views]
    figure, axes = plt.subplots(1, len(views), figsize=(3.2 * len(views), 9), squeeze=False)
    for axis, view in zip(axes[0], views):
        _show_stored(axis, study, view)
        boxes = study.boxes.get(view, ())
        for box in boxes:
            colour = "gold" if box.kind == ABNORMAL else "deepskyblue"
            axis.add_patch(Rectangle((box.column_min - 0.5, box.row_min - 0.5), box.column_max - box.column_min + 1,
                                     box.row_max - box.row_min + 1, fill=False, edgecolor=colour, linewidth=0.9))
        mask = masks.get(view)
        reported = 0
        if mask is not None and mask.any():
            axis.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            reported = ndimage.label(mask, structure=np.ones((3, 3), bool))[1]
        found = sum(box.touches(mask) for box in boxes if box.kind == ABNORMAL) if mask is not None else 0
        abnormal = sum(box.kind == ABNORMAL for box in boxes)
        axis.set_title(f"{view.value}: {found}/{abnormal} boxes found\n{reported} lesions reported", fontsize=9)
        axis.axis("off")
    figure.suptitle(study.key, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _one(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _pm(entry: dict[str, float], digits: int = 3) -> str:
    if not math.isfinite(entry["mean"]):
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _summary_value(record: dict[str, Any], group: str, metric: str) -> str:
    entry = record.get(group, {}).get(metric)
    return f"{entry['mean']:.3f} ± {entry['std']:.3f} (pooled {entry['pooled']:.3f})" if entry else "–"


def markdown(evaluation: Evaluation, card: dict[str, Any], overlays: dict[str, list[str]]) -> str:
    """The report text (no patient identifiers: studies are named by their folder or UID)."""
    s = evaluation.first
    head = evaluation.headline
    runs = evaluation.across_runs
    run_note = (
        f"{len(evaluation.runs)} models (one per training run)"
        if evaluation.runs_kind == "models"
        else f"{len(evaluation.runs)} bootstrap resamples of the patients (test-set sampling spread)"
    )
    lines = [
        f"# Evaluation of {card.get('name', '?')} {card.get('version', '')}",
        "",
        f"- Model(s): {', '.join(f'`{m}`' for m in evaluation.models)} — network `{card.get('network')}`, "
        f"width `{card.get('width')}`",
        f"- Data: `{evaluation.data}` (subset: {evaluation.subset}); {s['studies']} labelled studies, "
        f"{s['images']} images, {s['lesion_images']} with lesions, {s['truth_lesions']} truth lesions",
        f"- Runs: {run_note}",
        "",
        "## Headline",
        "",
        "| over | DSC | precision | recall | lesion sensitivity | FP / study | ms / study |",
        "|---|---|---|---|---|---|---|",
        f"| all {s['studies']} studies, first model | {_one(head['dsc'])} | {_one(head['precision'])} | "
        f"{_one(head['recall'])} | {_one(head['lesion_sensitivity'])} | "
        f"{_one(head['false_positives_per_study'], 2)} | {_one(head['ms_per_study'], 0)} |",
        f"| {len(evaluation.runs)} runs: mean ± std | {_pm(runs['dsc'])} | {_pm(runs['precision'])} | "
        f"{_pm(runs['recall'])} | {_pm(runs['lesion_sensitivity'])} | "
        f"{_pm(runs['false_positives_per_study'], 2)} | {_pm(runs['ms_per_study'], 0)} |",
        "",
        "DSC, precision and recall: per image (one view), mean over the images with lesions, as the papers "
        "report. Lesion sensitivity pooled over lesions; false positives per study (both views).",
        "",
        "## Pixel metrics over images (mean ± std over images; pooled over pixels)",
        "",
        "| images | DSC | precision | recall |",
        "|---|---|---|---|",
    ]
    for group, label in (("pixel_lesion_images", "with lesions"), ("pixel_all_images", "all")):
        lines.append(
            f"| {label} | {_summary_value(s, group, 'dsc')} | {_summary_value(s, group, 'precision')} | "
            f"{_summary_value(s, group, 'recall')} |"
        )
    lines += [
        "",
        "## Lesion detection",
        "",
        f"Sensitivity {s['lesion_sensitivity']:.3f} ({s['detected_lesions']}/{s['truth_lesions']}); "
        f"false positives {s['false_positives_per_study']:.2f} ± {s['false_positives_per_study_std']:.2f} per study; "
        f"{s['ms_per_study']:.0f} ± {s['ms_per_study_std']:.0f} ms per study.",
        "",
    ]
    for name, title in (("site", "skeletal site"), ("size", "lesion size")):
        lines += [f"### By {title}", "", f"| {title} | lesions | detected | sensitivity |", "|---|---|---|---|"]
        for key, row in evaluation.breakdown[name].items():
            lines.append(f"| {key} | {row['lesions']} | {row['detected']} | {row['sensitivity']:.3f} |")
        lines.append("")
    lines += ["## Best and worst studies", ""]
    for label in ("best", "worst"):
        for name in overlays.get(label, []):
            lines.append(f"**{label}**: ![{name}]({name})")
            lines.append("")
    training = card.get("training") or {}
    if training:
        lines += [
            "## Model card: training",
            "",
            f"studies {training.get('studies')}, patients {training.get('patients')}, epochs {training.get('epochs')} "
            f"(best {training.get('best_epoch')}), device {training.get('device')}, "
            f"wall time {training.get('wall_seconds')} s",
            "",
        ]
    return "\n".join(lines) + "\n"


def write_report(
    evaluation: Evaluation, studies: Sequence[LabelledStudy], card: dict[str, Any], out: Path
) -> Path:
    """Write ``out/report.md`` and the overlay PNGs; return the report path."""
    out.mkdir(parents=True, exist_ok=True)
    by_key = {s.key: s for s in studies}
    best, worst = best_and_worst(evaluation.outcomes)
    overlays: dict[str, list[str]] = {"best": [], "worst": []}
    for label, chosen in (("best", best), ("worst", worst)):
        for rank, outcome in enumerate(chosen, start=1):
            name = f"{label}_{rank}.png"
            write_overlay(by_key[outcome.key], outcome, out / name)
            overlays[label].append(name)
    path = out / "report.md"
    path.write_text(markdown(evaluation, card, overlays), encoding="utf-8")
    return path


def split_for(card: dict[str, Any], patient_ids: Sequence[str]) -> Split:
    """The patient split the card's training run used (its preset's fractions and split seed)."""
    data = ((card.get("training") or {}).get("preset") or {}).get("data") or {}
    defaults = DataSection()
    return split_patients(
        patient_ids,
        seed=int(data.get("split_seed", defaults.split_seed)),
        fractions=(
            float(data.get("train_fraction", defaults.train_fraction)),
            float(data.get("val_fraction", defaults.val_fraction)),
            float(data.get("test_fraction", defaults.test_fraction)),
        ),
    )


def evaluate_folder(
    models: Sequence[Path],
    data: Path,
    out: Path,
    *,
    runs: int = 5,
    seed: int = 42,
    subset: str = "all",
    device: str | None = None,
    reader: AnatomyReader | None = None,
) -> tuple[Evaluation, Path]:
    """Load the studies under ``data``, keep ``subset`` of the first model's training split, evaluate
    the models (with ``reader``: read on the anatomy map, :func:`dicomnode.train.evaluate.evaluate`) and
    write the report into ``out``."""
    card = load_card(Path(models[0])).to_dict()
    studies = load_studies(data)
    if subset != "all":
        studies = split_for(card, [s.patient_id for s in studies]).select(studies, subset)
        if not studies:
            raise ValueError(f"the {subset} subset of {data} is empty")
    evaluation = evaluate(models, studies, runs=runs, seed=seed, device=device, data=str(data), subset=subset,
                          reader=reader)
    return evaluation, write_report(evaluation, studies, card, out)


def record_in_card(model: Path, evaluation: Evaluation, label: str) -> Path:
    """Add the evaluation's headline (mean ± std over runs) and its data to the model card's
    ``metrics`` under ``label``; the weights and their SHA-256 are untouched."""
    card = load_card(Path(model))
    assert card.path is not None
    entry = {
        "data": evaluation.data,
        "subset": evaluation.subset,
        "studies": evaluation.first["studies"],
        "truth_lesions": evaluation.first["truth_lesions"],
        "runs": f"{len(evaluation.runs)} {evaluation.runs_kind}",
        **{name: {k: round(v, 4) for k, v in value.items()} for name, value in evaluation.across_runs.items()},
    }
    updated = replace(card, metrics={**card.metrics, label: entry}).save(card.path)
    assert updated.path is not None
    return updated.path
