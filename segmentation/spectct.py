"""Bone SPECT/CT lesion segmentation with MT-UNet (paper 003): inputs, slice-wise inference, weights.

- **Grid.** Everything runs on the CT grid: SPECT is resampled onto it through patient coordinates
  (:mod:`segmentation.volume`), so a lesion lands on its bone and the result lies on the CT series a
  SEG refers to. ``in_plane_mm`` optionally coarsens the grid in-plane (the same field of view,
  :func:`segmentation.volume.scaled`) to keep a 512 × 512 CT affordable.
- **Inputs** (``channels``): ``("spect",)``, ``("ct",)`` or ``("spect", "ct")``, the three models of
  paper 003. SPECT counts are divided by the 95th percentile of the counts inside the body (CT above
  −500 HU): it maps normal bone to about 1 whatever the injected activity and acquisition time,
  and a hot bladder does not set the scale. CT is ``clip(HU, −1000, 2000) / 1000``.
- **2-D slices** (MT-UNet is 2-D, :mod:`segmentation.networks.mtunet`): each axial slice is padded at
  the bottom/right to a multiple of the network's stride, segmented, cropped back; the softmax
  gives per-voxel probabilities of background, metastatic and benign lesion.
- **Weights**: ``<name>.pt`` (a ``state_dict``) and a JSON card ``<name>.json`` (network, width,
  channels, classes, grid, training and cross-validation metrics, the SHA-256 of the weights).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from segmentation.networks import SegmentationNetwork, build
from segmentation.networks.mtunet import CLASSES
from segmentation.result import Algorithm
from segmentation.volume import ct_volume, nm_volume, resample, scaled

CHANNELS = ("spect", "ct")
BODY_HU = -500.0
SPECT_PERCENTILE = 95.0


def normalise_spect(counts: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """SPECT counts on the CT grid over the 95th percentile of the counts inside the body."""
    body = hu > BODY_HU
    reference = float(np.percentile(counts[body], SPECT_PERCENTILE)) if body.any() else float(counts.max())
    return (counts / max(reference, 1e-6)).astype(np.float32)


def normalise_ct(hu: np.ndarray) -> np.ndarray:
    return (np.clip(hu, -1000.0, 2000.0) / 1000.0).astype(np.float32)


def stack_inputs(channels: Sequence[str], spect_on_ct: np.ndarray | None, hu: np.ndarray) -> np.ndarray:
    """``(C, slices, rows, columns)`` float32 network input for the given channels."""
    if not channels or any(c not in CHANNELS for c in channels) or len(set(channels)) != len(channels):
        raise ValueError(f"channels must be distinct names from {CHANNELS}, got {tuple(channels)}")
    out = []
    for name in channels:
        if name == "spect":
            if spect_on_ct is None:
                raise ValueError("the SPECT channel was asked for but there is no SPECT volume")
            out.append(normalise_spect(spect_on_ct, hu))
        else:
            out.append(normalise_ct(hu))
    return np.stack(out)


def pad_to(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad ``(..., H, W)`` at the bottom/right to multiples of ``divisor``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % divisor, 0, (-h) % divisor))


@torch.inference_mode()
def predict_volume(net: SegmentationNetwork, inputs: np.ndarray, *, device: torch.device | str = "cpu",
                   batch: int = 16) -> np.ndarray:
    """Class probabilities ``(K, slices, rows, columns)`` float32 of a ``(C, slices, rows, columns)`` input."""
    net.eval()
    device = torch.device(device)
    c, slices, rows, cols = inputs.shape
    out = np.empty((net.classes, slices, rows, cols), np.float32)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for start in range(0, slices, batch):
        x = torch.from_numpy(np.ascontiguousarray(inputs[:, start:start + batch].transpose(1, 0, 2, 3))).to(device)
        with amp:
            logits = net(pad_to(x, net.size_divisor))
        prob = torch.softmax(logits.float(), dim=1)[..., :rows, :cols]
        out[:, start:start + batch] = prob.permute(1, 0, 2, 3).cpu().numpy()
    return out


@dataclass(frozen=True)
class SpectCTCard:
    """What a shipped SPECT/CT model is and how it was made (the ``.json`` beside the ``.pt``)."""

    name: str
    network: str
    width: str | int
    channels: tuple[str, ...]
    classes: tuple[str, ...] = CLASSES
    in_plane_mm: float | None = None
    weights: str = ""
    sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"], data["classes"] = list(self.channels), list(self.classes)
        return data


def save_spectct_model(net: SegmentationNetwork, path: Path, card: SpectCTCard) -> SpectCTCard:
    """Write ``path.pt`` and ``path.json``; return the card with the weights' name and hash."""
    path = Path(path)
    weights = path.with_suffix(".pt")
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = SpectCTCard(**{**card.__dict__, "weights": weights.name, "sha256": digest})
    path.with_suffix(".json").write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
    return card


