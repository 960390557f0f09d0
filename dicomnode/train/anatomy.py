"""Train the anatomy map on simulated studies (docs/training.md, "Anatomy map").

    dicomnode train --config config/train/anatomy.toml --out runs/anatomy   # OUT/anatomy.json + .safetensors

A pool of simulated studies is drawn once (both views, exact labels, :mod:`dicomnode.train.anatomydata`);
every epoch each view is augmented afresh toward real scans. The loss is cross-entropy weighted by
a power of the inverse of each label's frequency (``weight_power``; small structures — sternum,
clavicles, kidneys — would otherwise be drowned by background and soft tissue). ``init`` starts
from saved weights (the shipped map is the 7-epoch run of ``anatomy.toml`` fine-tuned by
``anatomy-finetune.toml``). A checkpoint is written after every epoch
under ``OUT/work``; a run started again with the same ``--out`` resumes from it. The model is saved
with its card (``task: "anatomy-map"``, :mod:`dicomnode.segmentation.modelcard`), with the per-label Dice on
held-out simulated studies as its metrics. The lesion training loop (:mod:`dicomnode.train.loop`) is not
reused: it is built around one sigmoid lesion logit, patches and lesion-centred sampling.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from dicomnode.segmentation.anatomy import LABEL_COUNT, AnatomyLabel
from dicomnode.segmentation.modelcard import ANATOMY_MAP, save_model
from dicomnode.segmentation.networks import build
from dicomnode.train.anatomydata import MAP_PREPROCESSING, augment, simulated_views
from dicomnode.train.config import AnatomyPreset

log = logging.getLogger(__name__)


def dice_per_label(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of every label present in ``truth`` or ``predicted`` (labels of :class:`AnatomyLabel`)."""
    out = {}
    for label in AnatomyLabel:
        p, t = predicted == label, truth == label
        total = int(p.sum() + t.sum())
        if total:
            out[label.site] = round(2.0 * float((p & t).sum()) / total, 4)
    return out


def _variant(preset: AnatomyPreset, index: int) -> str | None:
    """The normal variant of pool study ``index`` (every ``variant_every``-th, cycling through them)."""
    from dicomnode.synth.variants import VARIANTS

    if not preset.variant_every or index % preset.variant_every:
        return None
    return VARIANTS[(index // preset.variant_every) % len(VARIANTS)]


def _batches(items: list, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(len(items))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        yield [items[i] for i in order[start:start + batch_size]]


def evaluate(net: torch.nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Mean Dice per label and pixel accuracy on augmented held-out views."""
    net.eval()
    scores: dict[str, list[float]] = {}
    correct = total = 0
    with torch.inference_mode():
        for image, labels in pairs:
            predicted = net(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
            for site, value in dice_per_label(predicted, labels).items():
                scores.setdefault(site, []).append(value)
            correct += int((predicted == labels).sum())
            total += labels.size
    per_label = {site: round(float(np.mean(v)), 4) for site, v in scores.items()}
    return {"pixel_accuracy": round(correct / total, 4), "dice": per_label,
            "mean_dice": round(float(np.mean(list(per_label.values()))), 4)}


def train(preset: AnatomyPreset, out: Path, work: Path) -> Path:
    torch.set_num_threads(preset.threads)
    torch.manual_seed(preset.seed)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pool = [v for i in range(preset.studies) for v in simulated_views(preset.seed + i, _variant(preset, i))]
    held = [v for i in range(preset.validation_studies)
            for v in simulated_views(preset.seed + preset.studies + i)]
    val_rng = np.random.default_rng(preset.seed + 1)
    validation = [augment(v, val_rng) for v in held]
    frequency = np.bincount(np.concatenate([v.labels.ravel() for v in pool]), minlength=LABEL_COUNT)
    weights = torch.tensor((frequency.sum() / np.maximum(frequency, 1)) ** preset.weight_power, dtype=torch.float32)
    weights /= weights.mean()
    log.info("pool %d views, validation %d views, drawn in %.0f s", len(pool), len(validation),
             time.time() - started)

    net = build(preset.network, in_channels=1, width=preset.width)
    if preset.init:
        net.load_state_dict(load_file(preset.init), strict=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=preset.lr)
    steps = preset.epochs * (len(pool) // preset.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, preset.lr, total_steps=steps, pct_start=0.1)
    checkpoint = work / "checkpoint.pt"
    first_epoch, history = 0, []
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        first_epoch, history = state["epoch"] + 1, state["history"]
        log.info("resumed after epoch %d", state["epoch"])
    for epoch in range(first_epoch, preset.epochs):
        net.train()
        rng = np.random.default_rng(preset.seed * 1000 + epoch)
        losses = []
        for batch in _batches(pool, preset.batch_size, rng):
            pairs = [augment(v, rng) for v in batch]
            images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
            labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
            logits = net(images)[0]
            loss = F.cross_entropy(logits, labels, weight=weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        scores = evaluate(net, validation)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
                        "mean_dice": scores["mean_dice"], "pixel_accuracy": scores["pixel_accuracy"]})
        log.info("epoch %d loss %.4f mean Dice %.4f accuracy %.4f (%.0f s)", epoch, np.mean(losses),
                 scores["mean_dice"], scores["pixel_accuracy"], time.time() - started)
        torch.save({"net": net.state_dict(), "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(), "epoch": epoch, "history": history}, checkpoint)
    scores = evaluate(net, validation)
    training = {
        "preset": {f.name: getattr(preset, f.name) for f in fields(preset)},
        "data": f"{preset.studies} simulated studies (seeds {preset.seed}-{preset.seed + preset.studies - 1}), "
                "both views, augmented toward real scans (dicomnode/train/anatomydata.py)",
        "history": history, "device": "cpu", "machine": platform.machine(),
        "torch": torch.__version__, "threads": preset.threads,
        "wall_seconds_last_run": round(time.time() - started, 1),
    }
    metrics = {"simulated_validation": {**scores, "studies": preset.validation_studies,
                                        "seeds": f"{preset.seed + preset.studies}-"
                                                 f"{preset.seed + preset.studies + preset.validation_studies - 1}"}}
    card = save_model(net.eval(), out, name="dicomnode-anatomy", version=f"{preset.name}-{time.strftime('%Y%m%d')}",
                      network=preset.network, preprocessing=MAP_PREPROCESSING, training=training,
                      metrics=metrics, task=ANATOMY_MAP)
    assert card.path is not None
    return card.path
