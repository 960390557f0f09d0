"""What limits a model's scores on simulated studies (issue 5, target not reached: say why, measured).

Segments every labelled study of a ``dicomnode synth`` folder once with ``Segmenter.from_weights``
(the node's path) and prints four markdown tables:

1. **By lesion SNR.** Each truth lesion (8-connected component of a view's truth mask) takes the
   largest Rose SNR the simulator recorded for a visible lesion at its position (``manifest.json``;
   the truth holds only lesions with SNR ≥ 5 and contrast ≥ 0.10, :mod:`dicomnode.synth.simulate`).
   Per bin: lesions, share of all truth pixels, sensitivity, and the *local* DSC (truth component
   against the prediction within ``--margin`` pixels of it, other components excluded).
2. **By lesion area** in pixels, the same columns.
3. **Boundary bound:** the per-image DSC (mean over lesion images, as the headline) of the truth
   against itself grown or shrunk by one pixel all round: what a segmentation that is right except
   for a one-pixel boundary error would score on lesions this small.
4. **False positives by what lies under them:** each predicted component that touches no truth,
   attributed to a simulated lesion that the visibility rule left out of the truth (real uptake, too
   faint or too small to count), a benign mimic of the simulator (degenerative joint, fracture,
   injection site, bladder), or nothing simulated; a position within ``--margin`` pixels counts.
5. **Operating points:** the probability threshold swept (the card's threshold is the papers' 0.5),
   with the headline DSC, lesion sensitivity and false positives per study at each.

    python benchmarks/segmentation_limits.py --data STUDIES [--weights dicomnode/segmentation/weights/default.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from dicomnode.segmentation.inference import WEIGHTS_DIR, Segmenter
from dicomnode.segmentation.metrics import EIGHT_CONNECTED, lesion_scores, pixel_counts
from dicomnode.segmentation.scan import View
from dicomnode.train.datasets import load_studies
from dicomnode.train.study import LabelledStudy
from dicomnode.train.evaluate import stored_position

SNR_BINS = (5.0, 10.0, 20.0, 40.0)
AREA_BINS_PX = (1, 20, 50, 100, 200)
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class Component:
    """One truth lesion of one view, as the model saw it at the card's threshold."""

    snr: float
    area_px: int
    detected: bool
    local_dsc: float


def recorded_snr(study: LabelledStudy, view: View, lesions: Sequence[dict]) -> list[tuple[int, int, float]]:
    """Stored (row, column) and SNR of every lesion the manifest marks visible in ``view``."""
    out = []
    for raw in lesions:
        if raw["visible"][view.value]:
            row, column = stored_position(study, view, tuple(raw["position_px"]))
            out.append((row, column, float(raw["snr"][view.value])))
    return out


def components(truth: np.ndarray, prediction: np.ndarray, snrs: list[tuple[int, int, float]],
               margin: int) -> list[Component]:
    """Every truth component with its SNR, area, detection and local DSC."""
    labels, _ = ndimage.label(truth != 0, structure=EIGHT_CONNECTED)
    found = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        rows = slice(max(box[0].start - margin, 0), box[0].stop + margin)
        cols = slice(max(box[1].start - margin, 0), box[1].stop + margin)
        own = labels[rows, cols] == label
        near = ndimage.distance_transform_edt(~own) <= margin
        others = (labels[rows, cols] != 0) & ~own
        predicted = (prediction[rows, cols] != 0) & near & ~others
        overlap = int((predicted & own).sum())
        local_dsc = 2 * overlap / (int(predicted.sum()) + int(own.sum()))
        snr = max((s for r, c, s in snrs
                   if rows.start <= r < rows.stop and cols.start <= c < cols.stop
                   and own[r - rows.start, c - cols.start]), default=float("nan"))
        detected = bool((prediction[rows, cols] != 0)[own].any())  # the window holds the whole component
        found.append(Component(snr, int(own.sum()), detected, local_dsc))
    return found


def binned(items: Sequence[Component], key: str, edges: Sequence[float]) -> list[str]:
    """Markdown rows of ``items`` grouped by ``key`` into [edges[i], edges[i + 1]) and ≥ edges[-1]."""
    total_pixels = sum(c.area_px for c in items)
    rows = []
    for low, high in zip(edges, (*edges[1:], np.inf)):
        chosen = [c for c in items if low <= getattr(c, key) < high]
        if not chosen:
            continue
        label = f"{low:g}–{high:g}" if np.isfinite(high) else f"≥ {low:g}"
        rows.append(
            f"| {label} | {len(chosen)} | {100 * sum(c.area_px for c in chosen) / total_pixels:.0f} % | "
            f"{np.mean([c.detected for c in chosen]):.2f} | {np.mean([c.local_dsc for c in chosen]):.2f} |"
        )
    unknown = [c for c in items if not np.isfinite(getattr(c, key))]
    if unknown:
        rows.append(f"| not recorded | {len(unknown)} | | {np.mean([c.detected for c in unknown]):.2f} | |")
    return rows


