"""The training loop behind ``dicomnode train``: one preset, one data folder, one output folder.

What a run writes into ``OUT``:

- ``split.json`` (written by :mod:`dicomnode.train.outputs`, as are the exports): the patient-level split (:mod:`dicomnode.train.split`) and, for the semi-supervised regime,
  which training patients kept their labels.
- ``checkpoint.pt``: model, critic, optimisers, schedule, epoch and history after every epoch (written to a temporary file, then renamed, so a crash never leaves half a checkpoint);
  ``--resume`` continues from it and refuses a checkpoint made with another preset.
- ``<name>.safetensors`` + ``<name>.json``: the best epoch's weights (highest validation DSC; the last
  epoch when there is no validation subset) with its model card (:func:`dicomnode.segmentation.modelcard.save_model`),
  loadable by ``Segmenter.from_weights``. During the run ``last.*`` holds the latest epoch, which
  validation loads through the production inference path (:mod:`dicomnode.train.validate`).
- ``history.csv`` and ``curves.png``: per-epoch losses and validation DSC / precision / recall.

Devices: CUDA with bf16 autocast when present (or asked for), CPU otherwise. Losses and their
weights follow :mod:`dicomnode.train.losses` and the preset (:mod:`dicomnode.train.config`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from safetensors.torch import load_file
from torch.utils.data import DataLoader, WeightedRandomSampler

from dicomnode.segmentation.device import DeviceError, resolve_device
from dicomnode.segmentation.networks import SegmentationNetwork, build
from dicomnode.segmentation.networks.msanet import Critic, multiscale_l1
from dicomnode.segmentation.preprocess import Preprocessing

from .config import TrainConfig
from .curves import plot_curves, write_history_csv
from .crops import CropDataset, crop_canvas, crop_sampler_weights
from .datasets import TrainingData, load_training_data
from .study import LabelledStudy
from .outputs import ModelWriter, atomic_save, training_info, write_split
from .losses import adversarial_loss, multiple_instance_loss, mumford_shah_loss, segmentation_loss
from .pretrained import PretrainedError, load_pretrained
from .patches import PatchDataset, view_items
from .split import split_patients
from .validate import validate

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """A run that cannot start or continue as asked (bad resume, no data, unusable device)."""


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    card: Path
    history: list[dict[str, float]]
    best_epoch: int
    wall_seconds: float
    device: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def semisupervised_labels(
    studies: Sequence[LabelledStudy], fraction: float, seed: int
) -> tuple[list[LabelledStudy], list[str]]:
    """Keep labels for ``fraction`` of the labelled training patients (drawn with ``seed``), hide the rest.

    Paper 004 §3.3: a labelled and an unlabelled part, split by patient. Returns the studies with
    hidden labels removed and the sorted IDs of the patients who kept theirs.
    """
    labelled = sorted({s.patient_id for s in studies if s.labelled})
    if not labelled:
        raise TrainingError("semi-supervised training needs at least one labelled training patient")
    keep_count = max(1, round(fraction * len(labelled)))
    keep = set(random.Random(seed).sample(labelled, keep_count))
    out = [s if s.patient_id in keep else dataclasses.replace(s, labels={}, label_source="hidden") for s in studies]
    return out, sorted(keep)


def init_output_prior(net: SegmentationNetwork, prior: float) -> list[str]:
    """Set the bias of every logit head the network declares (:meth:`SegmentationNetwork.logit_heads`)
    to ``log(prior / (1 − prior))`` (Lin et al. 2017 §4.1), so that training starts from "lesions are
    rare"; returns the heads' names."""
    heads = net.logit_heads()
    for head in heads.values():
        nn.init.constant_(head.bias, math.log(prior / (1 - prior)))
    return list(heads)


def _check_patch(config: TrainConfig, net: SegmentationNetwork, prep: Preprocessing) -> None:
    patch = (config.data.patch_rows, config.data.patch_columns)
    if net.window is not None and patch != (net.window, net.window):
        raise TrainingError(
            f"network {config.model.network!r} takes {net.window}×{net.window} windows; "
            f"set data.patch_rows and data.patch_columns to {net.window}"
        )
    if patch[0] % net.size_divisor or patch[1] % net.size_divisor:
        raise TrainingError(
            f"patch {patch[0]}×{patch[1]} is not a multiple of the network's size divisor {net.size_divisor}"
        )
    if prep.in_channels != net.in_channels:
        raise TrainingError("preprocessing and network disagree on input channels")


@contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); plain float32 on CPU."""
    context = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with context:
        yield


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    epochs = config.optim.epochs
    if config.optim.lr_schedule == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
    return lambda epoch: 1.0


def _optimiser(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optim.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)


class Trainer:
    """Holds the networks, optimisers and losses of one run; :meth:`step` trains on one batch."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.preprocessing = config.preprocessing_config
        self.net = build(config.model.network, in_channels=self.preprocessing.in_channels, width=config.model.width).to(device)
        if config.model.init:
            try:
                adapted = load_pretrained(self.net, config.model.init)
            except PretrainedError as exc:
                raise TrainingError(str(exc)) from None
            log.info("started from %s (input channels adapted: %s)", config.model.init, adapted or "none")
        elif config.model.output_prior:
            init_output_prior(self.net, config.model.output_prior)
        _check_patch(config, self.net, self.preprocessing)
        self.optimiser = _optimiser(self.net.parameters(), config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimiser, _schedule(config))
        self.critic: Critic | None = None
        self.critic_optimiser: torch.optim.Optimizer | None = None
        if config.adversarial.enabled:
            self.critic = Critic(in_channels=self.preprocessing.in_channels, width=config.model.width).to(device)
            self.critic_optimiser = torch.optim.Adam(
                self.critic.parameters(),
                lr=config.adversarial.critic_lr,
                betas=(config.adversarial.critic_beta1, 0.999),
            )

    def state(self) -> dict[str, Any]:
        state = {"net": self.net.state_dict(), "optimiser": self.optimiser.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.critic is not None and self.critic_optimiser is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimiser"] = self.critic_optimiser.state_dict()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic is not None and self.critic_optimiser is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimiser.load_state_dict(state["critic_optimiser"])

    def step(self, batch: dict[str, Tensor], crops: dict[str, Tensor] | None = None) -> dict[str, float]:
        """One optimisation step of the network (and of the critic, when adversarial); ``crops`` is a
        batch of image-level crops whose multiple-instance loss joins the pixel loss."""
        c = self.config
        image = batch["image"].to(self.device)
        label = batch["label"].to(self.device)
        labelled = batch["labelled"].to(self.device)
        weight = batch["weight"].to(self.device) if "weight" in batch else None
        self.net.train()
        with _autocast(self.device):
            outputs = self.net(image)
        outputs = [o.float() for o in outputs]
        supervised = [o[labelled] for o in outputs]
        losses: dict[str, Tensor] = {}
        if labelled.any():
            losses["segmentation"] = segmentation_loss(
                supervised, label[labelled], dice_weight=c.loss.dice, bce_weight=c.loss.bce,
                positive_weight=c.loss.positive_weight, batch_dice=c.loss.batch_dice,
                pixel_weight=weight[labelled] if weight is not None else None,
            )
        if crops is not None and c.crops.weight:
            with _autocast(self.device):
                crop_logits = self.net(crops["image"].to(self.device))[0]
            losses["crops"] = multiple_instance_loss(
                crop_logits.float(), crops["valid"].to(self.device), crops["abnormal"].to(self.device), top_k=c.crops.top_k
            )
        total = image.new_zeros(())
        if "segmentation" in losses:
            alpha = c.adversarial.alpha if c.adversarial.enabled else 1.0
            total = total + alpha * losses["segmentation"]
        if "crops" in losses:
            total = total + c.crops.weight * losses["crops"]
        if self.critic is not None and labelled.any():
            losses["adversarial"] = adversarial_loss(
                self.critic, multiscale_l1, image[labelled], supervised, label[labelled]
            )
            total = total + c.adversarial.beta * losses["adversarial"]
        if c.semisup.enabled:
            losses["unsupervised"] = mumford_shah_loss(outputs, image, length_weight=c.semisup.length_weight)
            total = total + c.semisup.unsupervised_weight * losses["unsupervised"]
        if not total.requires_grad:
            return {}  # a batch with nothing to learn from (supervised loss only, no label in it)
        self.optimiser.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), c.optim.grad_clip)
        self.optimiser.step()
        record = {key: float(value.detach()) for key, value in losses.items()}
        record["loss"] = float(total.detach())
        if self.critic is not None and labelled.any():
            record["critic"] = self._critic_step(image[labelled], [o.detach() for o in supervised], label[labelled])
        return record

    def _critic_step(self, image: Tensor, outputs: list[Tensor], label: Tensor) -> float:
        """The critic maximises the multi-scale L1 (paper 001 Eq. 6); weights clamped (SegAN)."""
        assert self.critic is not None and self.critic_optimiser is not None
        self.critic.train()
        self.critic_optimiser.zero_grad(set_to_none=True)
        with _autocast(self.device):
            gap = adversarial_loss(self.critic, multiscale_l1, image, outputs, label)
        (-gap).backward()
        self.critic_optimiser.step()
        limit = self.config.adversarial.critic_clamp
        with torch.no_grad():
            for p in self.critic.parameters():
                p.clamp_(-limit, limit)
        return float(-gap.detach())


