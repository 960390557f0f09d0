"""Run the anatomy map: a card with ``task: "anatomy-map"`` in, a :class:`ViewAnatomy` per view out.

Usage::

    mapper = AnatomyMapper.default()          # dicomnode/segmentation/weights/anatomy.json
    anatomy = mapper.map(scan)                # {View: ViewAnatomy}, labels on each stored frame

Each view is prepared as the card says (:mod:`dicomnode.segmentation.preprocess`: resampled to 4.8 mm,
counts over the body reference level, no suppression — the map must see the bladder), padded to the
network's size divisor, and labelled by the arg-max of its logits; the midline is fitted to the
mapped body on the model grid (:func:`dicomnode.segmentation.anatomy.fit_midline`) and rescaled to
the source pixels, the labels anatomy forbids where they lie are overruled
(:func:`dicomnode.segmentation.anatomy.anatomically_possible`), and the labels go back to the
stored source frame by nearest pixel centre. Both views of a
study run in one batch. docs/segmentation.md, "Anatomy map".
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from dicomnode.segmentation.anatomy import (
    Midline,
    ViewAnatomy,
    anatomically_possible,
    fit_midline,
    labels_to_source,
)
from dicomnode.segmentation.device import resolve_device
from dicomnode.segmentation.modelcard import (
    ANATOMY_MAP,
    ModelCard,
    ModelCardError,
    build_network,
    load_card,
)
from dicomnode.segmentation.preprocess import prepare
from dicomnode.segmentation.scan import BoneScan, View
from dicomnode.segmentation.tiling import pad_to, padded_to_multiple

log = logging.getLogger(__name__)

DEFAULT_ANATOMY_CARD = Path(__file__).parent / "weights" / "anatomy.json"


class AnatomyMapper:
    """The anatomy network of one card; see the module docstring."""

    def __init__(self, card: ModelCard, device: str | torch.device | None = None) -> None:
        if card.task != ANATOMY_MAP:
            raise ModelCardError(f"card {card.path}: task {card.task!r} is not {ANATOMY_MAP!r}")
        self.card = card
        self.device = resolve_device(device)
        self.net = build_network(card, self.device)
        log.info("loaded anatomy map %s %s on %s", card.name, card.version, self.device)

    @staticmethod
    def from_card(path: str | Path, device: str | torch.device | None = None) -> AnatomyMapper:
        return AnatomyMapper(load_card(Path(path)), device)

    @staticmethod
    def default(device: str | torch.device | None = None) -> AnatomyMapper:
        """The shipped anatomy map; FileNotFoundError when it is absent."""
        return AnatomyMapper.from_card(DEFAULT_ANATOMY_CARD, device)

    def map(self, scan: BoneScan) -> dict[View, ViewAnatomy]:
        """The anatomy of every view of ``scan``."""
        prepared = prepare(scan, self.card.preprocessing)
        views = list(prepared.views)
        shapes = [prepared.views[v].image.shape[1:] for v in views]
        padded = tuple(int(max(s[i] for s in shapes)) for i in (0, 1))
        padded = padded_to_multiple(padded, self.net.size_divisor)
        batch = np.stack([pad_to(prepared.views[v].image, padded) for v in views])
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(batch).to(self.device))
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
        out = {}
        for index, view in enumerate(views):
            h, w = shapes[index]
            midline = fit_midline(labels[index, :h, :w])
            grid = anatomically_possible(labels[index, :h, :w], midline, self.card.preprocessing.spacing_mm)
            source = scan.views[view].source
            out[view] = ViewAnatomy(labels_to_source(grid, source),
                                    _to_source(midline, (h, w), (source.rows, source.columns)), source)
        return out


def _to_source(midline: Midline | None, grid: tuple[int, int], source: tuple[int, int]) -> Midline | None:
    if midline is None:
        return None
    return midline.scaled(source[0] / grid[0], source[1] / grid[1])
