"""Average the cross-validation's fold models, and judge the averages beside the shipped model.

    python -m dicomnode.train.foldaverage --cv runs/cv --card dicomnode/segmentation/weights/default.json \\
        --sim-test data/synth-test [--sim-studies 40] [--out runs/fold-average]

Two ways to average the ``k`` fold models of :mod:`dicomnode.train.crossval`:

- the **ensemble**: the mean of the ``k`` models' probability maps, ``k`` network passes per view;
- the **weight average** (a uniform "model soup", Wortsman et al., ICML 2022): one network holding
  the mean of the fold models' tensors, which is meaningful because every fold is fine-tuned from
  the same simulator-pretrained weights (docs/training.md, "The recipe").

Neither can be judged on the real development half: every study there trained all fold models but
one. They are judged on simulated 16-bit studies that no model trained on, at ``--card``'s
operating point, beside the shipped model and each fold model, with the CPU time per study; the
cross-validation's spread over folds (``crossval.json``) says how much the fold models differ on
real scans. The weight average is written as ``OUT/fold-average.{safetensors,json}`` (a card
copied from ``--card``, its weights and version replaced), never over the shipped model.
docs/training.md, "Calibration, fold averaging and the learning curve".
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dicomnode.segmentation.inference import NetworkSegmenter, Segmenter
from dicomnode.segmentation.modelcard import ModelCard, load_card, sha256_of
from dicomnode.segmentation.postprocess import lesion_mask

from .datasets import load_studies
from .evaluate import StudyOutcome, evaluate_studies, score_study, summary
from .study import LabelledStudy

log = logging.getLogger(__name__)


def fold_models(cv: Path) -> list[Path]:
    """The fold models' weights of a cross-validation folder, in fold order."""
    folds = sorted((p for p in cv.glob("fold*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    weights = [next(iter(sorted(f.glob("*.safetensors"))), None) for f in folds]
    if not weights or any(w is None for w in weights):
        raise ValueError(f"{cv}: every fold<k>/ needs its trained model")
    return [w for w in weights if w is not None]


def weight_average(models: Sequence[Path], card: ModelCard, out: Path) -> Path:
    """The uniform mean of the models' tensors as a new model beside ``card``'s settings; integer
    tensors (BatchNorm's batch counters) are taken from the first model."""
    states = [load_file(str(m)) for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise ValueError("the fold models do not share one architecture")
    averaged = {name: (torch.stack([s[name].float() for s in states]).mean(0).to(tensor.dtype)
                       if tensor.is_floating_point() else tensor)
                for name, tensor in states[0].items()}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "fold-average.safetensors"
    save_file(averaged, str(weights))
    digest = sha256_of(weights)
    replace(card, version=f"{card.version}-fold-average-{digest[:8]}", weights=weights.name, sha256=digest,
            training={**card.training, "fold_average_of": [str(m) for m in models]}).save(out / "fold-average.json")
    return weights


def ensemble_outcomes(models: Sequence[Path], card: ModelCard, studies: Sequence[LabelledStudy],
                      device: str) -> list[StudyOutcome]:
    """Each study scored on the mean of the models' probability maps at ``card``'s operating point;
    the time is that of all the passes."""
    segmenters = [Segmenter.from_weights(m, device=device) for m in models]
    for segmenter in segmenters:
        assert isinstance(segmenter, NetworkSegmenter)
        segmenter.card = replace(segmenter.card, operating_point=card.operating_point)
    outcomes = []
    for study in studies:
        started = time.perf_counter()
        maps = [s.probabilities([study.scan])[0] for s in segmenters]
        masks = {view: lesion_mask(np.mean([m[view] for m in maps], axis=0), card.threshold, card.operating_point,
                                   study.scan.views[view].pixel_area_mm2) for view in study.scan.views}
        outcomes.append(score_study(study, masks, (time.perf_counter() - started) * 1000))
    return outcomes


def _row(name: str, outcomes: Sequence[StudyOutcome]) -> dict[str, Any]:
    numbers = summary(outcomes)
    return {"model": name, "sim_lesion_sensitivity": round(numbers["lesion_sensitivity"], 4),
            "sim_false_positives_per_study": round(numbers["false_positives_per_study"], 4),
            "sim_dsc": round(numbers.get("pixel_lesion_images", numbers["pixel_all_images"])["dsc"]["mean"], 4),
            "ms_per_study": round(float(np.median([o.milliseconds for o in outcomes])), 1)}


def _at_operating_point(weights: Path, card: ModelCard, device: str) -> Segmenter:
    segmenter = Segmenter.from_weights(weights, device=device)
    segmenter.card = replace(segmenter.card, threshold=card.threshold, operating_point=card.operating_point)
    return segmenter


def compare(cv: Path, card_path: Path, sim: Path, studies: int, out: Path, device: str) -> dict[str, Any]:
    """The table of the module docstring."""
    card = load_card(card_path)
    models = fold_models(cv)
    test = [s for s in load_studies(sim) if s.labelled][:studies]
    average = weight_average(models, card, out)
    rows = [_row(f"shipped ({card.version})", evaluate_studies(_at_operating_point(card_path, card, device), test))]
    rows += [_row(f"fold {k}", evaluate_studies(_at_operating_point(m, card, device), test))
             for k, m in enumerate(models, start=1)]
    rows.append(_row(f"ensemble of {len(models)} folds", ensemble_outcomes(models, card, test, device)))
    rows.append(_row("weight average of the folds", evaluate_studies(_at_operating_point(average, card, device), test)))
    return {"cv": str(cv), "card": str(card_path), "sim_test": str(sim), "studies": len(test),
            "operating_point": {"threshold": card.threshold, **card.operating_point.to_dict()}, "rows": rows,
            "weight_average": str(average)}


def markdown(table: dict[str, Any]) -> str:
    lines = [f"{table['studies']} simulated studies of `{table['sim_test']}`, at the operating point of "
             f"`{table['card']}`:", "",
             "| model | lesion sensitivity | FP / study | DSC | ms / study (median) |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['sim_lesion_sensitivity']:.3f} | {r['sim_false_positives_per_study']:.2f} | "
              f"{r['sim_dsc']:.3f} | {r['ms_per_study']:.0f} |" for r in table["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.train.foldaverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", type=Path, required=True, help="a dicomnode.train.crossval output folder")
    parser.add_argument("--card", type=Path, required=True, help="the shipped model's card (its operating point is used)")
    parser.add_argument("--sim-test", type=Path, required=True, help="simulated studies no model trained on")
    parser.add_argument("--sim-studies", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None, help="default: CV/fold-average")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or args.cv / "fold-average"
    table = compare(args.cv, args.card, args.sim_test, args.sim_studies, out, args.device)
    (out / "fold-average.md").write_text(markdown(table), encoding="utf-8")
    (out / "fold-average-table.json").write_text(json.dumps(table, indent=2) + "\n")
    print(markdown(table))


if __name__ == "__main__":
    main()