def false_positive_causes(truth: np.ndarray, prediction: np.ndarray, hidden: Sequence[tuple[int, int]],
                          mimics: Sequence[tuple[str, tuple[int, int]]], margin: int) -> list[str]:
    """What lies under each predicted component that touches no truth: a ``hidden`` lesion position
    (one the visibility rule left out), a mimic ``(kind, position)``, or nothing (module docstring)."""
    labels, count = ndimage.label(prediction, structure=EIGHT_CONNECTED)
    causes = []
    for label in range(1, count + 1):
        own = labels == label
        if (own & (truth != 0)).any():
            continue
        near = ndimage.binary_dilation(own, iterations=margin)

        def under(position: tuple[int, int]) -> bool:
            r, c = position
            return 0 <= r < near.shape[0] and 0 <= c < near.shape[1] and bool(near[r, c])

        if any(under(p) for p in hidden):
            causes.append("lesion left out of the truth")
        else:
            causes.append(next((f"mimic: {kind}" for kind, p in mimics if under(p)), "nothing simulated"))
    return causes


def boundary_bound(truths: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean per-image DSC of each lesion image's truth against itself grown / shrunk by one pixel."""
    grown, shrunk = [], []
    for truth in truths:
        t = truth != 0
        grown.append(pixel_counts(t, ndimage.binary_dilation(t, EIGHT_CONNECTED)).dsc)
        shrunk.append(pixel_counts(t, ndimage.binary_erosion(t, EIGHT_CONNECTED)).dsc)
    return {"grown": float(np.mean(grown)), "shrunk": float(np.mean(shrunk))}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a dicomnode synth folder (with manifest.json)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR / "default.json")
    parser.add_argument("--margin", type=int, default=5, help="pixels around a lesion for its local DSC")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    manifest = {e["folder"]: e for e in json.loads((args.data / "manifest.json").read_text())["studies"]}
    studies = [s for s in load_studies(args.data) if s.labelled]
    segmenter = Segmenter.from_weights(args.weights)
    found: list[Component] = []
    causes: list[str] = []
    lesion_truths: list[np.ndarray] = []
    sweep = {t: {"dsc": [], "truth": 0, "detected": 0, "fp": 0} for t in THRESHOLDS}
    for index, study in enumerate(studies, start=1):
        result = segmenter.segment(study.scan)
        for view, truth in study.labels.items():
            probability = result.views[view].probability
            entry = manifest[study.key]
            mask = probability >= segmenter.card.threshold
            found += components(truth, mask, recorded_snr(study, view, entry["lesions"]), args.margin)
            hidden = [stored_position(study, view, tuple(raw["position_px"]))
                      for raw in entry["lesions"] if not raw["visible"][view.value]]
            mimics = [(m["kind"], stored_position(study, view, tuple(m["position_px"]))) for m in entry["mimics"]]
            causes += false_positive_causes(truth, mask, hidden, mimics, args.margin)
            if truth.any():
                lesion_truths.append(truth)
            for threshold, tally in sweep.items():
                swept = probability >= threshold
                counts = lesion_scores(truth, swept)
                tally["truth"] += counts.truth
                tally["detected"] += counts.detected
                tally["fp"] += counts.false_positives
                if truth.any():
                    tally["dsc"].append(pixel_counts(truth, swept).dsc)
        print(f"\rsegmented {index}/{len(studies)} studies", end="", flush=True)
    print()

    header = "| lesions | truth pixels | sensitivity | local DSC |\n|---|---:|---:|---:|---:|"
    print(f"\n{segmenter.card.name} on {len(studies)} studies of {args.data} ({len(found)} truth lesions)\n")
    print("| Rose SNR " + header)
    print("\n".join(binned(found, "snr", SNR_BINS)))
    print("\n| area px " + header)
    print("\n".join(binned(found, "area_px", AREA_BINS_PX)))
    areas = np.array([c.area_px for c in found])
    print(f"\nlesion area: median {np.median(areas):.0f} px, quartiles {np.percentile(areas, 25):.0f}–"
          f"{np.percentile(areas, 75):.0f} px")
    bound = boundary_bound(lesion_truths)
    print(f"\n| truth against itself | DSC (mean over {len(lesion_truths)} lesion images) |\n|---|---:|")
    print(f"| grown by 1 px | {bound['grown']:.3f} |\n| shrunk by 1 px | {bound['shrunk']:.3f} |")
    print(f"\n| false positives ({len(causes)}) over | count | share |\n|---|---:|---:|")
    for cause in sorted(set(causes), key=causes.count, reverse=True):
        print(f"| {cause} | {causes.count(cause)} | {100 * causes.count(cause) / len(causes):.0f} % |")
    print("\n| threshold | DSC | lesion sensitivity | FP / study |\n|---:|---:|---:|---:|")
    for threshold, tally in sweep.items():
        print(f"| {threshold:.1f} | {np.mean(tally['dsc']):.3f} | {tally['detected'] / tally['truth']:.3f} | "
              f"{tally['fp'] / len(studies):.2f} |")


if __name__ == "__main__":
    main()
