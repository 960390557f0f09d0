"""Which lesions the learned second stage turns down, by view and region, simulated against real.

    python benchmarks/stage_losses.py --synth data/synth-test-40 --real REAL/bs80k-wholebody [--eight-bit 40]

On every study, the shipped lesion model's components at its own operating point (the peak
threshold of its card) that touch a lesion (a simulated study's truth mask, a real BS-80K study's
``Abnormal`` box, as the second stage's fit counts them) and that no fixed rule dismisses are
judged by the shipped second stage (:func:`dicomnode.segmentation.judgement.judge`). The table
gives, per source, view and region group
(:data:`dicomnode.segmentation.judgement.GROUPS`), how many such lesion candidates there are, how
many the stage keeps, and the mean of the two features that read the other view: the lesion
model's probability there (AP agreement) and the other view's log counts over its body level
(other-view contrast). A row where the stage drops many simulated lesions whose other-view
features sit far below the real lesions' of the same view and region says the simulator draws
those lesions unlike the real ones (docs/training.md, "What it costs on the simulator").

``--eight-bit LEVEL`` also reads the simulated studies exported to 8 bits as BS-80K's were, each
study rescaled so that its body level lands at ``LEVEL`` (the development views' median is 40),
rounded and clipped at 255 (:func:`dicomnode.train.augment.quantise_scan`): whether the bit depth,
rather than what the simulator draws, is what the stage reads differently.

The real development studies trained the shipped lesion model, so their candidates here are
in-sample (the model is surer of them than of a new scan's); the second stage's own table is out
of fold (``python -m dicomnode.train.secondstage``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.judgement import GROUPS, Candidate, candidates, judge
from dicomnode.segmentation.reading import AnatomyReader, with_candidates
from dicomnode.train.augment import quantise_scan, scan_reference
from dicomnode.train.bs80k import load_wholebody_folder
from dicomnode.train.datasets import load_synth_folder
from dicomnode.train.secondstage import touched_boxes
from dicomnode.train.study import LabelledStudy

Row = tuple[str, str, str]  # source, view, region group


def group_of(candidate: Candidate) -> str:
    return next((name for name, labels in GROUPS.items() if candidate.region in labels), "other")


def touches_lesion(study: LabelledStudy, candidate: Candidate, mask: np.ndarray, real: bool) -> bool:
    """As the second stage's fit labels its candidates (:mod:`dicomnode.train.secondstage`): a
    simulated candidate's bounding box holds truth; a real candidate's pixels meet an ``Abnormal`` box."""
    view = candidate.lesion.view
    if real:
        return bool(touched_boxes(candidate, mask, study.boxes.get(view, ()))[0])
    r0, c0, r1, c1 = candidate.lesion.bbox
    return bool(study.labels[view][r0:r1, c0:c1].any())


def judged_lesions(source: str, studies: Iterable[LabelledStudy], segmenter: Segmenter, reader: AnatomyReader,
                   real: bool) -> dict[Row, list[tuple[Candidate, bool]]]:
    """Each row's lesion candidates at the lesion model's operating point that pass the fixed rules,
    with whether the second stage keeps them."""
    rows: dict[Row, list[tuple[Candidate, bool]]] = defaultdict(list)
    for study in studies:
        if not study.labelled:
            continue
        result = with_candidates(segmenter.segment(study.scan), segmenter.card.operating_point)
        found = candidates(study.scan.views, result.views, reader.mapper.map(study.scan))
        fixed = judge(found, None)
        for candidate, ruled, verdict in zip(found, fixed, judge(found, reader.stage), strict=True):
            if ruled.suspicious and touches_lesion(study, candidate, result.views[candidate.lesion.view].mask, real):
                rows[(source, candidate.lesion.view.value, group_of(candidate))].append((candidate, verdict.suspicious))
    return rows


def markdown(rows: dict[Row, list[tuple[Candidate, bool]]]) -> str:
    lines = ["| source | view | region group | lesion candidates | kept by the stage | AP agreement, kept / dropped "
             "| other-view contrast, kept / dropped |", "|---|---|---|---|---|---|---|"]

    def mean(values: list[float]) -> str:
        return f"{np.mean(values):.2f}" if values else "–"

    for (source, view, group), judged in sorted(rows.items()):
        kept = [c for c, k in judged if k]
        dropped = [c for c, k in judged if not k]
        lines.append(f"| {source} | {view} | {group} | {len(judged)} | {len(kept)} "
                     f"| {mean([c.ap_agreement for c in kept])} / {mean([c.ap_agreement for c in dropped])} "
                     f"| {mean([c.other_view_contrast for c in kept])} / {mean([c.other_view_contrast for c in dropped])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synth", type=Path, required=True, help="simulated studies (dicomnode synth)")
    parser.add_argument("--real", type=Path, help="BS-80K whole-body folder (boxes); in-sample for the shipped model")
    parser.add_argument("--eight-bit", type=float, metavar="LEVEL",
                        help="also read the simulated studies exported to 8 bits, body level at LEVEL (e.g. 40)")
    args = parser.parse_args(argv)
    segmenter, reader = Segmenter.default(device="cpu"), AnatomyReader.default("cpu")
    if reader is None or reader.stage_for(segmenter.card.version) is None:
        parser.error("no shipped anatomy map and second stage for the shipped lesion model")
    simulated = load_synth_folder(args.synth)
    rows = judged_lesions("simulated", simulated, segmenter, reader, real=False)
    if args.eight_bit is not None:
        exported = [dataclasses.replace(s, scan=quantise_scan(s.scan, scan_reference(s.scan), args.eight_bit))
                    for s in simulated]
        rows.update(judged_lesions(f"simulated, 8-bit at {args.eight_bit:g}", exported, segmenter, reader, real=False))
    if args.real is not None:
        rows.update(judged_lesions("real", load_wholebody_folder(args.real), segmenter, reader, real=True))
    print(markdown(rows))
    total: dict[str, list[bool]] = defaultdict(list)
    for (source, _, _), judged in sorted(rows.items()):
        total[source] += [kept for _, kept in judged]
    for source, kept in total.items():
        print(f"\n{source}: the stage keeps {sum(kept)} of {len(kept)} lesion candidates that pass the fixed rules")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
