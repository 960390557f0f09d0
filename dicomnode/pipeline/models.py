"""Every model the node runs, chosen in ``node.toml``: one table per task, the shipped model by default.

=====================  ====================  ===============================================================
table                  card ``task``         segments
=====================  ====================  ===============================================================
``[model]``            ``planar-lesions``    planar whole-body acquisitions (``weights``: ``"default"``,
                                             ``"threshold"`` or a path; ``threshold`` a site override)
``[model.anatomy]``    ``anatomy-map``       reads the planar model's lesions (:mod:`dicomnode.segmentation.reading`)
``[model.spectct]``    ``spectct-classes``   SPECT/CT acquisitions (paper 003)
``[model.spect_only]`` ``spectct-classes``   SPECT volumes without a CT (a card with a ``ct`` channel is refused)
=====================  ====================  ===============================================================

Which acquisition kind uses which table is :data:`dicomnode.pipeline.kinds.KINDS`. Every model runs on
``[model] device`` (:func:`dicomnode.segmentation.device.resolve_device`). :meth:`NodeModels.load_all`
loads them at start and logs each with its operating point; a bad card fails the start, not a job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from dicomnode.config import ModelSection
from dicomnode.segmentation.device import resolve_device
from dicomnode.segmentation.inference import WEIGHTS_DIR, Segmenter
from dicomnode.segmentation.modelcard import ModelCardError, load_card
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.segmentation.spectct import (
    DEFAULT_SPECT_ONLY_CARD,
    DEFAULT_SPECTCT_CARD,
    VolumeSegmenter,
)

log = logging.getLogger(__name__)

#: The model tables of ``[model]`` that segment an acquisition kind (the anatomy map serves ``PLANAR``).
PLANAR, SPECTCT, SPECT_ONLY = "planar", "spectct", "spect_only"


def load_segmenter(weights: str, device: str = "auto", threshold: float | None = None,
                   anatomy: str = "default", second_stage: bool = True) -> Segmenter:
    """The planar lesion segmenter of ``[model]``, read by the anatomy map of ``[model.anatomy]``
    and, with ``second_stage``, the shipped second stage where it was fitted for this lesion model.

    The card's operating point (threshold, peak, minimum area, flip) is used as it stands, the
    point cross-validated with the model (``dicomnode evaluate`` uses the same); ``threshold`` (config
    ``[model] threshold``) replaces the card's probability threshold when given, and is logged as a
    site override. Raises :class:`dicomnode.segmentation.device.DeviceError` for a device this machine lacks.
    """
    resolved = resolve_device(device)
    if weights == "default":
        segmenter = Segmenter.default(device=resolved)
    elif weights == "threshold":
        segmenter = Segmenter.from_weights(WEIGHTS_DIR / "threshold.json", device=resolved)
    else:
        segmenter = Segmenter.from_weights(Path(weights), device=resolved)
    if threshold is not None and threshold != segmenter.card.threshold:
        log.warning("[model] threshold %g overrides the model card's %g (a site override: the card's "
                    "operating point was cross-validated at its own threshold)", threshold, segmenter.card.threshold)
        segmenter.card = dataclasses.replace(segmenter.card, threshold=threshold)
    segmenter.reader = AnatomyReader.default(resolved, second_stage) if anatomy == "default" else \
        AnatomyReader.from_paths(Path(anatomy), AnatomyReader.shipped_stage(second_stage), resolved)
    point = segmenter.card.operating_point
    log.info("model [model] (planar whole body): %s %s (%s) on %s, operating point: threshold %g, peak %s, "
             "minimum area %g mm2, flip %s (%s)", segmenter.algorithm.name, segmenter.algorithm.version,
             segmenter.algorithm.network, resolved, segmenter.card.threshold,
             "-" if point.peak_threshold is None else f"{point.peak_threshold:.4g}", point.min_area_mm2,
             "on" if point.test_time_flip else "off", "site override" if threshold is not None else "model card")
    if segmenter.reader is not None:
        card = segmenter.reader.mapper.card
        stage = segmenter.reader.stage_for(segmenter.card.version)
        log.info("model [model.anatomy]: %s %s (%s), reads the planar lesions with %s", card.name, card.version,
                 card.network, f"the fixed rules and the learned second stage {stage.version}" if stage is not None else
                 "the fixed rules alone" + ("" if segmenter.reader.stage is None else
                                            f" (the second stage was fitted for {segmenter.reader.stage.lesion_model})"))
    return segmenter


def load_registry_model(card: Path, config: ModelSection) -> Segmenter:
    """A model of the node's registry (``dicomnode learn``, :mod:`dicomnode.learn.registry`) as the
    planar lesion segmenter: on ``[model] device``, read by ``[model.anatomy]``'s map, at its own
    card's operating point (the site's ``[model] threshold`` override is for the configured model)."""
    return load_segmenter(str(card), config.device, anatomy=config.anatomy.weights,
                          second_stage=config.anatomy.second_stage)


def load_volume_segmenter(weights: str, table: str, device: torch.device | str) -> VolumeSegmenter:
    """The ``spectct-classes`` model of ``[model.<table>]`` (``weights``: ``"default"`` or a path)."""
    default = DEFAULT_SPECTCT_CARD if table == SPECTCT else DEFAULT_SPECT_ONLY_CARD
    card = load_card(default if weights == "default" else Path(weights))
    segmenter = VolumeSegmenter(card, device)
    if table == SPECT_ONLY and segmenter.needs_ct:
        raise ModelCardError(f"[model.{table}] {card.path}: {card.name} needs a CT channel; it cannot segment "
                             "SPECT alone")
    log.info("model [model.%s]: %s %s (%s, channels %s) on %s, operating point: the most probable of %s per "
             "voxel, in-plane %s; validated on real scans: %s", table, card.name, card.version, card.network,
             "+".join(card.channels), segmenter.device, "/".join(card.classes),
             "the grid's" if card.in_plane_mm is None else f"{card.in_plane_mm:g} mm",
             "yes" if card.validated_on_real_scans else "no")
    return segmenter


class NodeModels:
    """The models of one process, by ``[model]`` table; each is loaded on first use (or by
    :meth:`load_all` at start). ``loaded`` gives models already built (a test's segmenter)."""

    def __init__(self, config: ModelSection | None = None, **loaded: object) -> None:
        self.config = config or ModelSection()
        unknown = sorted(set(loaded) - {PLANAR, SPECTCT, SPECT_ONLY})
        if unknown:
            raise ValueError(f"no model table {unknown}")
        self._loaded = dict(loaded)
        self._loaders: dict[str, Callable[[], object]] = {
            PLANAR: lambda: load_segmenter(self.config.weights, self.config.device, self.config.threshold,
                                           self.config.anatomy.weights, self.config.anatomy.second_stage),
            SPECTCT: lambda: load_volume_segmenter(self.config.spectct.weights, SPECTCT, self.device),
            SPECT_ONLY: lambda: load_volume_segmenter(self.config.spect_only.weights, SPECT_ONLY, self.device),
        }

    @property
    def device(self) -> torch.device:
        """The device of the planar model when one is loaded (a test's), else ``[model] device``."""
        planar = self._loaded.get(PLANAR)
        device = getattr(planar, "device", None)
        return device if isinstance(device, torch.device) else resolve_device(self.config.device)

    def get(self, table: str) -> object:
        """The model of ``[model.<table>]`` (``[model]`` for ``planar``), loaded on first use."""
        if table not in self._loaded:
            self._loaded[table] = self._loaders[table]()
        return self._loaded[table]

    def use(self, table: str, model: object) -> None:
        """Read with ``model`` from now on (the registry's active planar model: :mod:`dicomnode.learn.active`)."""
        if table not in self._loaders:
            raise ValueError(f"no model table {table!r}")
        self._loaded[table] = model

    def load_all(self) -> None:
        """Load every model now (at start: a bad card or weights file fails the start)."""
        for table in self._loaders:
            self.get(table)
