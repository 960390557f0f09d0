"""Read a segmentation as a physician does: the anatomy map first, then the hot spots on it.

:class:`AnatomyReader` runs the anatomy map (:mod:`dicomnode.segmentation.anatomymap`) on a study, judges every
lesion of the lesion model's result on it (:mod:`dicomnode.segmentation.judgement`), and returns the result
with only the suspicious foci in its masks and lesions — each named by its region and side and
carrying its second-stage probability — the dismissed hot spots with their reason, and the map
(for the burden's regions, :mod:`dicomnode.pipeline.results.planar.burden`). docs/segmentation.md,
"Anatomy map and second stage".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dicomnode.segmentation.anatomymap import DEFAULT_ANATOMY_CARD, AnatomyMapper
from dicomnode.segmentation.judgement import (
    DEFAULT_SECOND_STAGE,
    SecondStage,
    Verdict,
    candidates,
    judge,
)
from dicomnode.segmentation.postprocess import OperatingPoint, lesion_labels, lesions, view_result
from dicomnode.segmentation.result import Dismissal, Reading, SegmentationResult, ViewResult
from dicomnode.segmentation.scan import BoneScan, View


class AnatomyReader:
    """The anatomy map and the second stage, applied to lesion results."""

    def __init__(self, mapper: AnatomyMapper, stage: SecondStage | None) -> None:
        self.mapper = mapper
        self.stage = stage

    @staticmethod
    def shipped_stage(second_stage: bool = True) -> Path | None:
        """The shipped second stage's file, unless ``second_stage`` is off or none is shipped."""
        return DEFAULT_SECOND_STAGE if second_stage and DEFAULT_SECOND_STAGE.is_file() else None

    @staticmethod
    def default(device=None, second_stage: bool = True) -> AnatomyReader | None:
        """The shipped map and (with ``second_stage``) second stage; None when the map is not shipped."""
        if not DEFAULT_ANATOMY_CARD.is_file():
            return None
        return AnatomyReader.from_paths(DEFAULT_ANATOMY_CARD, AnatomyReader.shipped_stage(second_stage), device)

    @staticmethod
    def from_paths(card: Path, stage: Path | None, device=None) -> AnatomyReader:
        return AnatomyReader(AnatomyMapper.from_card(card, device), SecondStage.load(stage) if stage else None)

    def stage_for(self, lesion_model: str) -> SecondStage | None:
        """The second stage, if it judges the lesion model with card version ``lesion_model``."""
        return self.stage if self.stage is not None and self.stage.judges(lesion_model) else None

    def read(self, result: SegmentationResult, point: OperatingPoint | None = None) -> SegmentationResult:
        """``result`` read on the map; ``point`` is the lesion model's operating point, whose peak
        threshold the second stage lowers to its own ``candidate_peak`` (it ranks the candidates). A
        stage fitted on another lesion model's candidates is not used (:meth:`SecondStage.judges`):
        the fixed rules alone read the result. The result names the map and the stage that read it
        (:class:`dicomnode.segmentation.result.Reading`)."""
        stage = self.stage_for(result.algorithm.version)
        if stage is not None and stage.candidate_peak is not None:
            result = with_candidates(result, dataclasses.replace(point or OperatingPoint(),
                                                                 peak_threshold=stage.candidate_peak))
        anatomy = self.mapper.map(result.scan)
        verdicts = judge(candidates(result.scan.views, result.views, anatomy), stage,
                         point.calibration if point is not None else None)
        views: dict = {}
        dismissed: list[Dismissal] = []
        for view, found in result.views.items():
            mine = sorted((v for v in verdicts if v.candidate.lesion.view is view),
                          key=lambda v: v.candidate.lesion.label)
            if view not in anatomy:
                views[view] = found
                continue
            views[view] = _kept(result, found, [v for v in mine if v.suspicious])
            dismissed += [Dismissal(dataclasses.replace(v.candidate.lesion, site=v.candidate.site,
                                                        probability=v.score), v.reason)
                          for v in mine if not v.suspicious]
        notes = result.notes + tuple(f"{d.lesion.view.value}: hot spot at {d.lesion.site} judged {d.reason}"
                                     for d in dismissed)
        reading = Reading(f"{self.mapper.card.name} {self.mapper.card.version}",
                          None if stage is None else stage.version or "unversioned")
        return dataclasses.replace(result, views=views, anatomy=anatomy, dismissed=tuple(dismissed), notes=notes,
                                   reading=reading)


def physiological_removed(reader: AnatomyReader, scan: BoneScan, maps: Mapping[View, np.ndarray],
                          threshold: float) -> dict[View, np.ndarray]:
    """``maps`` (lesion probability per view on the stored frames) with every component at
    ``threshold`` that the reading dismisses set to 0, the rest untouched: the whole reading scored
    from saved out-of-fold maps at any peak threshold (:mod:`dicomnode.train.learningcurve`). The
    second stage, where one is loaded, judges every component (not only those down to its
    ``candidate_peak``)."""
    views = {view: view_result(scan.views[view], maps[view], threshold, OperatingPoint(peak_threshold=threshold))
             for view in maps}
    verdicts = judge(candidates(scan.views, views, reader.mapper.map(scan)), reader.stage)
    out = {view: np.array(m, dtype=np.float64) for view, m in maps.items()}
    components = {view: lesion_labels(r.mask)[0] for view, r in views.items()}
    for verdict in verdicts:
        if not verdict.suspicious:
            lesion = verdict.candidate.lesion
            out[lesion.view][components[lesion.view] == lesion.label] = 0.0
    return out


def with_candidates(result: SegmentationResult, point: OperatingPoint) -> SegmentationResult:
    """``result`` with its masks and lesions re-derived from its probabilities at ``point``."""
    views = {view: view_result(result.scan.views[view], r.probability, result.threshold, point)
             for view, r in result.views.items()}
    return dataclasses.replace(result, views=views)


def _kept(result: SegmentationResult, view_result: ViewResult, kept: list[Verdict]) -> ViewResult:
    """The view's result with only the ``kept`` components; lesions renumbered, sites attached."""
    components, _ = lesion_labels(view_result.mask)
    mask = np.isin(components, [v.candidate.lesion.label for v in kept]).astype(np.uint8)
    found = lesions(result.scan.views[view_result.view], mask)
    # relabelling keeps the raster order of the components' first pixels, so the order of ``kept``
    named = tuple(dataclasses.replace(lesion, site=v.candidate.site, probability=v.score)
                  for lesion, v in zip(found, kept, strict=True))
    return ViewResult(view=view_result.view, probability=view_result.probability, mask=mask, lesions=named)
