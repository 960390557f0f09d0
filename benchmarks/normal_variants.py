"""False positives per study on the simulated normal variants, before and after the anatomy reading.

    nice -n 10 python benchmarks/normal_variants.py --studies 6

For every normal variant of :mod:`dicomnode.synth.variants` (full bladder, urine contamination, hot
kidneys, injection site, symmetric degenerative knees / shoulders / iliac crests, dental and sinus
uptake), ``--studies`` simulated studies without metastases and as many with metastases elsewhere
(seeds from ``--seed``, disjoint from the second stage's training seeds), each through the node's
view loader, read three ways (each cell: alone → fixed rules → read): **alone**, the shipped lesion
model (``Segmenter.default()``, its operating point); **fixed rules**, the same probabilities read
with the anatomy map and the fixed rules only; **read**, with the shipped second stage too
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


READINGS = ("alone", "fixed rules", "read")


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
    readers = {"fixed rules": AnatomyReader(reader.mapper, None), "read": reader}
    started = time.time()
    print(f"lesion model {segmenter.card.version}; anatomy map {reader.mapper.card.version}; second stage "
          f"{'shipped' if reader.stage_for(segmenter.card.version) else 'none (fixed rules only)'}; "
          f"{args.studies} studies per row; each cell: {' → '.join(READINGS)}")
    print("| variant | metastases | FP/study | benign marks/study | on the variant's own hot spot | sensitivity |")
    print("|---|---|---|---|---|---|")
    totals: dict[str, list] = {name: [] for name in READINGS}
    seed = args.seed
    for variant in VARIANTS:
        for metastases in (False, True):
            studies, masks = [], {name: [] for name in READINGS}
            for _ in range(args.studies):
                study = simulate_study(seed, variant=variant, metastases=metastases)
                scan = simulated_scan(study, seed)
                seed += 1
                result = segmenter.segment(scan)
                studies.append(study)
                masks["alone"].append({v: r.mask for v, r in result.views.items()})
                for name, read in readers.items():
                    masks[name].append({v: r.mask for v, r in read.read(result, segmenter.card.operating_point).views.items()})
            scores = {name: row_scores(studies, masks[name], variant) for name in READINGS}
            for name in READINGS:
                totals[name].append(scores[name])
            print(f"| {variant} | {'yes' if metastases else 'no'} | " + " | ".join(
                " → ".join(f"{scores[name][m]:.2f}" for name in READINGS) for m in ("fp", "benign", "own", "sensitivity"))
                + " |")
    mean = {name: {m: float(np.nanmean([r[m] for r in rows])) for m in ("fp", "benign", "own", "sensitivity")}
            for name, rows in totals.items()}
    print("| all | | " + " | ".join(" → ".join(f"{mean[name][m]:.2f}" for name in READINGS)
                                   for m in ("fp", "benign", "own", "sensitivity")) + " |")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
