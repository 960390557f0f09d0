"""A model on real bone scans, scored the BS-80K way, with the measurements the recipe rests on.

    python benchmarks/real_scans.py --data REAL_WHOLEBODY [--data REAL_CROPS] [--weights MODEL] [--threads 2]

For each folder (BS-80K whole-body with boxes, or BS-80K crops) the numbers of
:mod:`dicomnode.train.boxscore` at the model's operating point (the shipped default unless ``--weights``),
through :func:`dicomnode.train.realeval.evaluate_bs80k`; for a whole-body folder also the CPU milliseconds per
study of the whole production path (preprocessing, network with the card's test-time flip,
operating point), one study at a time, and three facts about the data the recipe (docs/training.md)
relies on:

- the 8-bit body reference level ``R`` of the views (the range the 8-bit export augmentation draws);
- the ratio of the right hemithorax's 95th percentile to ``R`` on the anterior views (the crops'
  normalisation constant, :data:`dicomnode.train.crops.CHEST_TO_BODY_REFERENCE`);
- how many studies' posterior frame is further from the anterior than registration accepts.

Cross-validated numbers come from ``python -m dicomnode.train.crossval``, not from here: this scores one model
on whatever folder it is given (e.g. the held-out half). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dicomnode.segmentation.inference import DEFAULT_CARD, Segmenter
from dicomnode.segmentation.preprocess import Preprocessing, body_mask, prepare, reference_level
from dicomnode.segmentation.scan import View
from dicomnode.train.datasets import DataFormat, detect_format, load_studies
from dicomnode.train.study import LabelledStudy
from dicomnode.train.realeval import evaluate_bs80k

SHOWN = ("studies", "lesion_sensitivity", "false_positives_per_study", "normal_marked_fraction", "study_auc",
         "study_sensitivity", "study_specificity", "crops", "crop_auc", "crop_sensitivity", "crop_specificity",
         "crop_specificity_at_sensitivity_0.90")


def data_facts(studies: Sequence[LabelledStudy]) -> dict[str, str]:
    """The reference levels, the chest-to-body ratio and the registration failures of whole-body studies."""
    references, ratios, far = [], [], 0
    for study in studies:
        for view, image in study.scan.views.items():
            body = body_mask(image.counts)
            level = reference_level(image.counts, body, 95.0)
            references.append(level)
            if view is View.ANTERIOR and body.any():
                top = int(np.flatnonzero(body.any(1))[0])
                chest_row = body[min(top + 150, body.shape[0] - 1)]  # the body's midline, at the chest
                centre = int(np.median(np.flatnonzero(chest_row))) if chest_row.any() else body.shape[1] // 2
                # canonical orientation: the patient's right is on the low columns
                chest = image.counts[top + 70 : top + 245, max(centre - 70, 0) : centre]
                if chest.size:
                    ratios.append(float(np.percentile(chest, 95)) / level)
        notes = prepare(study.scan, Preprocessing(window=None, aggregation="stack")).notes
        far += any("exceeds" in note for note in notes)
    return {
        "body reference R (8-bit), median [range]": f"{statistics.median(references):.0f} [{min(references):.0f}–{max(references):.0f}]",
        "right hemithorax p95 / R, median (anterior)": f"{statistics.median(ratios):.2f}" if ratios else "–",
        "studies with views too far apart to register": f"{far} of {len(studies)}",
    }


def milliseconds_per_study(model: Path, studies: Sequence[LabelledStudy]) -> float:
    """Median wall-clock ms per study of ``Segmenter.segment`` (after one warm-up study)."""
    segmenter = Segmenter.from_weights(model)
    segmenter.segment(studies[0].scan)
    times = []
    for study in studies:
        started = time.perf_counter()
        segmenter.segment(study.scan)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="BS-80K folder (repeatable)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_CARD)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for the pictures (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="real_scans_"))
    print(f"model {args.weights}, {args.threads} CPU threads, pictures in {out}\n")
    print("| folder | " + " | ".join(name.replace("_", " ") for name in SHOWN) + " |")
    print("|---|" + "---|" * len(SHOWN))
    facts: dict[str, str] = {}
    for folder in args.data:
        scores = evaluate_bs80k(args.weights, folder, out / folder.name)
        cells = [f"{scores[n]:.3f}" if isinstance(scores.get(n), float) else str(scores.get(n, "–")) for n in SHOWN]
        print(f"| {folder.name} | " + " | ".join(cells) + " |")
        if detect_format(folder) is DataFormat.BS80K_WHOLEBODY:
            studies = load_studies(folder)
            facts.update(data_facts(studies))
            facts[f"CPU ms per study ({folder.name}, median)"] = f"{milliseconds_per_study(args.weights, studies):.0f}"
    if facts:
        print("\n| measurement | value |\n|---|---|")
        for name, value in facts.items():
            print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
