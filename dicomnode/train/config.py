"""The training preset: one TOML file per recipe (``config/train/<preset>.toml``), validated here.

:func:`load_preset` is the one reader for every task: the preset's ``task`` key names the model card
task it trains (docs/segmentation.md, "Model cards"; planar lesions when absent) and with it the
schema: :class:`TrainConfig` (planar lesions, below), :class:`AnatomyPreset` (the anatomy map,
:mod:`dicomnode.train.anatomy`), :class:`VolumePreset` (SPECT/CT classes, :mod:`dicomnode.train.spectct`).
``dicomnode train`` runs the task's trainer.

For planar lesions, every key has a default taken from the paper the recipe reproduces, so a preset only states what
differs. Unknown keys are errors (a typo must not silently fall back to a default). The sections:

- ``[model]``: which network of :mod:`dicomnode.segmentation.networks`, how wide, and the initial lesion
  probability of its output heads (prior initialisation, Lin et al. 2017).
- ``[preprocessing]``: the keys of :class:`dicomnode.segmentation.preprocess.Preprocessing` (stored in the
  model card, so inference sees the pixels training saw); its aggregation sets the input channels;
  ``window = "whole-view"`` means no windows (whole views, fully convolutional networks).
- ``[data]``: the patient-level split (paper 001 "Dataset": anterior and posterior of one patient in
  the same subset; 70/15/15 by default), the training patch, how often it is centred on a lesion,
  and DataLoader worker processes.
- ``[augment]``: flips, small affine, binomial count thinning, intensity (see :mod:`dicomnode.train.augment`).
- ``[optim]``: optimiser and schedule; paper 002 Table 4: Adam, lr 1e-4, batch 16.
- ``[loss]``: Dice (+BCE) averaged over deep-supervision outputs (paper 001 Eq. 4); batch Dice.
- ``[adversarial]``: MSA-Net's SegAN critic and the weights α (segmentation) and β (adversarial) of
  paper 001 Eq. 3; critic recipe from SegAN (Xue et al. 2018): Adam β1 0.5, weights clamped ±0.05.
- ``[semisup]``: paper 004's regime: supervised loss on a labelled fraction (default 37 %), the
  Mumford–Shah/Chan–Vese loss (Kim & Ye 2019) on every training study.
- ``[crops]``: image-level crops (BS-80K chest crops), their loss weight, batch, how often an
  abnormal one is drawn and the top-k pooling of the multiple-instance loss (:mod:`dicomnode.train.crops`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicomnode.segmentation.modelcard import ANATOMY_MAP, PLANAR_LESIONS, SPECTCT_CLASSES
from dicomnode.segmentation.preprocess import Preprocessing


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSection(_Section):
    network: str = "unet"
    width: Literal["paper", "slim"] | int = "slim"
    # weights to start from (a .safetensors with its card), e.g. a simulator-pretrained model;
    # "" = random initialisation. See dicomnode.train.pretrained for how a differing input layer is adapted.
    init: str = ""
    # initial lesion probability of the output heads (prior initialisation of the logit bias,
    # Lin et al., ICCV 2017 §4.1): lesions are rare, and a head that starts at p = 0.5 spends
    # its first thousand steps only learning "background"; 0 leaves the network's own init
    output_prior: float = Field(0.01, ge=0, lt=1)

    @field_validator("width")
    @classmethod
    def _positive_width(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError("width must be 'paper', 'slim' or a positive int")
        return value


class DataSection(_Section):
    train_fraction: float = Field(0.70, gt=0, le=1)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = 42  # paper 001 "Experimental setup": random seed 42
    patch_rows: int = Field(256, ge=16)  # 256×256 windows: paper 002 "Step 3", paper 001 crop size
    patch_columns: int = Field(256, ge=16)
    lesion_patch_fraction: float = Field(0.6, ge=0, le=1)
    patches_per_view: int = Field(2, ge=1)  # patches drawn from each view per epoch
    workers: int = Field(0, ge=0)  # DataLoader worker processes (0: prepare patches in the main process)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "DataSection":
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test fractions must sum to 1, got {total:g}")
        return self


class CropsSection(_Section):
    """Image-level crops (BS-80K chest crops) trained by multiple-instance learning (dicomnode.train.crops)."""

    weight: float = Field(0.5, ge=0)  # weight of the crop loss beside the pixel loss
    batch_size: int = Field(8, ge=1)  # crops per optimisation step
    abnormal_fraction: float = Field(0.5, ge=0, le=1)  # share of abnormal crops drawn (they are ~6 %)
    top_k: int = Field(4, ge=1)  # lesion evidence of a crop: mean of its k highest logits


class AugmentSection(_Section):
    flip_lr: float = Field(0.5, ge=0, le=1)
    affine: float = Field(0.5, ge=0, le=1)  # probability of a small affine
    rotate_degrees: float = Field(5.0, ge=0, le=45)
    scale: float = Field(0.05, ge=0, le=0.5)
    translate_pixels: float = Field(8.0, ge=0)
    thinning: float = Field(0.5, ge=0, le=1)  # probability of binomial count thinning
    thinning_min_keep: float = Field(0.4, gt=0, le=1)  # keep fraction drawn from [min, 1]
    intensity: float = Field(0.5, ge=0, le=1)  # probability of a gain/gamma change
    gain: float = Field(0.15, ge=0, lt=1)
    gamma: float = Field(0.15, ge=0, lt=1)
    quantise: float = Field(0.0, ge=0, le=1)  # probability of an 8-bit export (dicomnode.train.augment.quantise_scan)
    quantise_reference: tuple[float, float] = (25.0, 60.0)  # drawn 8-bit level of the body reference

    @field_validator("quantise_reference")
    @classmethod
    def _ordered_levels(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] < 255:
            raise ValueError("quantise_reference must be two levels 0 < low ≤ high < 255")
        return value


class OptimSection(_Section):
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(200, ge=1)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    seed: int = 42
    grad_clip: float = Field(5.0, gt=0)


class LossSection(_Section):
    dice: float = Field(1.0, ge=0)
    bce: float = Field(1.0, ge=0)
    positive_weight: float = Field(1.0, gt=0)  # BCE weight of lesion pixels (they are rare)
    hard_negative_weight: float = Field(3.0, ge=0)  # BCE weight of Normal-box pixels (dicomnode.train.weak)
    batch_dice: bool = True  # Dice over the batch, not per patch (see dicomnode.train.losses.soft_dice_loss)

    @model_validator(mode="after")
    def _some_supervision(self) -> "LossSection":
        if self.dice == 0 and self.bce == 0:
            raise ValueError("loss.dice and loss.bce cannot both be 0")
        return self


class AdversarialSection(_Section):
    enabled: bool = False
    alpha: float = Field(1.0, ge=0)  # weight of the segmentation loss, paper 001 Eq. 3
    beta: float = Field(1.0, ge=0)  # weight of the adversarial loss; SegAN weighs both 1
    critic_lr: float = Field(1e-4, gt=0)
    critic_beta1: float = Field(0.5, ge=0, lt=1)  # SegAN train.py: Adam β1 = 0.5
    critic_clamp: float = Field(0.05, gt=0)  # SegAN: critic weights clamped to ±0.05


class SemisupSection(_Section):
    enabled: bool = False
    labelled_fraction: float = Field(0.37, gt=0, le=1)  # paper 004 §3.4: 37 % labelled
    unsupervised_weight: float = Field(0.4, ge=0)  # paper 004 Eq. 6 constant α = 0.4
    length_weight: float = Field(0.001, ge=0)  # Kim & Ye code: TV term × 0.001


WHOLE_VIEW = "whole-view"


def _preprocessing(raw: dict[str, Any]) -> Preprocessing:
    """TOML has no null: ``window = "whole-view"`` stands for ``window = None`` (whole-view inference
    of a fully convolutional network, :mod:`dicomnode.segmentation.inference`)."""
    if raw.get("window") == WHOLE_VIEW:
        raw = {**raw, "window": None}
    return Preprocessing.from_dict(raw)


class TrainConfig(_Section):
    """A whole preset. ``name`` names the exported weights and the model card."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    model: NetworkSection = NetworkSection()
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    data: DataSection = DataSection()
    augment: AugmentSection = AugmentSection()
    optim: OptimSection = OptimSection()
    loss: LossSection = LossSection()
    adversarial: AdversarialSection = AdversarialSection()
    semisup: SemisupSection = SemisupSection()
    crops: CropsSection = CropsSection()

    @field_validator("preprocessing")
    @classmethod
    def _known_preprocessing(cls, value: dict[str, Any]) -> dict[str, Any]:
        _preprocessing(value)  # unknown keys and bad values raise ValueError
        return value

    @property
    def preprocessing_config(self) -> Preprocessing:
        return _preprocessing(self.preprocessing)

    @model_validator(mode="after")
    def _one_regime(self) -> "TrainConfig":
        if self.adversarial.enabled and self.semisup.enabled:
            raise ValueError("adversarial and semisup training cannot both be enabled in one preset")
        return self

    @property
    def task(self) -> str:
        """The model card task a planar preset trains (module docstring)."""
        return PLANAR_LESIONS