def load_spectct_model(card_path: Path, device: torch.device | str = "cpu") -> tuple[SegmentationNetwork, SpectCTCard]:
    """Read a card, check the weights' hash, build the network and load it (eval mode)."""
    card_path = Path(card_path)
    data = json.loads(card_path.read_text())
    card = SpectCTCard(**{**data, "channels": tuple(data["channels"]), "classes": tuple(data["classes"])})
    weights = card_path.parent / card.weights
    if hashlib.sha256(weights.read_bytes()).hexdigest() != card.sha256:
        raise ValueError(f"{weights.name} does not match the SHA-256 in its card")
    net = build(card.network, in_channels=len(card.channels), width=card.width)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval(), card


#: The shipped SPECT/CT model (two channels, transfer from the SPECT model; docs/training.md).
DEFAULT_SPECTCT_CARD = Path(__file__).parent / "weights" / "spectct-spectct-mtunet-slim.json"


class HybridSegmenter:
    """The SPECT/CT model and the one path from DICOM to class probabilities.

    The model is read (and its weights' hash checked) on first use, so that a process that never meets
    a SPECT/CT acquisition never loads it.
    """

    def __init__(self, card_path: Path = DEFAULT_SPECTCT_CARD, device: torch.device | str = "cpu") -> None:
        self.card_path = Path(card_path)
        self.device = torch.device(device)

    @functools.cached_property
    def _model(self) -> tuple[SegmentationNetwork, SpectCTCard]:
        return load_spectct_model(self.card_path, self.device)

    @property
    def net(self) -> SegmentationNetwork:
        return self._model[0]

    @property
    def card(self) -> SpectCTCard:
        return self._model[1]

    @property
    def algorithm(self) -> Algorithm:
        """Algorithm Identification of the results (PS3.3 C.8.20.2)."""
        return Algorithm(name=self.card.name[:64], version=self.card.sha256[:16] or "unversioned",
                         network=self.card.network)

    def probabilities(self, ct: Sequence[Dataset], spect: Dataset) -> np.ndarray:
        """Class probabilities ``(3, slices, rows, columns)`` on the CT grid (slice order of
        :func:`segmentation.volume.ct_geometry`): SPECT resampled onto the CT through patient
        coordinates, the card's channels stacked, each axial slice segmented."""
        hu, ct_grid, _ = ct_volume(ct)
        counts, spect_grid = nm_volume(spect)
        grid = ct_grid if self.card.in_plane_mm is None else scaled(ct_grid, self.card.in_plane_mm / ct_grid.pixel_spacing[1])
        if grid is not ct_grid:
            hu = resample(hu, ct_grid, grid, fill=-1000.0)
        inputs = stack_inputs(self.card.channels, resample(counts, spect_grid, grid), hu)
        probabilities = predict_volume(self.net, inputs, device=self.device)
        if grid is ct_grid:
            return probabilities
        return np.stack([resample(channel, grid, ct_grid) for channel in probabilities])
