"""Does the image show a skeleton? The spine contrast of dicomnode/segmentation/skeleton.py on bone scans and on
scans of other tracers, with how many of each the node would refuse when nothing states the tracer.

    python benchmarks/skeleton_evidence.py [--data REAL_WHOLEBODY ...] [--studies 20]

Rows: simulated bone scans (``dicomnode.synth.simulate``), simulated scans of other tracers
(``dicomnode.synth.other_tracers``: sestamibi, renal, soft tissue without bone), and each ``--data``
folder of BS-80K whole-body files (``<id>/<id>_<date>.dcm``, read by :func:`dicomnode.train.bs80k.read_wholebody`).
Prints a markdown table: per source, the minimum, median and maximum of the posterior spine
contrast, and the studies whose image shows no skeleton (named for folders).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.synth.other_tracers import TRACERS, simulate_other_tracer  # noqa: E402
from dicomnode.synth.simulate import simulate_study  # noqa: E402
from dicomnode.segmentation.scan import View  # noqa: E402
from dicomnode.segmentation.skeleton import SkeletonEvidence, skeleton_evidence, spine_contrast  # noqa: E402
from dicomnode.train.bs80k import read_wholebody  # noqa: E402

SPACING_MM = 2.26


def from_stored(images: dict[View, np.ndarray]) -> SkeletonEvidence:
    """The evidence of simulated views (stored layout; the measure does not depend on left-right)."""
    return SkeletonEvidence(View.POSTERIOR, spine_contrast(images[View.POSTERIOR], SPACING_MM))


def row(source: str, evidence: Iterable[tuple[str, SkeletonEvidence]]) -> str:
    items = list(evidence)
    spine = np.array([e.spine for _, e in items])
    refused = [name for name, e in items if e.shows_no_skeleton]
    shown = ", ".join(refused[:6]) + (" …" if len(refused) > 6 else "")
    return (f"| {source} | {len(items)} | {np.nanmin(spine):.2f} / {np.nanmedian(spine):.2f} / {np.nanmax(spine):.2f} | "
            f"{len(refused)}{f' ({shown})' if shown and len(refused) < len(items) else ''} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", default=[], help="a BS-80K whole-body folder")
    parser.add_argument("--studies", type=int, default=20, help="simulated studies per row")
    args = parser.parse_args()
    print("| source | studies | spine contrast min / median / max | no skeleton (under SPINE_MIN) |")
    print("|---|---|---|---|")
    print(row("simulated bone scans", ((f"seed {seed}", from_stored(simulate_study(seed).images))
                                       for seed in range(1, args.studies + 1))))
    for tracer in TRACERS:
        print(row(f"simulated {tracer}", ((f"seed {seed}", from_stored(simulate_other_tracer(seed, tracer)))
                                          for seed in range(1, args.studies + 1))))
    for folder in args.data:
        files = sorted(folder.glob("*/*.dcm"))
        print(row(f"{folder.name} (real bone scans)", ((path.parent.name, skeleton_evidence(read_wholebody(path)))
                                                        for path in files)))


if __name__ == "__main__":
    main()