class PresetError(ValueError):
    """A preset that cannot be read or does not validate; the message names the file and the keys."""


@dataclass(frozen=True)
class AnatomyPreset:
    """``config/train/anatomy*.toml`` (task ``anatomy-map``): flat keys, every one optional."""

    name: str = "anatomy"
    description: str = "Slim U-Net anatomy map on a 4.8 mm grid, trained on simulated studies"
    network: str = "anatomy"
    width: str | int = "slim"
    studies: int = 300
    validation_studies: int = 20
    seed: int = 2500
    epochs: int = 12
    batch_size: int = 8
    lr: float = 2e-3
    threads: int = 2
    weight_power: float = 0.5  # class weight = (1 / label frequency) ** weight_power
    init: str = ""  # weights to start from (a fine-tune of a saved map), "" = random initialisation
    variant_every: int = 0  # every n-th pool study carries a normal variant (hot kidneys, ...); 0 = none

    @property
    def task(self) -> str:
        return ANATOMY_MAP


@dataclass(frozen=True)
class VolumePreset:
    """``config/train/spectct-*.toml``, ``spect-only.toml`` (task ``spectct-classes``, paper 003):
    ``name`` and sections model, data, optim, loss, read flat."""

    name: str
    channels: tuple[str, ...]
    network: str = "mtunet"
    width: str | int = "slim"
    in_plane_mm: float | None = None
    lesion_slice_weight: float = 4.0
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_seconds: float | None = None
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    class_weights: tuple[float, ...] = (1.0, 2.0, 2.0)
    seed: int = 42

    @property
    def task(self) -> str:
        return SPECTCT_CLASSES

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


