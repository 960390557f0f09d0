"""Bone SPECT/CT lesion segmentation with MT-UNet (paper 003): inputs, slice-wise inference, the segmenter.

- **Grid.** With a CT series everything runs on the CT grid: SPECT is resampled onto it through
  patient coordinates (:mod:`dicomnode.segmentation.volume`), so a lesion lands on its bone and the result lies
  on the CT series a SEG refers to. Without one (SPECT-only, a model whose only channel is
  ``spect``) it runs on the NM volume's own grid. ``in_plane_mm`` optionally sets the in-plane
  spacing the model works at (the same field of view, :func:`dicomnode.segmentation.volume.scaled`): it keeps
  a 512 × 512 CT affordable, and puts a SPECT-only volume at the spacing its model was trained at.
- **Inputs** (``channels``): ``("spect",)``, ``("ct",)`` or ``("spect", "ct")``, the three models of
  paper 003; a model's inputs depend on its own channels only. SPECT counts are divided by the 95th
  percentile of the counts inside the body: it maps normal bone to about 1 whatever the injected
  activity and acquisition time, and a hot bladder does not set the scale. The body is the CT above
  −500 HU for a model with a CT channel, else the voxels above 5 % of the counts' 99.5th percentile
  (on the simulated exams the normalised counts inside the CT's body agree with the CT-outlined
  ones to within 15 %: tests/test_train_spectct.py). CT is ``clip(HU, −1000, 2000) / 1000``.
- **2-D slices** (MT-UNet is 2-D, :mod:`dicomnode.segmentation.networks.mtunet`): each axial slice is padded at
  the bottom/right to a multiple of the network's stride, segmented, cropped back; the softmax
  gives per-voxel probabilities of background, metastatic and benign lesion.
- **SPECT-only post-processing**: lesion probabilities are set to background on the first and last
  :data:`EDGE_SLICES` slices of the volume (reconstruction edges, where a real reconstruction's
  noise and truncation gave blobs) and outside the body (:func:`spect_body`, holes filled per
  slice): on a real exam the model marked 21-22 blobs per volume, many there.
- **Weights**: a model card with ``task: "spectct-classes"`` (:mod:`dicomnode.segmentation.modelcard`:
  safetensors, strict keys, SHA-256; ``channels``, ``classes``, ``in_plane_mm``,
  ``real_scan_validation``), one :class:`VolumeSegmenter` per card; the node's are chosen in
  ``node.toml`` (``[model.spectct]``, ``[model.spect_only]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset
from scipy import ndimage

from dicomnode.segmentation.modelcard import SPECTCT_CLASSES, ModelCard, ModelCardError, build_network, load_card
from dicomnode.segmentation.networks import SegmentationNetwork
from dicomnode.segmentation.result import Algorithm
from dicomnode.segmentation.tiling import pad_batch_to_multiple
from dicomnode.segmentation.volume import DecodedVolumes, decode_volumes, resample, scaled

CHANNELS = ("spect", "ct")
BODY_HU = -500.0
SPECT_PERCENTILE = 95.0
SPECT_BODY_FRACTION = 0.05
#: Slices at each end of a SPECT-only volume where no lesion is reported (reconstruction edges).
EDGE_SLICES = 2


def spect_body(counts: np.ndarray) -> np.ndarray:
    """The body as SPECT alone outlines it: the voxels above 5 % of the counts' 99.5th percentile."""
    return counts > SPECT_BODY_FRACTION * float(np.percentile(counts, 99.5))


def normalise_spect(counts: np.ndarray, hu: np.ndarray | None = None) -> np.ndarray:
    """SPECT counts over the 95th percentile of the counts inside the body (module docstring): the
    body is the CT above −500 HU where ``hu`` is given, else the counts above 5 % of their 99.5th
    percentile."""
    body = hu > BODY_HU if hu is not None else spect_body(counts)
    reference = float(np.percentile(counts[body], SPECT_PERCENTILE)) if body.any() else float(counts.max())
    return (counts / max(reference, 1e-6)).astype(np.float32)


def normalise_ct(hu: np.ndarray) -> np.ndarray:
    return (np.clip(hu, -1000.0, 2000.0) / 1000.0).astype(np.float32)


def stack_inputs(channels: Sequence[str], spect: np.ndarray | None, hu: np.ndarray | None) -> np.ndarray:
    """``(C, slices, rows, columns)`` float32 network input for the given channels, all on one grid;
    the CT (``hu``) is read only by a model with a ``ct`` channel."""
    if not channels or any(c not in CHANNELS for c in channels) or len(set(channels)) != len(channels):
        raise ValueError(f"channels must be distinct names from {CHANNELS}, got {tuple(channels)}")
    with_ct = "ct" in channels
    if with_ct and hu is None:
        raise ValueError("the CT channel was asked for but there is no CT volume")
    out = []
    for name in channels:
        if name == "spect":
            if spect is None:
                raise ValueError("the SPECT channel was asked for but there is no SPECT volume")
            out.append(normalise_spect(spect, hu if with_ct else None))
        else:
            out.append(normalise_ct(hu))
    return np.stack(out)


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
            logits = net(pad_batch_to_multiple(x, net.size_divisor))
        prob = torch.softmax(logits.float(), dim=1)[..., :rows, :cols]
        out[:, start:start + batch] = prob.permute(1, 0, 2, 3).cpu().numpy()
    return out


