"""Segment bone scans: a model card (+ weights) in, :class:`~dicomnode.segmentation.result.SegmentationResult` out.

Usage::

    segmenter = Segmenter.from_weights("model.safetensors")   # card model.json beside it
    segmenter = Segmenter.from_weights("dicomnode/segmentation/weights/threshold.json")  # network-free baseline
    segmenter = Segmenter.default()        # dicomnode/segmentation/weights/default.json, FileNotFoundError if absent
    result = segmenter.segment(scan)       # or segment_many(scans), which batches across studies

Every view goes through :func:`dicomnode.segmentation.preprocess.prepare` with the card's settings; a segmenter
returns a lesion probability map on the model grid, which is mapped back onto the stored source frame
(:meth:`PreparedView.to_source`) and thresholded there at the card's threshold (≥ 0.5 is lesion, paper 001);
lesions are the connected components (:mod:`dicomnode.segmentation.postprocess`). So every per-pixel array of
the result has the shape of its source frame.

- :class:`NetworkSegmenter` runs a registry network (:mod:`dicomnode.segmentation.networks`): windows of the
  card's size (paper 002: 256 × 256, stride 128, tent-weighted stitching) or, with ``window: null``,
  whole views padded to the network's ``size_divisor``; all windows/views of all studies in a call
  are batched (``batch_size``). ``torch.inference_mode``, channels-last memory format, bf16 autocast
  on CUDA; on the CPU float32, so the same input always gives the same output. The sigmoid is taken
  in float64 and the maps stay float64 to the source frame: in float32 it rounds to exactly 1 above a
  logit of about 17, where a fine-tuned model's lesions and false positives would tie at every peak
  threshold (docs/training.md, "The site's own model"). With the card's
  ``operating_point.test_time_flip`` each input is also run mirrored left–right and the two
  probabilities averaged (the body is near left–right symmetric; training flips too).
- :class:`ThresholdSegmenter` (``network: "threshold"``) is the classical reference baseline: a
  pixel is hot when its smoothed counts exceed ``factor`` × the local bone background (a high
  percentile of counts over a large neighbourhood, i.e. the level of the surrounding normal bone),
  inside the body, outside the suppressed bladder / injection-site hot spots. Its probability is a
  logistic of that ratio, 0.5 exactly at ``factor``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from dicomnode.segmentation.cardsection import from_card_section
from dicomnode.segmentation.device import resolve_device
from dicomnode.segmentation.modelcard import (
    PLANAR_LESIONS,
    THRESHOLD_NETWORK,
    ModelCard,
    ModelCardError,
    build_network,
    load_card,
)
from dicomnode.segmentation.networks import SegmentationNetwork
from dicomnode.segmentation.postprocess import view_result
from dicomnode.segmentation.preprocess import PreparedScan, PreparedView, prepare
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.segmentation.result import Algorithm, SegmentationResult, ViewResult
from dicomnode.segmentation.scan import BoneScan, View
from dicomnode.segmentation.tiling import Tiling, pad_to, padded_to_multiple

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_CARD = WEIGHTS_DIR / "default.json"

ModelMaps = dict[View, np.ndarray]


class Segmenter(ABC):
    """Turns bone scans into segmentation results according to a :class:`ModelCard`."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.algorithm = Algorithm(name=card.name, version=card.version, network=card.network)
        #: the anatomy map and second stage run after the lesion model (:mod:`dicomnode.segmentation.reading`);
        #: None: the lesion model's result as it stands
        self.reader: AnatomyReader | None = None

    @staticmethod
    def from_weights(path: str | Path, device: str | torch.device | None = None) -> Segmenter:
        """Load a model from its ``.safetensors`` (card beside it) or its ``.json`` card."""
        card = load_card(Path(path))
        if card.task != PLANAR_LESIONS:
            raise ModelCardError(f"card {card.path}: task {card.task!r} is not a lesion segmenter's")
        if card.network == THRESHOLD_NETWORK:
            return ThresholdSegmenter(card)
        return NetworkSegmenter(card, device=device)

    @staticmethod
    def default(device: str | torch.device | None = None) -> Segmenter:
        """The shipped default model (``dicomnode/segmentation/weights/default.json``)."""
        if not DEFAULT_CARD.is_file():
            raise FileNotFoundError(
                f"no default model: {DEFAULT_CARD} does not exist (train one, or pass a model path; "
                f"the network-free baseline is {WEIGHTS_DIR / 'threshold.json'})"
            )
        return Segmenter.from_weights(DEFAULT_CARD, device=device)

    def segment(self, scan: BoneScan) -> SegmentationResult:
        """Segment one study."""
        return self.segment_many([scan])[0]

    def segment_many(self, scans: Sequence[BoneScan]) -> list[SegmentationResult]:
        """Segment several studies, batching their views through the model together."""
        results = [self._result(prepared, source) for prepared, source in self._source_maps(scans)]
        if self.reader is None:
            return results
        return [self.reader.read(result, self.card.operating_point) for result in results]

    def probabilities(self, scans: Sequence[BoneScan]) -> list[dict[View, np.ndarray]]:
        """Lesion probability per view on the stored source frame, before any threshold (for
        choosing an operating point, :mod:`dicomnode.train.boxscore`)."""
        return [source for _, source in self._source_maps(scans)]

    def _source_maps(self, scans: Sequence[BoneScan]) -> list[tuple[PreparedScan, dict[View, np.ndarray]]]:
        """Each study prepared, and its views' probability maps taken back to the stored source frame."""
        prepared = [prepare(scan, self.card.preprocessing) for scan in scans]
        maps = self.model_maps(prepared)
        return [(p, {view: pv.to_source(m[view]) for view, pv in p.views.items()}) for p, m in zip(prepared, maps)]

    @abstractmethod
    def model_maps(self, prepared: Sequence[PreparedScan]) -> list[ModelMaps]:
        """Lesion probability per view on the model grid (H, W), for each prepared study."""

    def _result(self, prepared: PreparedScan, source: dict[View, np.ndarray]) -> SegmentationResult:
        views: dict[View, ViewResult] = {
            view: view_result(prepared.scan.views[view], source[view], self.card.threshold, self.card.operating_point)
            for view in prepared.views
        }
        notes = prepared.scan.notes + prepared.notes
        return SegmentationResult(
            scan=prepared.scan,
            views=views,
            algorithm=self.algorithm,
            threshold=self.card.threshold,
            notes=notes,
        )


