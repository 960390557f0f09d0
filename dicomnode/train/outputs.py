"""What a training run writes into its output folder besides the checkpoint's contents.

The split (``split.json``), the exported network with its model card
(:func:`dicomnode.segmentation.modelcard.save_model`) and what the card says about the run; files are
written whole or not at all. :mod:`dicomnode.train.loop` lists the folder's files.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dicomnode.segmentation.modelcard import save_model
from dicomnode.segmentation.networks import SegmentationNetwork

from .config import TrainConfig
from .datasets import TrainingData
from .split import Split
from .study import LabelledStudy


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)



class ModelWriter:
    """Writes the network as ``OUT/<stem>.safetensors`` + ``OUT/<stem>.json`` (the model-card format)."""

    def __init__(self, config: TrainConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.version = f"{config.name}-{time.strftime('%Y%m%d')}"

    def save(self, net: SegmentationNetwork, stem: str, *, training: dict[str, Any] | None = None,
             metrics: dict[str, Any] | None = None) -> Path:
        card = save_model(
            net,
            self.out / stem,
            name=f"dicomnode-{self.config.model.network}",
            version=self.version,
            network=self.config.model.network,
            preprocessing=self.config.preprocessing_config,
            training=training or {"preset": self.config.name, "note": "intermediate export during training"},
            metrics=metrics,
        )
        assert card.path is not None
        return card.path

    def remove(self, stem: str) -> None:
        for suffix in (".safetensors", ".json"):
            (self.out / stem).with_suffix(suffix).unlink(missing_ok=True)



def write_split(path: Path, split: Split, kept: list[str] | None) -> None:
    data = split.to_json()
    if kept is not None:
        data["labelled_training_patients"] = kept
    path.write_text(json.dumps(data, indent=2) + "\n")


def _synth_recipe(data: Path) -> dict[str, Any]:
    """How a ``dicomnode synth`` folder was made (from its manifest), so the card says how to redo it."""
    try:
        manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("generator", "manifest_version", "seed", "layout", "rows", "columns", "spacing_mm")
    recipe = {key: manifest[key] for key in keys if key in manifest}
    if "studies" in manifest:
        recipe["studies"] = len(manifest["studies"])
    return {"simulated_data": recipe} if recipe else {}


def training_info(
    config: TrainConfig,
    split: Split,
    studies: Sequence[LabelledStudy],
    train_studies: Sequence[LabelledStudy],
    val_studies: Sequence[LabelledStudy],
    items: Sequence[Any],
    history: Sequence[dict[str, float]],
    best_epoch: int,
    device: torch.device,
    data: TrainingData,
) -> dict[str, Any]:
    """What the model card says about the run (no patient identifiers)."""
    recipes = [r for r in (_synth_recipe(Path(folder)) for folder, kind in data.formats.items() if kind == "synth") if r]
    return {
        "preset": config.model_dump(mode="json"),
        "data": dict(data.formats),
        **(recipes[0] if len(recipes) == 1 else {"simulated_data": [r["simulated_data"] for r in recipes]} if recipes else {}),
        "crops": len(data.crops),
        "crops_abnormal": sum(c.abnormal for c in data.crops),
        "studies": len(studies),
        "patients": {name: len(getattr(split, name)) for name in ("train", "val", "test")},
        "split_seed": split.seed,
        "training_studies": len(train_studies),
        "training_studies_labelled": sum(s.labelled for s in train_studies),
        "training_views": len(items),
        "validation_studies": len(val_studies),
        "epochs": len(history),
        "best_epoch": best_epoch,
        "device": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "wall_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
    }