#: The shipped SPECT/CT model (two channels, transfer from the SPECT model; docs/training.md).
DEFAULT_SPECTCT_CARD = Path(__file__).parent / "weights" / "spectct-spectct-mtunet-slim.json"
#: The shipped SPECT-only model, for a RECON TOMO volume without a CT (docs/training.md "SPECT-only").
DEFAULT_SPECT_ONLY_CARD = Path(__file__).parent / "weights" / "spect-only-mtunet-slim.json"


@dataclass(frozen=True)
class VolumeSegmentation:
    """Class probabilities ``(K, slices, rows, columns)`` (the card's ``classes``, e.g. background,
    metastatic, benign) and the model that gave them. On the CT grid (slice order of :func:`dicomnode.segmentation.volume.ct_geometry`)
    when the acquisition has a CT, else on the NM volume's grid (frame order)."""

    probabilities: np.ndarray
    algorithm: Algorithm
    classes: tuple[str, ...]  # of the probabilities' first axis, from the model card
    validated_on_real_scans: bool = False  # the model card records validation on real scans of its kind
    volumes: DecodedVolumes | None = None  # the pixel data as decoded for the model, for the result builder


class VolumeSegmenter:
    """One ``spectct-classes`` model (:mod:`dicomnode.segmentation.modelcard`) and the one path from
    DICOM to class probabilities. A card whose channels include ``ct`` segments an acquisition with a
    CT series; one without, a SPECT volume alone (then on the NM grid, edges and outside masked)."""

    def __init__(self, card: ModelCard, device: torch.device | str = "cpu") -> None:
        if card.task != SPECTCT_CLASSES:
            raise ModelCardError(f"card {card.path}: task {card.task!r} is not {SPECTCT_CLASSES!r}")
        self.card = card
        self.device = torch.device(device)
        self.net = build_network(card, self.device)
        self.algorithm = Algorithm(name=card.name[:64], version=card.version, network=card.network)

    @staticmethod
    def from_card(path: Path, device: torch.device | str = "cpu") -> VolumeSegmenter:
        return VolumeSegmenter(load_card(Path(path)), device)

    @property
    def needs_ct(self) -> bool:
        return "ct" in self.card.channels

    def segment(self, ct: Sequence[Dataset], spect: Dataset) -> VolumeSegmentation:
        """Class probabilities of one acquisition (``ct`` empty: SPECT-only).

        With a CT: the SPECT resampled onto the CT grid through patient coordinates, the card's
        channels stacked, each axial slice segmented. Without: the NM volume on its own grid, at
        the card's ``in_plane_mm`` for the network and back. Either way the card's grid spacing
        is applied as :func:`dicomnode.segmentation.volume.scaled` and undone on the probabilities.
        Raises :class:`ValueError` for a CT model without a CT series."""
        card = self.card
        if self.needs_ct and not ct:
            raise ModelCardError(f"{card.name} needs a CT channel; it cannot segment SPECT alone")
        volumes = decode_volumes(ct, spect)
        counts, spect_grid, hu, grid = volumes.counts, volumes.spect_grid, volumes.hu, volumes.grid
        assert counts is not None and spect_grid is not None
        work = grid if card.in_plane_mm is None else scaled(grid, card.in_plane_mm / grid.pixel_spacing[1])
        if hu is not None and work is not grid:
            hu = resample(hu, grid, work, fill=-1000.0)
        spect_on_work = counts if work is spect_grid else resample(counts, spect_grid, work)
        inputs = stack_inputs(card.channels, spect_on_work, hu)
        probabilities = predict_volume(self.net, inputs, device=self.device)
        if work is not grid:
            probabilities = np.stack([resample(channel, work, grid, extend=True) for channel in probabilities])
        if not ct:
            probabilities = mask_edges_and_outside(probabilities, counts)
        return VolumeSegmentation(probabilities, self.algorithm, card.classes, card.validated_on_real_scans, volumes)


def mask_edges_and_outside(probabilities: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """SPECT-only probabilities ``(K, slices, rows, columns)`` with every voxel of the first and last
    :data:`EDGE_SLICES` slices and outside the body (:func:`spect_body`, holes filled slice by slice)
    set to background (class 0) with certainty (module docstring)."""
    keep = np.stack([ndimage.binary_fill_holes(plane) for plane in spect_body(counts)])
    keep[:EDGE_SLICES] = False
    keep[max(len(keep) - EDGE_SLICES, 0):] = False
    masked = probabilities.copy()
    masked[:, ~keep] = 0.0
    masked[0, ~keep] = 1.0
    return masked