def _crop_batches(crops: CropDataset | None, config: TrainConfig, epoch: int, steps: int) -> Iterator[dict[str, Tensor]] | None:
    """``steps`` crop batches for one epoch, abnormal crops drawn at ``crops.abnormal_fraction``."""
    if crops is None:
        return None
    crops.set_epoch(epoch)
    generator = torch.Generator().manual_seed(config.optim.seed * 7_919 + epoch)
    sampler = WeightedRandomSampler(crop_sampler_weights(crops.crops, config.crops),
                                    num_samples=steps * config.crops.batch_size, replacement=True, generator=generator)
    return iter(DataLoader(crops, batch_size=config.crops.batch_size, sampler=sampler))


def _mean_records(records: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in records for k in r}
    return {k: float(np.mean([r[k] for r in records if k in r])) for k in sorted(keys)}


def _progress(enabled: bool):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), disable=not enabled,
    )


def run_training(
    config: TrainConfig,
    data: Path | Sequence[Path] | TrainingData,
    out: Path,
    *,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
) -> TrainResult:
    """Train ``config`` on the studies (and crops) under ``data`` — one folder, several folders of any
    format :func:`dicomnode.train.datasets.detect_format` knows, or data already loaded — and write everything
    listed above into ``out``."""
    started = time.perf_counter()
    if num_threads:
        torch.set_num_threads(num_threads)
    out.mkdir(parents=True, exist_ok=True)
    try:
        torch_device = resolve_device(device)
    except DeviceError as exc:
        raise TrainingError(str(exc)) from None
    seed_everything(config.optim.seed)

    if not isinstance(data, TrainingData):
        data = load_training_data([data] if isinstance(data, (str, Path)) else list(data))
    studies = data.studies
    if not studies:
        raise TrainingError("no whole-body studies to train on (crops alone cannot be split into patches)")
    split = split_patients(
        (s.patient_id for s in studies),
        seed=config.data.split_seed,
        fractions=(config.data.train_fraction, config.data.val_fraction, config.data.test_fraction),
    )
    train_studies, val_studies = split.select(studies, "train"), split.select(studies, "val")
    val_studies = [s for s in val_studies if s.labelled]
    kept: list[str] | None = None
    if config.semisup.enabled:
        train_studies, kept = semisupervised_labels(train_studies, config.semisup.labelled_fraction, config.data.split_seed)
    write_split(out / "split.json", split, kept)

    items = view_items(train_studies, include_unlabelled=config.semisup.enabled)
    dataset = PatchDataset(train_studies, items, config.preprocessing_config, config.data, config.augment,
                           config.optim.seed, hard_negative_weight=config.loss.hard_negative_weight)
    if config.data.workers:
        dataset.warm()
    trainer = Trainer(config, torch_device)
    fingerprint = config.model_dump(mode="json")
    history: list[dict[str, float]] = []
    best = {"epoch": -1, "dsc": -1.0}
    start_epoch = 0
    checkpoint_path = out / CHECKPOINT
    if resume:
        if not checkpoint_path.is_file():
            raise TrainingError(f"--resume: no {CHECKPOINT} in {out}")
        # Tensors and JSON-compatible values only (the preset as JSON, plain-float history): no pickled code.
        saved = torch.load(checkpoint_path, map_location=torch_device, weights_only=True)
        if saved["config"] != fingerprint:
            raise TrainingError(f"--resume: {checkpoint_path} was made with a different preset")
        trainer.load_state(saved["trainer"])
        history, best, start_epoch = saved["history"], saved["best"], saved["epoch"] + 1
        log.info("resuming %s at epoch %d of %d", config.name, start_epoch + 1, config.optim.epochs)
    log.info(
        "training %s (%s, width %s) on %s: %d training views from %d studies, %d validation studies",
        config.name, config.model.network, config.model.width, torch_device, len(items),
        len(train_studies), len(val_studies),
    )

    crop_data: CropDataset | None = None
    if data.crops and config.crops.weight:
        if trainer.net.in_channels != 1:
            raise TrainingError("image-level crops hold one view: train them with preprocessing aggregation 'none'")
        canvas = crop_canvas(data.crops, config.preprocessing_config, trainer.net)
        crop_data = CropDataset(data.crops, config.preprocessing_config, canvas, config.augment, config.optim.seed)
        log.info("with %d image-level crops (%d abnormal) on a %d×%d canvas", len(data.crops),
                 sum(c.abnormal for c in data.crops), *canvas)
    generator = torch.Generator().manual_seed(config.optim.seed)
    export = ModelWriter(config, out)
    with _progress(progress) as bar:
        for epoch in range(start_epoch, config.optim.epochs):
            epoch_started = time.perf_counter()
            dataset.set_epoch(epoch)
            generator.manual_seed(config.optim.seed * 1_000_003 + epoch)
            loader = DataLoader(dataset, batch_size=config.optim.batch_size, shuffle=True, generator=generator,
                                num_workers=config.data.workers)  # workers fork after set_epoch
            task = bar.add_task(f"epoch {epoch + 1}/{config.optim.epochs}", total=len(loader), status="")
            records = []
            crop_batches = _crop_batches(crop_data, config, epoch, len(loader))
            for batch in loader:
                record = trainer.step(batch, next(crop_batches) if crop_batches is not None else None)
                if record:
                    records.append(record)
                bar.update(task, advance=1, status=f"loss {record['loss']:.4f}" if record else "")
            summary = {"epoch": epoch + 1, **_mean_records(records), "lr": trainer.optimiser.param_groups[0]["lr"]}
            trainer.scheduler.step()
            last = export.save(trainer.net, "last")
            if val_studies:
                metrics = validate(last, val_studies, device=str(torch_device))
                summary.update({f"val_{k}": v for k, v in metrics.items()})
            summary["seconds"] = time.perf_counter() - epoch_started
            history.append(summary)
            bar.update(task, status=_status(summary))
            log.info("epoch %d/%d: %s", epoch + 1, config.optim.epochs, _status(summary))
            score = summary.get("val_dsc", float(epoch))  # no validation: the latest epoch is "best"
            if score > best["dsc"]:
                best = {"epoch": epoch + 1, "dsc": score}
                export.save(trainer.net, config.name)
            atomic_save(
                {"config": fingerprint, "trainer": trainer.state(), "epoch": epoch, "history": history, "best": best},
                checkpoint_path,
            )
            write_history_csv(history, out / "history.csv")
            plot_curves(history, out / "curves.png", f"{config.name}: {config.model.network} ({config.model.width})")

    if best["epoch"] < 1:
        raise TrainingError(f"{out}: no epoch finished, nothing to export")
    trainer.net.load_state_dict(load_file(out / f"{config.name}.safetensors"))
    info = training_info(config, split, studies, train_studies, val_studies, items, history, best["epoch"],
                          torch_device, data)
    best_record = history[best["epoch"] - 1]
    card = export.save(
        trainer.net, config.name, training=info,
        metrics={f"validation_{k.removeprefix('val_')}": v for k, v in best_record.items() if k.startswith("val_")},
    )
    export.remove("last")
    log.info("exported epoch %d to %s", best["epoch"], card)
    return TrainResult(
        weights=card.with_suffix(".safetensors"),
        card=card,
        history=history,
        best_epoch=int(best["epoch"]),
        wall_seconds=time.perf_counter() - started,
        device=str(torch_device),
    )


def _status(summary: dict[str, float]) -> str:
    parts = [f"loss {summary['loss']:.4f}"] if "loss" in summary else []
    parts += [f"{k.removeprefix('val_')} {summary[k]:.3f}" for k in ("val_dsc", "val_precision", "val_recall") if k in summary]
    return ", ".join(parts)
