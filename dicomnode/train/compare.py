"""The papers' comparison table, reproduced on simulated studies: every method trained on the same
split, each run with its own seed (paper 001: 5 runs from seed 42), all evaluated on one test folder.

    python -m dicomnode.train.compare --data TRAIN_DIR --test TEST_DIR --out OUT [--runs 5] [--epochs N]
        [--lr X] [--batch-size B] [--patch P] [--preset unet --preset msanet ...]

Methods: the network-free ``threshold`` baseline (``dicomnode/segmentation/weights/threshold.json``, no
training, so a single run) and the training presets in ``config/train``. ``--epochs``, ``--lr``,
``--batch-size`` and ``--patch`` (for networks that take any patch size; ``mams`` keeps its 256 × 256
window) override every preset alike, so that a reduced CPU comparison differs between methods only in
network and loss; the table says which overrides were used. Writes ``OUT/comparison.md`` and
``OUT/comparison.json``; each run's model and report stay in ``OUT/<preset>/run<k>/``.

A run whose model card is already in ``OUT/<preset>/run<k>/`` and records the same preset, overrides
and training folder is evaluated again, not retrained, so a comparison stopped part-way (or extended
from 2 to 5 runs) goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomnode.segmentation.inference import WEIGHTS_DIR

from .config import TrainConfig, load_config
from .datasets import detect_format, load_studies
from .evaluate import evaluate, over_runs
from .loop import run_training

log = logging.getLogger(__name__)

PRESETS = Path(__file__).resolve().parents[2] / "config" / "train"
METHODS = ("unet", "msanet", "mams", "semisup")
THRESHOLD = WEIGHTS_DIR / "threshold.json"


def overrides(args: argparse.Namespace, preset: Path, seed: int) -> dict[str, Any]:
    """The dotted-key overrides of one run (the same for every method, except a fixed window)."""
    chosen: dict[str, Any] = {"optim.seed": seed}
    if args.epochs:
        chosen["optim.epochs"] = args.epochs
    if args.lr:
        chosen["optim.lr"] = args.lr
    if args.batch_size:
        chosen["optim.batch_size"] = args.batch_size
    if args.patch and load_config(preset).model.network != "mams":  # mams takes 256 × 256 only
        chosen["data.patch_rows"] = chosen["data.patch_columns"] = args.patch
    return chosen


def finished_run(config: TrainConfig, data: Path, run_dir: Path) -> tuple[Path, float] | None:
    """The weights and training seconds of a run already trained with ``config`` on ``data``, if any."""
    card = run_dir / f"{config.name}.json"
    if not card.is_file() or not card.with_suffix(".safetensors").is_file():
        return None
    training = json.loads(card.read_text()).get("training", {})
    if training.get("preset") != config.model_dump(mode="json") or training.get("data") != {str(data): detect_format(data).value}:
        return None
    return card.with_suffix(".safetensors"), float(training.get("wall_seconds", 0.0))


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate every method; return the table as a dict (also written to OUT)."""
    test = load_studies(args.test)
    rows: dict[str, Any] = {}
    if THRESHOLD.is_file():
        evaluation = evaluate([THRESHOLD], test, runs=1, data=str(args.test))
        rows["threshold"] = {"runs": [evaluation.first], "across_runs": over_runs([evaluation.first]),
                             "train_seconds": 0.0}
    for name in args.preset or METHODS:
        preset = PRESETS / f"{name}.toml"
        runs, seconds = [], []
        for k in range(args.runs):
            seed = args.seed + k
            config = load_config(preset, **overrides(args, preset, seed))
            run_dir = args.out / name / f"run{k + 1}"
            done = finished_run(config, args.data, run_dir)
            if done:
                log.info("%s run %d (seed %d) already trained in %s: evaluating it", name, k + 1, seed, run_dir)
            else:
                run_training(config, args.data, run_dir, progress=False, num_threads=args.threads)
                done = finished_run(config, args.data, run_dir)
                if done is None:
                    raise RuntimeError(f"{run_dir}: training wrote no model card matching its preset")
            weights, trained = done  # seconds as the card records them: the epochs' sum, for every run alike
            seconds.append(trained)
            evaluation = evaluate([weights], test, runs=1, data=str(args.test))
            runs.append(evaluation.first)
            log.info("%s run %d (seed %d): test DSC %.3f", name, k + 1, seed, over_runs([evaluation.first])["dsc"]["mean"])
        shared = {k: v for k, v in overrides(args, preset, args.seed).items() if k != "optim.seed"}
        rows[name] = {"runs": runs, "across_runs": over_runs(runs), "train_seconds": sum(seconds) / len(seconds),
                      "seeds": [args.seed + k for k in range(args.runs)], "overrides": shared}
    table = {"train": str(args.data), "test": str(args.test), "test_studies": len(test), "runs": args.runs,
             "methods": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.out / "comparison.md").write_text(markdown(table))
    return table


def _pm(entry: dict[str, float], digits: int = 3) -> str:
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def markdown(table: dict[str, Any]) -> str:
    lines = [
        "| method | runs | DSC | precision | recall | lesion sensitivity | FP / study | CPU ms / study | train s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table["methods"].items():
        a = row["across_runs"]
        lines.append(
            f"| {name} | {len(row['runs'])} | {_pm(a['dsc'])} | {_pm(a['precision'])} | {_pm(a['recall'])} | "
            f"{_pm(a['lesion_sensitivity'])} | {_pm(a['false_positives_per_study'], 2)} | "
            f"{a['ms_per_study']['mean']:.0f} | {row['train_seconds']:.0f} |"
        )
    notes = {name: row.get("overrides") for name, row in table["methods"].items() if row.get("overrides")}
    lines += [
        "",
        f"Trained on `{table['train']}`, tested on `{table['test']}` ({table['test_studies']} studies). "
        "DSC / precision / recall per image with lesions; ± is the standard deviation over runs "
        "(seeds from 42); train s / run is the epochs' wall time as each model card records it. "
        "Overrides of the presets: " + json.dumps(notes),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.train.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="training folder (split as the presets say)")
    parser.add_argument("--test", type=Path, required=True, help="held-out test folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", action="append", choices=METHODS, help="methods to train (default: all)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--patch", type=int)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table = compare(args)
    print(markdown(table))


if __name__ == "__main__":
    main()
