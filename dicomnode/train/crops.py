"""Image-level crops as network input: preparation, the training sample, and the crop's score.

A crop (:class:`dicomnode.train.bs80k.Crop`) is one view's region at the whole-body scans' native spacing.
It is prepared like a view (:mod:`dicomnode.segmentation.preprocess`): resampled area-weighted to the model
spacing, then divided by a reference level. A crop holds no whole body, so its own body percentile
is not the whole-body reference ``R``: over the right hemithorax (the crops' field of view), the
95th percentile of counts is :data:`CHEST_TO_BODY_REFERENCE` × ``R`` (median over the 35
development whole-body anterior views of BS-80K, measured by ``benchmarks/real_scans.py``), so a
crop's reference is its own 95th percentile divided by that ratio. The network sees crops on the
same scale as whole views (normal bone ≈ 1).

Crops are batched on a fixed zero-padded canvas (the network's window, or the largest crop rounded
up to its size divisor) with a ``valid`` mask of the crop's own pixels; a crop's **score** is the
highest lesion probability inside it (:func:`crop_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dicomnode.segmentation.networks import SegmentationNetwork
from dicomnode.segmentation.preprocess import Preprocessing, body_mask, reference_level
from dicomnode.segmentation.resample import model_shape, resample_counts
from dicomnode.segmentation.tiling import padded_to_multiple

from .augment import Augmenter
from .bs80k import BS80K_SPACING_MM, Crop
from .config import AugmentSection, CropsSection

CHEST_TO_BODY_REFERENCE = 1.27


def prepare_crop(crop: Crop, cfg: Preprocessing) -> np.ndarray:
    """A crop → (1, H, W) float32 on the model grid, normalised to the whole-body scale."""
    counts = resample_counts(crop.image, (BS80K_SPACING_MM, BS80K_SPACING_MM), cfg.spacing_mm)
    reference = reference_level(counts, body_mask(counts), cfg.percentile) / CHEST_TO_BODY_REFERENCE
    return (counts / np.float32(max(reference, 1e-6))).astype(np.float32)[None]


def crop_canvas(crops: Sequence[Crop], cfg: Preprocessing, net: SegmentationNetwork) -> tuple[int, int]:
    """The padded input size every crop fits in: the network's window, or the largest model-grid
    crop rounded up to the network's size divisor."""
    if net.window is not None:
        return net.window, net.window
    shapes = [model_shape(c.image.shape, (BS80K_SPACING_MM,) * 2, cfg.spacing_mm) for c in crops]
    largest = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    return padded_to_multiple(largest, net.size_divisor)


def on_canvas(image: np.ndarray, canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) centred on a zero canvas (cropped centrally if larger), and its valid mask."""
    channels, h, w = image.shape
    out = np.zeros((channels, *canvas), np.float32)
    valid = np.zeros(canvas, np.float32)
    top, left = (canvas[0] - h) // 2, (canvas[1] - w) // 2
    src_r, src_c = max(-top, 0), max(-left, 0)
    dst_r, dst_c = max(top, 0), max(left, 0)
    n_r, n_c = min(h - src_r, canvas[0] - dst_r), min(w - src_c, canvas[1] - dst_c)
    out[:, dst_r : dst_r + n_r, dst_c : dst_c + n_c] = image[:, src_r : src_r + n_r, src_c : src_c + n_c]
    valid[dst_r : dst_r + n_r, dst_c : dst_c + n_c] = 1.0
    return out, valid


class CropDataset(Dataset):
    """Prepared, augmented crops on one canvas; index ``i`` of epoch ``e`` is the same sample on resume."""

    def __init__(self, crops: Sequence[Crop], cfg: Preprocessing, canvas: tuple[int, int],
                 augment: AugmentSection | None, seed: int) -> None:
        if not crops:
            raise ValueError("no crops to train on")
        self.crops = list(crops)
        self.prepared = [prepare_crop(c, cfg) for c in self.crops]
        self.canvas = canvas
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, valid = on_canvas(self.prepared[index], self.canvas)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index, 7])
            image, valid = Augmenter(self.augment, rng).sample(image, valid)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32)[None]),
            "abnormal": torch.tensor(float(self.crops[index].abnormal)),
        }


def crop_sampler_weights(crops: Sequence[Crop], config: CropsSection) -> torch.Tensor:
    """Per-crop draw weights so that abnormal crops make ``abnormal_fraction`` of the draws."""
    abnormal = np.array([c.abnormal for c in crops])
    weights = np.ones(len(crops))
    if abnormal.any() and (~abnormal).any():
        weights[abnormal] = config.abnormal_fraction / abnormal.sum()
        weights[~abnormal] = (1 - config.abnormal_fraction) / (~abnormal).sum()
    return torch.as_tensor(weights, dtype=torch.double)


def crop_scores(net: SegmentationNetwork, crops: Sequence[Crop], cfg: Preprocessing,
                device: torch.device | str = "cpu", batch_size: int = 64, flip: bool = False) -> np.ndarray:
    """Each crop's score: its highest lesion probability (with ``flip``, averaged with the mirrored
    input's map first, as :class:`dicomnode.segmentation.inference.NetworkSegmenter` does)."""
    canvas = crop_canvas(crops, cfg, net)
    scores = np.empty(len(crops), np.float32)
    net = net.eval()
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            chunk = [on_canvas(prepare_crop(c, cfg), canvas) for c in crops[start : start + batch_size]]
            image = torch.from_numpy(np.stack([i for i, _ in chunk])).to(device)
            valid = torch.from_numpy(np.stack([v for _, v in chunk])).to(device)
            probability = torch.sigmoid(net(image).float())[:, 0]
            if flip:
                probability = (probability + torch.sigmoid(net(image.flip(-1)).float())[:, 0].flip(-1)) / 2
            scores[start : start + len(chunk)] = (probability * valid).flatten(1).max(1).values.cpu().numpy()
    return scores
