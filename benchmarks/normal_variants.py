"""False positives per study on the simulated normal variants, before and after the anatomy reading.

    nice -n 10 python benchmarks/normal_variants.py --studies 6

For every normal variant of :mod:`dicomnode.synth.variants` (full bladder, urine contamination, hot
kidneys, injection site, symmetric degenerative knees / shoulders / iliac crests, dental and sinus
uptake), ``--studies`` simulated studies without metastases and as many with metastases elsewhere
(seeds from ``--seed``, disjoint from the second stage's training seeds), each through the node's
view loader. **before**: the shipped lesion model alone (``Segmenter.default()``, its operating
point); **after**: the same probabilities read with the anatomy map and the second stage
(:class:`dicomnode.segmentation.reading.AnatomyReader`, as the worker runs it). Per row:

- ``FP/study``: reported lesions (both views) that touch no truth lesion, per study;
- ``benign marks/study``: those of them on a simulated benign hot spot (the bladder or a kidney by the
  simulator's exact labels, or within 8 pixels of a mimic: the variant's hot spot, an injection site,
  a degenerative joint, a rib fracture);
- ``on the variant's own hot spot``: those on the hot spot the variant forced (the bladder, the
  kidneys, or the mimics it added);
- ``sensitivity``: truth lesions touched by a reported lesion, of all truth lesions (studies with
  metastases).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.synth.simulate import simulate_study
from dicomnode.synth.variants import VARIANTS
from dicomnode.segmentation.anatomy import AnatomyLabel
from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.metrics import lesion_scores
from dicomnode.segmentation.postprocess import EIGHT_CONNECTED
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.segmentation.scan import View
from dicomnode.train.secondstage import simulated_scan

MIMIC_RADIUS_PX = 8


def benign_marks(study, view: View, mask: np.ndarray, variant: str | None = None) -> int:
    """Reported components off the truth that lie on a simulated benign hot spot (module docstring);
    with ``variant``, only those on that variant's own hot spot (the bladder, the kidneys, or the
    mimics the variant added: the simulator appends them after the bladder)."""
    labels, count = ndimage.label(mask != 0, structure=EIGHT_CONNECTED)
    truth = study.truth[view] > 0
    organs = {"full-bladder": [AnatomyLabel.BLADDER], "hot-kidneys": [AnatomyLabel.KIDNEYS]}
    urinary = np.isin(study.anatomy[view], organs.get(variant, [] if variant else
                                                      [AnatomyLabel.BLADDER, AnatomyLabel.KIDNEYS]))
    mimics = list(zip(study.mimics, study.mimic_positions_px))
    if variant is not None:
        first = next(i for i, (m, _) in enumerate(mimics) if m.kind == "bladder") + 1
        mimics = mimics[first:]
    rows, cols = np.ogrid[: mask.shape[0], : mask.shape[1]]
    near = np.zeros(mask.shape, bool)
    for mimic, (row, column) in mimics:
        col = column if view is View.ANTERIOR else mask.shape[1] - 1 - column
        near |= (rows - row) ** 2 + (cols - col) ** 2 <= (MIMIC_RADIUS_PX + mimic.radius_mm / study.spacing_mm) ** 2
    marks = 0
    for label in range(1, count + 1):
        own = labels == label
        if not (own & truth).any() and ((own & urinary).any() or (own & near).any()):
            marks += 1
    return marks


def row_scores(studies: list, masks: list[dict[View, np.ndarray]], variant: str) -> dict[str, float]:
    fp = benign = own = detected = total = 0
    for study, views in zip(studies, masks):
        for view, mask in views.items():
            scores = lesion_scores(study.truth[view], mask)
            fp += scores.false_positives
            detected += scores.detected
            total += scores.truth
            benign += benign_marks(study, view, mask)
            own += benign_marks(study, view, mask, variant)
    n = max(len(studies), 1)
    return {"fp": fp / n, "benign": benign / n, "own": own / n,
            "sensitivity": detected / total if total else float("nan")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=6, help="per variant, with and without metastases each")
    parser.add_argument("--seed", type=int, default=900000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    segmenter, reader = Segmenter.default(), AnatomyReader.default()
    if reader is None:
        parser.error("no shipped anatomy map (dicomnode/segmentation/weights/anatomy.json)")
    started = time.time()
    print(f"lesion model {segmenter.card.version}; anatomy map {reader.mapper.card.version}; second stage "
          f"{'shipped' if reader.stage else 'none (fixed rules only)'}; {args.studies} studies per row")
    print("| variant | metastases | FP/study before | FP/study after | benign marks/study before | "
          "benign marks/study after | on the variant's own hot spot before | after | sensitivity before | "
          "sensitivity after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals = {"before": [], "after": []}
    seed = args.seed
    for variant in VARIANTS:
        for metastases in (False, True):
            studies, before, after = [], [], []
            for _ in range(args.studies):
                study = simulate_study(seed, variant=variant, metastases=metastases)
                scan = simulated_scan(study, seed)
                seed += 1
                result = segmenter.segment(scan)
                read = reader.read(result, segmenter.card.operating_point)
                studies.append(study)
                before.append({v: r.mask for v, r in result.views.items()})
                after.append({v: r.mask for v, r in read.views.items()})
            b, a = row_scores(studies, before, variant), row_scores(studies, after, variant)
            totals["before"].append(b)
            totals["after"].append(a)
            print(f"| {variant} | {'yes' if metastases else 'no'} | {b['fp']:.2f} | {a['fp']:.2f} | "
                  f"{b['benign']:.2f} | {a['benign']:.2f} | {b['own']:.2f} | {a['own']:.2f} | "
                  f"{b['sensitivity']:.2f} | {a['sensitivity']:.2f} |")
    mean = {k: {m: float(np.nanmean([r[m] for r in rows])) for m in ("fp", "benign", "own", "sensitivity")}
            for k, rows in totals.items()}
    print(f"| all | | {mean['before']['fp']:.2f} | {mean['after']['fp']:.2f} | {mean['before']['benign']:.2f} | "
          f"{mean['after']['benign']:.2f} | {mean['before']['own']:.2f} | {mean['after']['own']:.2f} | "
          f"{mean['before']['sensitivity']:.2f} | {mean['after']['sensitivity']:.2f} |")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
