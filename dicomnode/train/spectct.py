"""Paper 003's evaluation: MT-UNet on SPECT, CT and SPECT/CT, 5-fold CV by patient, transfer learning.

    dicomnode train --data SIM --out runs/spectct \\
        --config config/train/spectct-spect.toml --config config/train/spectct-ct.toml \\
        --config config/train/spectct-spectct.toml --transfer spectct-spectct:spectct-spect \\
        [--folds 5] [--final spectct-spectct] [--max-seconds S] [--device auto]

Paper 003 (abstract): 93 patients, 184 lesions (94 benign, 90 metastatic); MT-UNet segments bone
lesions on SPECT, CT and SPECT/CT; training and validation sets by 5-fold cross-validation; transfer
learning "to further enhance the robustness" (SPECT/CT DSC 0.963 → 0.984); accuracy, sensitivity,
specificity, AUC, IoU and DSC. What we do, and what the abstract leaves open:

- **Data**: simulated hybrid exams (``dicomnode synth --spect-ct``) read from their DICOM files
  through :mod:`dicomnode.segmentation.volume` (SPECT onto the CT grid) and :mod:`dicomnode.segmentation.spectct`
  (inputs); the truth is ``truth.npz``'s CT-grid labels.
- **Folds**: patients dealt into ``--folds`` folds (:func:`dicomnode.train.split.kfold_patients`, stratified by
  whether the patient has a lesion); each fold's model trains on the other folds and is scored on
  its own. The table is mean ± std over folds.
- **Metrics** per class, one class against the rest (metastatic, benign, and "lesion" = either),
  voxel-wise over the voxels inside the body (CT > −500 HU; air would make accuracy and
  specificity meaningless), pooled over a fold's exams: DSC, IoU, accuracy, sensitivity,
  specificity (:class:`dicomnode.segmentation.metrics.PixelCounts`, predicted class = argmax) and AUC of the
  class probability (:func:`dicomnode.train.boxscore.roc_auc`, on a seeded uniform sample of at most 200 000
  body voxels per fold, which keeps the ranking affordable). A fold without truth voxels of a class
  has no DSC, IoU, sensitivity or AUC for it (NaN, left out of the mean; ``n`` counts the folds).
- **Transfer learning** (``--transfer TARGET:SOURCE``): the abstract does not say from what; as the
  issue reads it, TARGET's fold-k model starts from SOURCE's fold-k model (SPECT-only → SPECT/CT):
  every weight is copied, the first convolution's SPECT channel from SOURCE's single channel and its
  CT channel left at its initialisation; then TARGET trains as usual.
- **Training** (one small loop here, not :mod:`dicomnode.train.loop`, which is built around planar views,
  patches, critics and the planar model card): axial slices containing body, drawn with
  probability weighted ``lesion_slice_weight`` : 1 towards slices holding a lesion, random left–right
  flips, AdamW with a cosine schedule (over steps, or over ``max_seconds`` when that comes first), loss :func:`dicomnode.train.losses.multiclass_segmentation_loss`, bf16
  autocast on CUDA. ``max_seconds`` caps a run's wall time (recorded in the table when it binds).
- ``--final NAME``: the preset (with its transfer) trained on all exams and written as
  ``OUT/final/<NAME>.safetensors`` + its model card ``.json``, task ``spectct-classes``
  (:func:`dicomnode.segmentation.modelcard.save_model`; ``[model.spectct]`` or ``[model.spect_only]``
  of ``node.toml`` can name it).

Writes ``OUT/crossval.json`` (per fold and summary) and ``OUT/crossval.md`` (the table).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from dicomnode.segmentation.device import resolve_device
from dicomnode.segmentation.metrics import PixelCounts, pixel_counts
from dicomnode.segmentation.modelcard import SPECTCT_CLASSES, save_model
from dicomnode.segmentation.networks import SegmentationNetwork, build
from dicomnode.segmentation.networks.mtunet import CLASSES
from dicomnode.segmentation.spectct import BODY_HU, predict_volume, stack_inputs
from dicomnode.segmentation.tiling import pad_batch_to_multiple
from dicomnode.segmentation.volume import ct_volume, nm_volume, resample, resample_labels, scaled

from .boxscore import roc_auc
from .config import VolumePreset
from .losses import multiclass_segmentation_loss
from .split import kfold_patients

log = logging.getLogger(__name__)

AUC_SAMPLE = 200_000
METRICS = ("dsc", "iou", "accuracy", "sensitivity", "specificity", "auc")
GROUPS = ("metastatic", "benign", "lesion")


# ---------------------------------------------------------------- presets

# ---------------------------------------------------------------- data

@dataclass
class Exam:
    """One hybrid exam on its (possibly coarsened) CT grid."""

    patient_id: str
    folder: str
    hu: np.ndarray
    spect: np.ndarray
    labels: np.ndarray

    @property
    def body_slices(self) -> np.ndarray:
        return np.flatnonzero((self.hu > BODY_HU).any(axis=(1, 2)))


def load_exam(folder: Path, in_plane_mm: float | None = None) -> Exam:
    """Read a simulated exam folder: CT series + NM RECON TOMO + truth.npz, all onto the CT grid."""
    folder = Path(folder)
    cts = [pydicom.dcmread(p) for p in sorted((folder / "ct").glob("*.dcm"))]
    hu, ct_geo, _ = ct_volume(cts)
    counts, spect_geo = nm_volume(pydicom.dcmread(folder / "spect.dcm"))
    labels = np.load(folder / "truth.npz")["labels_ct"]
    if labels.shape != hu.shape:
        raise ValueError(f"{folder.name}: truth {labels.shape} does not match the CT {hu.shape}")
    grid = ct_geo
    if in_plane_mm is not None and not math.isclose(in_plane_mm, ct_geo.pixel_spacing[1], rel_tol=0.01):
        grid = scaled(ct_geo, in_plane_mm / ct_geo.pixel_spacing[1])
        labels = resample_labels(labels, ct_geo, grid, len(CLASSES))
        hu = resample(hu, ct_geo, grid, fill=-1000.0)
    spect = resample(counts, spect_geo, grid)
    return Exam(str(cts[0].PatientID), folder.name, hu, spect, labels)


def _load(args: tuple[Path, float | None]) -> Exam:
    return load_exam(*args)


def load_exams(root: Path, in_plane_mm: float | None = None, workers: int = 1) -> list[Exam]:
    """Every exam listed in ``root/manifest.json``."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    jobs = [(Path(root) / entry["folder"], in_plane_mm) for entry in manifest["exams"]]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(_load, jobs))
    return [_load(job) for job in jobs]


