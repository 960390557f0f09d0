"""``dicomnode evaluate`` on BS-80K folders: the whole-body and crop numbers of :mod:`dicomnode.train.boxscore`
for one model at the operating point its card records, with pictures.

Whole-body folders: every study through the production path up to the probability maps
(:meth:`Segmenter.probabilities`), lesions reported at the card's threshold and operating point,
scored against the boxes; pictures (:func:`dicomnode.train.report.write_box_overlay`) of the studies with the
most missed boxes and false positives. Crop folders: each crop's score (its highest lesion
probability, :func:`dicomnode.train.crops.crop_scores`) at the crop threshold the card's cross-validation
chose (``metrics.cross_validation.crop_threshold``), else at the card's pixel threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dicomnode.segmentation.inference import NetworkSegmenter, Segmenter
from dicomnode.segmentation.postprocess import lesion_mask

from .boxscore import crop_summary, study_candidates, wholebody_scores
from .bs80k import load_crop_folder
from .crops import crop_scores
from .datasets import DataFormat, detect_format, load_studies
from .report import write_box_overlay

PICTURES = 4


def evaluate_bs80k(model: Path, data: Path, out: Path, device: str | None = None) -> dict[str, Any]:
    """Score ``model`` on a BS-80K whole-body or crop folder; writes ``out/bs80k.json`` (and pictures)."""
    kind = detect_format(data)
    segmenter = Segmenter.from_weights(model, device=device)
    card = segmenter.card
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"model": str(model), "version": card.version, "data": str(data), "format": kind.value,
                              "threshold": card.threshold, "operating_point": card.operating_point.to_dict()}
    if kind is DataFormat.BS80K_WHOLEBODY:
        studies = [s for s in load_studies(data) if s.boxes]
        maps = {s.key: m for s, m in zip(studies, segmenter.probabilities([s.scan for s in studies]))}
        candidates = study_candidates(studies, maps, card.threshold)
        result.update(wholebody_scores(candidates, card.operating_point, card.threshold))
        ranked = sorted(zip(studies, candidates), key=lambda pair: -_trouble(pair[1], card))
        result["pictures"] = []
        for study, _ in ranked[:PICTURES]:
            masks = {v: lesion_mask(maps[study.key][v], card.threshold, card.operating_point,
                                    study.scan.views[v].pixel_area_mm2) for v in study.scan.views}
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


def _trouble(candidates: Any, card: Any) -> float:
    """Missed boxes plus false positives of a study at the card's operating point (for the pictures)."""
    scores = wholebody_scores([candidates], card.operating_point, card.threshold)
    missed = scores["abnormal_boxes"] * (1 - scores["lesion_sensitivity"]) if scores["abnormal_boxes"] else 0.0
    return missed + scores["false_positives_per_study"]