class NetworkSegmenter(Segmenter):
    """A registry network with the card's weights; see the module docstring."""

    def __init__(
        self, card: ModelCard, device: str | torch.device | None = None, batch_size: int = 16
    ) -> None:
        super().__init__(card)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.net: SegmentationNetwork = build_network(card, self.device)
        self.net = self.net.to(memory_format=torch.channels_last)
        log.info(
            "loaded %s %s (%s, width %s) on %s", card.name, card.version, card.network, card.width,
            self.device,
        )

    def model_maps(self, prepared: Sequence[PreparedScan]) -> list[ModelMaps]:
        cfg = self.card.preprocessing
        jobs: list[tuple[int, View, Tiling | None, np.ndarray]] = []
        for index, scan in enumerate(prepared):
            for view, prepared_view in scan.views.items():
                shape = prepared_view.image.shape[1:]
                if cfg.window is not None:
                    tiling = Tiling(shape, cfg.window, cfg.stride)
                    jobs.append((index, view, tiling, tiling.windows(prepared_view.image)))
                else:
                    padded = padded_to_multiple(shape, self.net.size_divisor)
                    jobs.append((index, view, None, pad_to(prepared_view.image, padded)[None]))
        outputs = self._run_grouped([inputs for *_, inputs in jobs])
        maps: list[ModelMaps] = [{} for _ in prepared]
        for (index, view, tiling, _), probabilities in zip(jobs, outputs):
            shape = prepared[index].views[view].image.shape[1:]
            if tiling is not None:
                maps[index][view] = tiling.stitch(probabilities)
            else:
                maps[index][view] = probabilities[0, : shape[0], : shape[1]]
        return maps

    def _run_grouped(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run every (N, C, h, w) block, batching blocks of equal spatial size together."""
        results: list[np.ndarray | None] = [None] * len(inputs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, block in enumerate(inputs):
            by_shape.setdefault(block.shape[1:], []).append(i)
        for members in by_shape.values():
            stacked = np.concatenate([inputs[i] for i in members])
            probabilities = self._run(stacked)
            start = 0
            for i in members:
                results[i] = probabilities[start : start + len(inputs[i])]
                start += len(inputs[i])
        return results  # type: ignore[return-value]

    def _run(self, inputs: np.ndarray) -> np.ndarray:
        """(N, C, h, w) float32 → (N, h, w) float64 probabilities (module docstring), in batches."""
        out = np.empty((inputs.shape[0], *inputs.shape[2:]), np.float64)
        autocast = self.device.type == "cuda"
        flip = self.card.operating_point.test_time_flip
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(inputs[start : start + self.batch_size]))
                batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    logits = self.net(batch)
                    mirrored = self.net(batch.flip(-1)).flip(-1) if flip else None
                probabilities = torch.sigmoid(logits.double())[:, 0]
                if mirrored is not None:
                    probabilities = (probabilities + torch.sigmoid(mirrored.double())[:, 0]) / 2
                out[start : start + len(batch)] = probabilities.cpu().numpy()
        return out


@dataclass(frozen=True)
class ThresholdParameters:
    """Parameters of the classical hot-spot rule (the ``parameters`` of a ``threshold`` card)."""

    factor: float = 1.6  # hot when smoothed counts > factor × local bone background
    background_size_mm: float = 90.0  # side of the neighbourhood the background is taken from
    background_percentile: float = 90.0  # percentile of that neighbourhood = normal bone level
    smoothing_mm: float = 2.26  # Gaussian σ against Poisson noise before comparing
    floor_fraction: float = 0.5  # background never below this × body reference (thin limbs, edges)
    slope_fraction: float = 0.1  # logistic width as a fraction of factor

    def __post_init__(self) -> None:
        if self.factor <= 1 or self.background_size_mm <= 0 or self.smoothing_mm < 0:
            raise ValueError("threshold parameters need factor > 1, background_size_mm > 0, smoothing_mm ≥ 0")
        if not 0 < self.background_percentile <= 100 or self.floor_fraction <= 0 or self.slope_fraction <= 0:
            raise ValueError(
                "threshold parameters need 0 < background_percentile ≤ 100, floor_fraction > 0, "
                "slope_fraction > 0"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdParameters:
        return from_card_section(cls, data, "threshold parameter")


class ThresholdSegmenter(Segmenter):
    """The network-free reference baseline; see the module docstring."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        self.device = torch.device("cpu")  # no network: numpy on the CPU
        if card.preprocessing.aggregation != "none":
            raise ModelCardError(
                f"card {card.path}: the threshold segmenter reads one view; preprocessing "
                f"aggregation must be 'none', not {card.preprocessing.aggregation!r}"
            )
        try:
            self.parameters = ThresholdParameters.from_dict(card.parameters)
        except (TypeError, ValueError) as exc:
            raise ModelCardError(f"card {card.path}: {exc}") from exc

    def model_maps(self, prepared: Sequence[PreparedScan]) -> list[ModelMaps]:
        return [
            {view: self.probability(pv) for view, pv in scan.views.items()} for scan in prepared
        ]

    def probability(self, prepared_view: PreparedView) -> np.ndarray:
        """Lesion probability of one view on the model grid."""
        p = self.parameters
        spacing = self.card.preprocessing.spacing_mm
        image = prepared_view.image[0]
        smooth = ndimage.gaussian_filter(image, sigma=p.smoothing_mm / spacing) if p.smoothing_mm else image
        body = prepared_view.body
        if not body.any():
            return np.zeros(image.shape, np.float32)
        level = float(np.percentile(image[body], self.card.preprocessing.percentile))
        background = _local_percentile(smooth, p.background_percentile, p.background_size_mm / spacing)
        background = np.maximum(background, p.floor_fraction * max(level, 1e-6))
        ratio = smooth / background
        probability = 1.0 / (1.0 + np.exp(-(ratio - p.factor) / (p.slope_fraction * p.factor)))
        probability[~body | prepared_view.suppressed] = 0.0
        return probability.astype(np.float32)


def _local_percentile(image: np.ndarray, percentile: float, size: float, step: int = 4) -> np.ndarray:
    """Percentile filter over a ``size``-pixel square, computed on a ``step``× coarser grid for speed
    (the background varies slowly) and interpolated back."""
    h, w = image.shape
    ch, cw = h // step, w // step
    if ch == 0 or cw == 0:
        return ndimage.percentile_filter(image, percentile, size=max(1, round(size)), mode="nearest")
    blocks = image[: ch * step, : cw * step].reshape(ch, step, cw, step).mean(axis=(1, 3))
    filtered = ndimage.percentile_filter(blocks, percentile, size=max(1, round(size / step)), mode="nearest")
    return ndimage.zoom(filtered, (h / ch, w / cw), order=1, mode="nearest", grid_mode=True)[:h, :w]