# ---------------------------------------------------------------- training

def transfer_weights(source: dict[str, torch.Tensor], net: SegmentationNetwork) -> list[str]:
    """Copy ``source`` into ``net``; a tensor differing only in its input-channel axis (the first
    convolution) is copied into the leading channels. Returns the keys copied partially."""
    state = net.state_dict()
    partial = []
    for key, value in source.items():
        if key not in state:
            raise ValueError(f"transfer source has {key!r}, which the target network lacks")
        target = state[key]
        if target.shape == value.shape:
            target.copy_(value)
        elif target.dim() == value.dim() >= 2 and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:]:
            n = min(target.shape[1], value.shape[1])
            target[:, :n].copy_(value[:, :n])
            partial.append(key)
        else:
            raise ValueError(f"cannot transfer {key!r}: {tuple(value.shape)} → {tuple(target.shape)}")
    net.load_state_dict(state)
    return partial


@dataclass
class Trained:
    net: SegmentationNetwork
    info: dict[str, Any] = field(default_factory=dict)


def _slices(exams: Sequence[Exam], preset: VolumePreset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, weights = [], [], []
    for exam in exams:
        keep = exam.body_slices
        inputs = stack_inputs(preset.channels, exam.spect, exam.hu)[:, keep]
        labels = exam.labels[keep]
        xs.append(torch.from_numpy(inputs.transpose(1, 0, 2, 3).copy()))
        ys.append(torch.from_numpy(labels.astype(np.int64)))
        weights.append(torch.where(torch.from_numpy((labels > 0).any(axis=(1, 2))), preset.lesion_slice_weight, 1.0))
    return torch.cat(xs).to(device), torch.cat(ys).to(device), torch.cat(weights).to(device)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress_fraction(step: int, total: int, start: float, max_seconds: float | None) -> float:
    """How far the run is, 0 → 1: by steps, or by wall time when a time cap comes first (so the
    cosine schedule ends at the cap, not at steps never reached)."""
    done = step / total
    if max_seconds is not None:
        done = max(done, (time.monotonic() - start) / max_seconds)
    return min(done, 1.0)


def train_model(preset: VolumePreset, exams: Sequence[Exam], device: torch.device, *,
                init: dict[str, torch.Tensor] | None = None, seed: int | None = None) -> Trained:
    """Train ``preset``'s network on ``exams`` (from ``init`` when given); see the module docstring."""
    _seed(preset.seed if seed is None else seed)
    net = build(preset.network, in_channels=len(preset.channels), width=preset.width).to(device)
    partial: list[str] = []
    if init is not None:
        partial = transfer_weights(init, net)
    x, y, weights = _slices(exams, preset, device)
    if init is None:  # start from the class frequencies (Lin et al. 2017 §4.1, per class)
        freq = torch.bincount(y.flatten(), minlength=len(CLASSES)).float().clamp_min(1)
        with torch.no_grad():
            net.head.bias.copy_(torch.log(freq / freq.sum()))
    x, y = pad_batch_to_multiple(x, net.size_divisor), pad_batch_to_multiple(y, net.size_divisor)
    steps_per_epoch = max(1, math.ceil(len(x) / preset.batch_size))
    total = preset.epochs * steps_per_epoch
    optimiser = torch.optim.AdamW(net.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    class_weight = torch.tensor(preset.class_weights, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    generator = torch.Generator(device=device).manual_seed(preset.seed if seed is None else seed)
    net.train()
    start, losses, step, capped = time.monotonic(), [], 0, False
    for epoch in range(preset.epochs):
        epoch_losses = []
        for _ in range(steps_per_epoch):
            idx = torch.multinomial(weights, preset.batch_size, replacement=True, generator=generator)
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), device=device, generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yb = torch.where(flip[:, None, None], yb.flip(-1), yb)
            with amp:
                logits = net(xb)[0]
            loss = multiclass_segmentation_loss(logits, yb, ce_weight=preset.ce_weight, dice_weight=preset.dice_weight,
                                                class_weight=class_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            for group in optimiser.param_groups:
                group["lr"] = preset.lr * 0.5 * (1 + math.cos(math.pi * _progress_fraction(step, total, start, preset.max_seconds)))
            epoch_losses.append(loss.item())
            if preset.max_seconds is not None and time.monotonic() - start > preset.max_seconds:
                capped = True
                break
        losses.append(float(np.mean(epoch_losses)))
        if capped:
            break
    net.eval()
    return Trained(net, {"epochs_run": len(losses), "steps": step, "planned_steps": total, "capped_by_time": capped,
                         "seconds": round(time.monotonic() - start, 1), "loss_first_epoch": round(losses[0], 4),
                         "loss_last_epoch": round(losses[-1], 4), "slices": len(x), "transfer_partial": partial})


# ---------------------------------------------------------------- evaluation

def score(exams: Sequence[Exam], probabilities: Sequence[np.ndarray], seed: int = 0) -> dict[str, dict[str, float]]:
    """Per group (metastatic, benign, lesion) the metrics of the module docstring, pooled over exams."""
    counts = {g: PixelCounts(0, 0, 0) for g in GROUPS}
    scores: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    truths: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    for exam, prob in zip(exams, probabilities):
        body = exam.hu > BODY_HU
        predicted = prob.argmax(axis=0)
        for g in GROUPS:
            if g == "lesion":
                truth, pred, p = exam.labels > 0, predicted > 0, prob[1:].sum(axis=0)
            else:
                k = CLASSES.index(g)
                truth, pred, p = exam.labels == k, predicted == k, prob[k]
            counts[g] = counts[g] + pixel_counts(truth[body], pred[body])
            scores[g].append(p[body])
            truths[g].append(truth[body])
    rng = np.random.default_rng(seed)
    out = {}
    for g in GROUPS:
        s, t = np.concatenate(scores[g]), np.concatenate(truths[g])
        if len(s) > AUC_SAMPLE:
            pick = rng.choice(len(s), AUC_SAMPLE, replace=False)
            s, t = s[pick], t[pick]
        c = counts[g]
        present = c.tp + c.fn > 0  # without truth of the class, DSC, IoU and sensitivity say nothing
        out[g] = {"dsc": c.dsc if present else float("nan"), "iou": c.iou if present else float("nan"),
                  "accuracy": c.accuracy, "sensitivity": c.recall if present else float("nan"),
                  "specificity": c.specificity, "auc": roc_auc(s, t), "truth_voxels": c.tp + c.fn,
                  "predicted_voxels": c.tp + c.fp}
    return out


def summarise_folds(folds: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean ± sample std over folds of every metric (NaN folds, e.g. AUC without a class, left out)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for g in GROUPS:
        out[g] = {}
        for m in METRICS:
            values = np.array([f[g][m] for f in folds], float)
            values = values[np.isfinite(values)]
            out[g][m] = {"mean": float(values.mean()) if len(values) else float("nan"),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": int(len(values))}
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The cross-validated table: one row per variant and group, mean ± std over folds."""
    lines = ["| model | class | " + " | ".join(m.upper() if m in ("dsc", "iou", "auc") else m for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for variant, result in summary["variants"].items():
        for g in GROUPS:
            cells = [f"{result['summary'][g][m]['mean']:.3f} ± {result['summary'][g][m]['std']:.3f}" for m in METRICS]
            lines.append(f"| {variant} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the study

def crossvalidate(exams: Sequence[Exam], preset: VolumePreset, folds: Sequence[frozenset[str]], device: torch.device, *,
                  sources: dict[int, dict[str, torch.Tensor]] | None = None) -> tuple[list[dict], dict[int, dict[str, torch.Tensor]]]:
    """Train and score one preset over the folds; return per-fold records and each fold's weights."""
    records, states = [], {}
    for k, held_out in enumerate(folds):
        train = [e for e in exams if e.patient_id not in held_out]
        test = [e for e in exams if e.patient_id in held_out]
        trained = train_model(preset, train, device, init=None if sources is None else sources[k], seed=preset.seed + k)
        probs = [predict_volume(trained.net, stack_inputs(preset.channels, e.spect, e.hu), device=device) for e in test]
        result = score(test, probs, seed=k)
        records.append({"fold": k, "held_out": sorted(held_out), "train_exams": len(train), "test_exams": len(test),
                        "training": trained.info, "scores": result})
        states[k] = {key: v.detach().clone() for key, v in trained.net.state_dict().items()}
        log.info("%s fold %d: lesion DSC %.3f (%s)", preset.name, k, result["lesion"]["dsc"], trained.info)
    return records, states


def run_study(data: Path, out: Path, presets: Sequence[VolumePreset], *, transfer: Sequence[str] = (),
              folds: int = 5, seed: int = 42, final: str | None = None, device: str = "auto",
              workers: int = 1) -> dict[str, Any]:
    """Cross-validate each preset by patient on the exams of ``data`` (``transfer``: TARGET:SOURCE,
    a target trained from the source's fold weights); with ``final``, train that preset on every exam
    and write its model card to ``out`` (module docstring). ``dicomnode train`` runs this."""
    resolved = resolve_device(device)
    by_name = {p.name: p for p in presets}
    if any(":" not in t for t in transfer):
        raise ValueError(f"--transfer takes TARGET:SOURCE, got {list(transfer)}")
    transfers = dict(t.split(":", 1) for t in transfer)
    for target, source in transfers.items():
        if target not in by_name or source not in by_name:
            raise ValueError(f"--transfer {target}:{source}: both must be presets given with --config")
    grids = {p.in_plane_mm for p in presets}
    if len(grids) != 1:
        raise ValueError("all presets must share in_plane_mm (one grid, one data load)")
    started = time.monotonic()
    exams = load_exams(Path(data), grids.pop(), workers=workers)
    loaded = time.monotonic() - started
    patients = sorted({e.patient_id for e in exams})
    positive = {e.patient_id for e in exams if (e.labels > 0).any()}
    split = kfold_patients(patients, folds, seed=seed, positive=positive)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Any] = {}
    states: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for preset in presets:
        records, states[preset.name] = crossvalidate(exams, preset, split, resolved)
        variants[preset.name] = {"preset": preset.as_dict(), "folds": records, "summary": summarise_folds([r["scores"] for r in records])}
        _progress(out, variants)
    for target, source in transfers.items():
        name = f"{target} (transfer from {source})"
        records, _ = crossvalidate(exams, by_name[target], split, resolved, sources=states[source])
        variants[name] = {"preset": by_name[target].as_dict(), "transfer_from": source, "folds": records,
                          "summary": summarise_folds([r["scores"] for r in records])}
        _progress(out, variants)
    result: dict[str, Any] = {
        "data": str(data), "exams": len(exams), "patients": len(patients), "folds": folds,
        "device": _device_name(resolved), "torch": torch.__version__, "python": platform.python_version(),
        "load_seconds": round(loaded, 1), "variants": variants,
    }
    if final:
        result["final"] = _final(final, by_name, transfers, exams, resolved, out, result)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    (out / "crossval.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "crossval.md").write_text(markdown(result))
    return result


def _progress(out: Path, variants: dict[str, Any]) -> None:
    """What is done so far (``crossval.partial.json``), so a run stopped by a time limit still reports."""
    (out / "crossval.partial.json").write_text(json.dumps({"variants": variants}, indent=1, default=float))
    (out / "crossval.partial.md").write_text(markdown({"variants": variants}))


def _final(name: str, by_name: dict[str, VolumePreset], transfers: dict[str, str], exams: Sequence[Exam],
           device: torch.device, out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Train ``name`` (after its transfer source, if any) on every exam and write it with its card."""
    if name not in by_name:
        raise ValueError(f"--final {name}: not a preset given with --config")
    init, source_info = None, None
    if name in transfers:
        source = train_model(by_name[transfers[name]], exams, device)
        init, source_info = source.net.state_dict(), source.info
    preset = by_name[name]
    trained = train_model(preset, exams, device, init=init)
    variant = f"{name} (transfer from {transfers[name]})" if name in transfers else name
    card_name = f"{name}-{preset.network}-{preset.width}"
    (out / "final").mkdir(exist_ok=True)
    card = save_model(
        trained.net, out / "final" / card_name, name=card_name, version=time.strftime("%Y%m%d"),
        network=preset.network, task=SPECTCT_CLASSES, channels=preset.channels, classes=CLASSES,
        in_plane_mm=preset.in_plane_mm,
        training={"preset": preset.as_dict(), "transfer_from": transfers.get(name), "exams": len(exams),
                  "data": "dicomnode synth --spect-ct (simulated)", "device": result["device"],
                  "torch": result["torch"], "run": trained.info, "source_run": source_info},
        metrics={"crossval": variant, "folds": result["folds"], "summary": result["variants"][variant]["summary"]},
    )
    return {"card": f"final/{card_name}.json", "weights": f"final/{card.weights}", "run": trained.info}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"
