"""Training patches: model-grid windows of each view with their label, drawn afresh every epoch.

Each view goes through :func:`dicomnode.segmentation.preprocess.prepare` (the image) and
:func:`dicomnode.segmentation.preprocess.prepare_label` (its stored-layout label), exactly as at inference, so
training sees the pixels the node will see. Then a ``patch_rows × patch_columns`` window is cut —
centred near a lesion pixel with probability ``lesion_patch_fraction`` (lesions cover well under 1 %
of a whole-body view; without this most patches hold none) — and augmented (:mod:`dicomnode.train.augment`).

Weak labels (:mod:`dicomnode.train.weak`) travel with the label as one code map (0 background, 1 lesion,
2 uncertain, 3 hard negative), so flips and affine warps (nearest neighbour) move them together;
each sample then carries a pixel weight: 1, 0 for uncertain pixels, ``hard_negative_weight`` for
hard negatives.

Randomness is a pure function of (seed, epoch, item), so a resumed run draws the same patches as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from dicomnode.segmentation.preprocess import Preprocessing, prepare, prepare_label
from dicomnode.segmentation.scan import View

from .augment import Augmenter
from .config import AugmentSection, DataSection
from .study import LabelledStudy
from .weak import HARD_NEGATIVE, UNCERTAIN

LESION_CODE, UNCERTAIN_CODE, HARD_NEGATIVE_CODE = 1, 2, 3


@dataclass(frozen=True)
class ViewItem:
    study: int  # index into the study list
    view: View
    labelled: bool


def view_items(studies: Sequence[LabelledStudy], *, include_unlabelled: bool) -> list[ViewItem]:
    """Every (study, view) to train on; unlabelled views only when ``include_unlabelled``."""
    items = []
    for index, study in enumerate(studies):
        for view in study.scan.views:
            labelled = view in study.labels
            if labelled or include_unlabelled:
                items.append(ViewItem(index, view, labelled))
    return items


def crop_origin(
    shape: tuple[int, int], patch: tuple[int, int], label: np.ndarray, prefer_lesion: bool, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left corner of a patch inside ``shape`` (negative when the view is smaller than the patch)."""
    lesion = np.argwhere(label) if prefer_lesion else np.empty((0, 2))
    origin = []
    for axis in range(2):
        span = shape[axis] - patch[axis]
        if span <= 0:
            origin.append(span // 2)
        elif len(lesion):
            centre = lesion[rng.integers(len(lesion))][axis] + rng.integers(-patch[axis] // 4, patch[axis] // 4 + 1)
            origin.append(int(np.clip(centre - patch[axis] // 2, 0, span)))
        else:
            origin.append(int(rng.integers(0, span + 1)))
    return origin[0], origin[1]


def cut(array: np.ndarray, origin: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """The patch at ``origin`` of the last two axes, zero-filled where it leaves the array."""
    out = np.zeros(array.shape[:-2] + patch, dtype=array.dtype)
    r0, c0 = origin
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + patch[0], array.shape[-2]), min(c0 + patch[1], array.shape[-1])
    out[..., rs - r0 : re - r0, cs - c0 : ce - c0] = array[..., rs:re, cs:ce]
    return out


class PatchDataset(Dataset):
    """``patches_per_view`` augmented patches of every training view, re-drawn each epoch."""

    def __init__(
        self,
        studies: Sequence[LabelledStudy],
        items: Sequence[ViewItem],
        preprocessing: Preprocessing,
        data: DataSection,
        augment: AugmentSection | None,
        seed: int,
        hard_negative_weight: float = 1.0,
    ) -> None:
        if not items:
            raise ValueError("no views to train on (no labelled views, and unlabelled ones not used)")
        self.studies = studies
        self.items = list(items)
        self.preprocessing = preprocessing
        self.data = data
        self.augment = augment
        self.seed = seed
        self.hard_negative_weight = hard_negative_weight
        self.epoch = 0
        self._labels: dict[tuple[int, View], np.ndarray] = {}
        self._images: dict[int, dict[View, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def warm(self) -> None:
        """Prepare every study's model-grid inputs and labels now, so that worker processes forked
        by a DataLoader share them instead of each preparing (and losing) its own."""
        for item in self.items:
            self.image(item.study, None)
            self.label(item)

    def __len__(self) -> int:
        return len(self.items) * self.data.patches_per_view

    def label(self, item: ViewItem) -> np.ndarray:
        """The model-grid label code map of a view (zeros for an unlabelled one), cached."""
        key = (item.study, item.view)
        if key not in self._labels:
            study = self.studies[item.study]
            image = study.scan.views[item.view]
            if item.labelled:
                code = prepare_label(image, study.labels[item.view], self.preprocessing)
                regions = study.regions.get(item.view)
                if regions is not None:
                    for region, value in ((UNCERTAIN, UNCERTAIN_CODE), (HARD_NEGATIVE, HARD_NEGATIVE_CODE)):
                        inside = prepare_label(image, (regions == region).astype(np.uint8), self.preprocessing)
                        code[(inside != 0) & (code == 0)] = value
                self._labels[key] = code
            else:
                shape = self.image(item.study, None)[item.view].shape[-2:]
                self._labels[key] = np.zeros(shape, np.uint8)
        return self._labels[key]

    def image(self, study_index: int, augmenter: Augmenter | None) -> dict[View, np.ndarray]:
        """Model-grid inputs of a study's views; count-augmented ones are not cached."""
        study = self.studies[study_index]
        scan = augmenter.scan(study.scan) if augmenter is not None else study.scan
        if scan is study.scan and study_index in self._images:
            return self._images[study_index]
        prepared = {view: pv.image for view, pv in prepare(scan, self.preprocessing).views.items()}
        if scan is study.scan:
            self._images[study_index] = prepared
        return prepared

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        item = self.items[index // self.data.patches_per_view]
        augmenter = Augmenter(self.augment, rng) if self.augment is not None else None
        image = self.image(item.study, augmenter)[item.view]
        label = self.label(item)
        if label.shape != image.shape[-2:]:
            raise ValueError(
                f"{self.studies[item.study].key} {item.view.value}: label grid {label.shape} "
                f"differs from image grid {image.shape[-2:]}"
            )
        patch = (self.data.patch_rows, self.data.patch_columns)
        prefer_lesion = bool(rng.random() < self.data.lesion_patch_fraction)
        # patches not drawn at a lesion go to a hard negative (a Normal box) half of the time,
        # where one exists: those are the hot spots a model must learn to leave alone
        target = label == LESION_CODE if prefer_lesion else label == HARD_NEGATIVE_CODE
        prefer = prefer_lesion or bool(rng.random() < 0.5)
        origin = crop_origin(label.shape, patch, target, prefer, rng)
        image, code = cut(image, origin, patch), cut(label, origin, patch)
        if augmenter is not None:
            image, code = augmenter.sample(image, code)
        weight = np.ones(code.shape, np.float32)
        weight[code == UNCERTAIN_CODE] = 0.0
        weight[code == HARD_NEGATIVE_CODE] = self.hard_negative_weight
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy((code == LESION_CODE)[None].astype(np.float32)),
            "weight": torch.from_numpy(weight[None]),
            "labelled": torch.tensor(item.labelled),
        }
