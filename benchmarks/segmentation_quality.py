"""Segmentation quality and time per study of a model on simulated studies (docs/segmentation.md,
docs/simulation.md).

Simulates ``--studies`` whole-body studies with ``dicomnode.synth`` (seed ``--seed``, layout
``--layout``), writes them as DICOM, reads them back with :func:`dicomnode.segmentation.views.load_scan_files`
and segments them with :meth:`Segmenter.from_weights` — the path the node runs. Prints a markdown
table of :mod:`dicomnode.segmentation.metrics`: pixel DSC / precision / recall (mean ± std over views, and
pooled), lesion sensitivity and false positives per study; and the wall time per study of
preprocessing + inference + postprocessing (``segment_many``, one batch of all studies).

    python benchmarks/segmentation_quality.py                          # the threshold baseline, 30 studies
    python benchmarks/segmentation_quality.py --model runs/unet/best.safetensors --device cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dicomnode.synth import write_studies
from dicomnode.segmentation.inference import WEIGHTS_DIR, Segmenter
from dicomnode.segmentation.metrics import LesionCounts, lesion_scores, pixel_counts, summarise, summarise_lesions
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.views import load_scan_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=WEIGHTS_DIR / "threshold.json")
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--layout", default="mixed", choices=("multiframe", "split", "mixed"))
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--columns", type=int, default=256)
    parser.add_argument("--spacing", type=float, default=2.26)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        manifest = write_studies(
            out, studies=args.studies, seed=args.seed, layout=args.layout, png=False,
            rows=args.rows, columns=args.columns, spacing_mm=args.spacing,
        )
        scans, truths = [], []
        for entry in manifest["studies"]:
            study = out / entry["folder"]
            scans.append(load_scan_files(sorted(study.glob("*.dcm"))))
            with np.load(study / "truth.npz") as truth:
                truths.append({View(key): truth[key] for key in truth.files})

    segmenter = Segmenter.from_weights(args.model, device=args.device)
    start = time.perf_counter()
    results = segmenter.segment_many(scans)
    per_study = (time.perf_counter() - start) / len(scans)

    pixels, lesions = [], []
    for result, truth in zip(results, truths):
        study_lesions = LesionCounts(0, 0, 0, 0)
        for view, view_result in result.views.items():
            pixels.append(pixel_counts(truth[view], view_result.mask))
            study_lesions = study_lesions + lesion_scores(truth[view], view_result.mask)
        lesions.append(study_lesions)
    summary = summarise(pixels)
    lesion_summary = summarise_lesions(lesions)

    algorithm = segmenter.algorithm
    print(f"model {algorithm.name} {algorithm.version} ({algorithm.network}), {args.model}")
    print(
        f"{args.studies} simulated studies, seed {args.seed}, layout {args.layout}, "
        f"{args.rows}x{args.columns} at {args.spacing} mm; {torch.get_num_threads()} thread(s)\n"
    )
    print("| metric | mean ± std over views | pooled |")
    print("|---|---|---|")
    for name in ("dsc", "precision", "recall"):
        item = summary[name]
        print(f"| {name} | {item.mean:.4f} ± {item.std:.4f} | {item.pooled:.4f} |")
    totals = lesion_summary.totals
    print(f"| lesion sensitivity | | {lesion_summary.sensitivity:.4f} ({totals.detected}/{totals.truth}) |")
    print(
        f"| false positives / study | {lesion_summary.false_positives_per_study:.2f} ± "
        f"{lesion_summary.false_positives_std:.2f} | {totals.false_positives} in all |"
    )
    print(f"| seconds / study (segment_many) | | {per_study:.3f} |")


if __name__ == "__main__":
    main()
