"""``dicomnode evaluate`` on BS-80K folders: the whole-body and crop numbers of :mod:`dicomnode.train.boxscore`
for one model at the operating point its card records, with pictures.

Whole-body folders: every study through the production path up to the probability maps
(:meth:`Segmenter.probabilities`), lesions reported at the card's threshold and operating point,
scored against the boxes; pictures (:func:`dicomnode.train.report.write_box_overlay`) of the studies with the
most missed boxes and false positives. With a reader (``dicomnode evaluate``'s default: the shipped
anatomy map and second stage) the lesions are those the node reports: read on the map with the
fixed rules and, for the lesion model it was fitted on, the second stage
(:mod:`dicomnode.segmentation.reading`); a
study's score for the AUC is then the highest probability the reading gave any hot spot it judged
(reported, or dismissed by the second stage), 0 where there was none. Crop folders: each crop's score (its highest lesion
probability, :func:`dicomnode.train.crops.crop_scores`) at the crop threshold the card's cross-validation
chose (``metrics.cross_validation.crop_threshold``), else at the card's pixel threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.segmentation.inference import NetworkSegmenter, Segmenter
from dicomnode.segmentation.postprocess import OperatingPoint, lesion_labels, lesion_mask
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.segmentation.scan import View

from .boxscore import crop_summary, roc_auc, study_candidates, wholebody_scores
from .bs80k import load_crop_folder
from .crops import crop_scores
from .datasets import DataFormat, detect_format, load_studies
from .report import write_box_overlay

PICTURES = 4
#: The reported-lesion maps of a reading hold each lesion's probability (at least twice this) on its pixels.
READ_THRESHOLD = 1e-6


def evaluate_bs80k(model: Path, data: Path, out: Path, device: str | None = None,
                   reader: AnatomyReader | None = None) -> dict[str, Any]:
    """Score ``model`` on a BS-80K whole-body or crop folder, the lesion model alone or read by
    ``reader`` as the node reads (module docstring); writes ``out/bs80k.json`` (and pictures)."""
    kind = detect_format(data)
    segmenter = Segmenter.from_weights(model, device=device)
    segmenter.reader = reader
    card = segmenter.card
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"model": str(model), "version": card.version, "data": str(data), "format": kind.value,
                              "threshold": card.threshold, "operating_point": card.operating_point.to_dict()}
    if kind is DataFormat.BS80K_WHOLEBODY:
        studies = [s for s in load_studies(data) if s.boxes]
        if segmenter.reader is not None:
            stage = segmenter.reader.stage_for(card.version)
            result["reading"] = "anatomy map, fixed rules" + (", second stage" if stage is not None else "")
            maps, scores = _read(segmenter, studies)
            threshold, point = READ_THRESHOLD, OperatingPoint(peak_threshold=None)
        else:
            maps = {s.key: m for s, m in zip(studies, segmenter.probabilities([s.scan for s in studies]))}
            threshold, point, scores = card.threshold, card.operating_point, None
        candidates = study_candidates(studies, maps, threshold)
        result.update(wholebody_scores(candidates, point, threshold))
        if scores is not None:
            result["study_auc"] = roc_auc([scores[s.key] for s in studies], [c.abnormal for c in candidates])
        ranked = sorted(zip(studies, candidates), key=lambda pair: -_trouble(pair[1], point, threshold))
        result["pictures"] = []
        for study, _ in ranked[:PICTURES]:
            masks = {v: lesion_mask(maps[study.key][v], threshold, point, study.scan.views[v].pixel_area_mm2)
                     for v in study.scan.views}
            name = f"{study.key.replace('/', '_')}.png"
            write_box_overlay(study, masks, out / name)
            result["pictures"].append(name)
    elif kind is DataFormat.BS80K_CROPS:
        if not isinstance(segmenter, NetworkSegmenter) or segmenter.net.in_channels != 1:
            raise ValueError("crops hold one view: evaluate them with a one-channel network (aggregation 'none')")
        crops = load_crop_folder(data)
        scores = crop_scores(segmenter.net, crops, card.preprocessing, segmenter.device,
                             flip=card.operating_point.test_time_flip)
        threshold = float(card.metrics.get("cross_validation", {}).get("crop_threshold", card.threshold))
        result.update(crop_summary(scores, [c.abnormal for c in crops], threshold), crop_threshold=threshold)
    else:
        raise ValueError(f"{data} is a {kind.value} folder, not BS-80K")
    (out / "bs80k.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _read(segmenter: Segmenter, studies: list) -> tuple[dict[str, dict[View, np.ndarray]], dict[str, float]]:
    """Each study as the node reads it: a map holding each reported lesion's probability on its pixels
    (0 elsewhere), and the study's score (module docstring)."""
    maps, scores = {}, {}
    for study in studies:
        read = segmenter.segment(study.scan)
        maps[study.key] = {}
        for view, found in read.views.items():
            reported = np.zeros(found.mask.shape, np.float64)
            components, _ = lesion_labels(found.mask)
            for lesion in found.lesions:
                reported[components == lesion.label] = max(lesion.probability or 0.0, 2 * READ_THRESHOLD)
            maps[study.key][view] = reported
        judged = [lesion.probability or 0.0 for found in read.views.values() for lesion in found.lesions]
        judged += [d.lesion.probability or 0.0 for d in read.dismissed]
        scores[study.key] = max(judged, default=0.0)
    return maps, scores


def _trouble(candidates: Any, point: OperatingPoint, threshold: float) -> float:
    """Missed boxes plus false positives of a study at the operating point (for the pictures)."""
    scores = wholebody_scores([candidates], point, threshold)
    missed = scores["abnormal_boxes"] * (1 - scores["lesion_sensitivity"]) if scores["abnormal_boxes"] else 0.0
    return missed + scores["false_positives_per_study"]