Preset = TrainConfig | AnatomyPreset | VolumePreset


def load_preset(path: Path | str, **overrides: object) -> Preset:
    """Read and validate a preset of any task (module docstring). ``overrides`` are dotted keys of a
    planar preset (``optim.epochs=2``), or field names of the other tasks' presets (``epochs=2``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PresetError(f"preset {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"preset {path} is not valid TOML: {exc}") from None
    task = raw.pop("task", PLANAR_LESIONS)
    readers = {PLANAR_LESIONS: _planar, ANATOMY_MAP: _anatomy, SPECTCT_CLASSES: _volume}
    if task not in readers:
        raise PresetError(f"preset {path}: task {task!r} is not one of {sorted(readers)}")
    return readers[task](raw, path, overrides)


def load_config(path: Path | str, **overrides: object) -> TrainConfig:
    """A planar-lesion preset (:func:`load_preset`), refused when the file trains another task."""
    preset = load_preset(path, **overrides)
    if not isinstance(preset, TrainConfig):
        raise PresetError(f"preset {path} trains task {preset.task!r}, not {PLANAR_LESIONS!r}")
    return preset


def _planar(raw: dict[str, Any], path: Path, overrides: dict[str, object]) -> TrainConfig:
    raw.setdefault("name", path.stem)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if key:
            raw.setdefault(section, {})[key] = value
        else:
            raw[section] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise PresetError(f"preset {path} is invalid: {problems}") from None


def _flat(preset_type: type, flat: dict[str, Any], path: Path, overrides: dict[str, object]) -> Any:
    known = {f.name for f in fields(preset_type)}
    unknown = sorted((set(flat) | set(overrides)) - known)
    if unknown:
        raise PresetError(f"preset {path}: unknown key(s) {unknown}")
    try:
        return preset_type(**{**flat, **overrides})
    except TypeError as exc:
        raise PresetError(f"preset {path}: {exc}") from None


def _anatomy(raw: dict[str, Any], path: Path, overrides: dict[str, object]) -> AnatomyPreset:
    return _flat(AnatomyPreset, raw, path, overrides)


def _volume(raw: dict[str, Any], path: Path, overrides: dict[str, object]) -> VolumePreset:
    sections = {"model", "data", "optim", "loss"}
    if set(raw) - sections - {"name"}:
        raise PresetError(f"preset {path}: unknown key(s) {sorted(set(raw) - sections - {'name'})}")
    flat: dict[str, Any] = {"name": raw.get("name", path.stem)}
    for section in sorted(sections):
        flat.update(raw.get(section, {}))
    for key in ("channels", "class_weights"):
        if key in flat:
            flat[key] = tuple(flat[key])
    for key in ("in_plane_mm", "max_seconds"):  # 0 in TOML: none
        if flat.get(key) == 0:
            flat[key] = None
    preset = _flat(VolumePreset, flat, path, overrides)
    if len(preset.class_weights) != 3:  # background, metastatic, benign (paper 003)
        raise PresetError(f"preset {path}: class_weights needs 3 values (background, metastatic, benign)")
    return preset
