"""How conspicuous the simulator's lesions are against the real boxed ones, and what each reading finds.

    python benchmarks/lesion_conspicuity.py --real REAL/bs80k-wholebody --synth data/synth-test-40

**Conspicuity** of a hot spot is where its peak ranks among the counts of its view's body
(:func:`dicomnode.segmentation.preprocess.body_mask`): −log10 of the fraction of body pixels hotter
than the peak, so 2 means "in the hottest 1 %". It depends on neither the count level nor the bit
depth. For every real BS-80K box (``Abnormal`` and ``Normal``) the peak is the box's; for every
simulated truth lesion (a component of a view's truth mask) it is the component's.

The second table splits the simulated lesions at the real ``Abnormal`` boxes' 10th percentile: those
below it are fainter than nine in ten lesions that the annotators boxed. For each part it gives the
lesion sensitivity (a truth component touched by the result's mask, as ``dicomnode evaluate``
counts it) of the shipped lesion model **alone**, read with the anatomy map and the **fixed rules**,
and **read** with the second stage too (:class:`dicomnode.segmentation.reading.AnatomyReader`, as the
worker runs it). docs/training.md, "The learned second stage", reports the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.preprocess import body_mask
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.train.bs80k import load_wholebody_folder
from dicomnode.train.datasets import load_synth_folder
from dicomnode.train.evaluate import EIGHT_CONNECTED
from dicomnode.train.weak import ABNORMAL, NORMAL

QUANTILES = (10, 25, 50, 75, 90)


class BodyRanks:
    """A view's body counts, sorted once, so that every hot spot of the view is ranked against them."""

    def __init__(self, stored: np.ndarray) -> None:
        self.counts = np.sort(stored[body_mask(stored)])

    def conspicuity(self, peak: float) -> float:
        """−log10 of the fraction of the body pixels hotter than ``peak`` (6 when none is)."""
        hotter = self.counts.size - np.searchsorted(self.counts, peak, side="right")
        return float(-np.log10(max(hotter / max(self.counts.size, 1), 1e-6)))


def real_boxes(folder: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {ABNORMAL: [], NORMAL: []}
    for study in load_wholebody_folder(folder):
        for view, boxes in study.boxes.items():
            image = study.scan.views[view]
            stored = image.source.to_stored(image.counts)
            ranks = BodyRanks(stored)
            for box in boxes:
                out[box.kind].append(ranks.conspicuity(float(stored[box.clipped(stored.shape)].max())))
    return out


def simulated_lesions(folder: Path, segmenter: Segmenter,
                      readers: dict[str, AnatomyReader]) -> tuple[list[float], dict[str, list[bool]]]:
    """Each truth component's conspicuity and whether each reading's mask touches it (the lesion
    model alone, and its one result read by each of ``readers``)."""
    values: list[float] = []
    found: dict[str, list[bool]] = {name: [] for name in ("alone", *readers)}
    for study in load_synth_folder(folder):
        if not study.labelled:
            continue
        result = segmenter.segment(study.scan)
        masks = {"alone": {view: r.mask for view, r in result.views.items()}}
        for name, reader in readers.items():
            read = reader.read(result, segmenter.card.operating_point)
            masks[name] = {view: r.mask for view, r in read.views.items()}
        for view, truth in study.labels.items():
            image = study.scan.views[view]
            stored = image.source.to_stored(image.counts)
            ranks = BodyRanks(stored)
            components, _ = ndimage.label(truth != 0, structure=EIGHT_CONNECTED)
            for label, box in enumerate(ndimage.find_objects(components), 1):
                inside = components[box] == label
                values.append(ranks.conspicuity(float(stored[box][inside].max())))
                for name in found:
                    found[name].append(bool(masks[name][view][box][inside].any()))
    return values, found


def quantile_row(name: str, values: list[float]) -> str:
    cells = " | ".join(f"{np.percentile(values, q):.2f}" for q in QUANTILES)
    return f"| {name} | {len(values)} | {cells} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, required=True, help="BS-80K whole-body folder (boxes)")
    parser.add_argument("--synth", type=Path, required=True, help="simulated studies (dicomnode synth)")
    args = parser.parse_args(argv)
    segmenter, reader = Segmenter.default(device="cpu"), AnatomyReader.default("cpu")
    if reader is None:
        parser.error("no shipped anatomy map (dicomnode/segmentation/weights/anatomy.json)")
    readers = {"fixed rules": AnatomyReader(reader.mapper, None), "read": reader}
    real = real_boxes(args.real)
    simulated, found = simulated_lesions(args.synth, segmenter, readers)
    print("| hot spots | count | " + " | ".join(f"{q}th pct" for q in QUANTILES) + " |")
    print("|---|---|" + "---|" * len(QUANTILES))
    print(quantile_row(f"real `{ABNORMAL}` boxes", real[ABNORMAL]))
    print(quantile_row(f"real `{NORMAL}` boxes", real[NORMAL]))
    print(quantile_row("simulated truth lesions", simulated))
    split = float(np.percentile(real[ABNORMAL], 10))
    print(f"\nsimulated lesions split at the real `{ABNORMAL}` boxes' 10th percentile ({split:.2f})\n")
    print("| simulated lesions | count | " + " | ".join(found) + " |")
    print("|---|---|" + "---|" * len(found))
    values = np.asarray(simulated)
    for name, part in (("fainter than 9 in 10 boxed", values < split), ("as conspicuous as the boxed", values >= split),
                       ("all", np.ones_like(values, bool))):
        cells = " | ".join(f"{np.asarray(found[r])[part].mean():.3f}" if part.any() else "-" for r in found)
        print(f"| {name} | {int(part.sum())} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
