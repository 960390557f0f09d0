"""``dicomnode learn``: the site's labelled studies → a candidate model → the gate → maybe active.

1. examine stored SEG/SR/KO instances no pass has seen (:mod:`dicomnode.learn.corrections`);
2. the labelled studies from the spool (:mod:`dicomnode.learn.trainset`), split by a hash of the
   Patient ID into training and the site's held-out set (training never sees it); optionally more
   training studies from ``--data`` folders (never held out: the gate judges on the site's own);
3. train the preset (``[learn] preset``, default ``config/train/site.toml``) from the active model's
   weights with :func:`dicomnode.train.loop.run_training`: progress bar, a checkpoint after every
   epoch (``--resume`` continues it), ``[learn] threads`` torch threads; run it under ``nice``;
4. register the result as a CANDIDATE (:mod:`dicomnode.learn.registry`) with the active card's
   operating point, its peak threshold raised to the active model's false-positive rate on the
   training studies (:mod:`dicomnode.learn.operatingpoint`), so sensitivity is compared at that rate;
   with ``[learn] folds`` ≥ 2 that rate is counted on out-of-fold maps of models trained by patient
   fold (:mod:`dicomnode.learn.crossval`), which also give a cross-validated estimate;
5. the gate (:mod:`dicomnode.learn.gate`) on the held-out studies; the report (``gate.json`` and a
   text table) is stored with the candidate; it becomes active only when the gate passes and
   ``--no-activate`` was not given.

``--shuffled-labels`` is a negative control for a site that wants to see its gate refuse a model:
labels are permuted between training studies; such a candidate is never activated.
Nothing leaves the node: data, weights and reports stay under ``[storage] var_dir``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.config import ModelSection, NodeConfig
from dicomnode.learn import registry
from dicomnode.learn.active import ActiveSegmenter
from dicomnode.learn.operatingpoint import match_false_positive_rate
from dicomnode.learn.corrections import examine_new
from dicomnode.learn.crossval import FoldModel, cross_validated, out_of_fold_peaks, train_folds
from dicomnode.learn.gate import Decision, decide, render, study_score
from dicomnode.learn.trainset import has_lesion, label_refs, site_studies, split_site, training_data
from dicomnode.pipeline.models import PLANAR, NodeModels, load_registry_model
from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.modelcard import load_card, update_card
from dicomnode.store.db import Database
from dicomnode.store.spool import Spool
from dicomnode.train.config import load_config
from dicomnode.train.datasets import TrainingData, load_training_data
from dicomnode.train.loop import run_training
from dicomnode.train.study import LabelledStudy

log = logging.getLogger(__name__)

PRESETS = Path(__file__).resolve().parents[2] / "config" / "train"
RUN_FOLDER = Path("learn") / "run"


class LearnError(RuntimeError):
    """``learn`` cannot run as asked (too few labels, no held-out study with a lesion, ...)."""


@dataclass(frozen=True)
class LearnOutcome:
    model: registry.RegisteredModel
    decision: Decision
    activated: bool
    report: dict[str, Any]


def shuffled(studies: Sequence[LabelledStudy], seed: int = 0) -> list[LabelledStudy]:
    """The negative control: each study gets another study's labels (same view shapes), at random."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[int]] = {}
    for index, study in enumerate(studies):
        groups.setdefault(tuple(sorted((v.value, m.shape) for v, m in study.labels.items())), []).append(index)
    out = list(studies)
    for members in groups.values():
        donors = list(rng.permutation(members))
        if len(members) > 1:
            while any(a == b for a, b in zip(members, donors)):
                donors = list(rng.permutation(members))
        for index, donor in zip(members, donors):
            out[index] = replace(studies[index], labels=dict(studies[donor].labels), label_source="shuffled")
    return out


def _preset_path(preset: str) -> Path:
    path = Path(preset)
    return path if path.suffix == ".toml" else PRESETS / f"{preset}.toml"


def _active_segmenter(database: Database, config: NodeConfig) -> Segmenter:
    """The model the worker reads with now (:class:`dicomnode.learn.active.ActiveSegmenter`)."""
    return ActiveSegmenter(database, config.storage.var_dir, lambda: NodeModels(config.model).get(PLANAR),
                           lambda card: load_registry_model(card, config.model)).current()


def _inherit_operating_point(card_path: Path, active: Segmenter) -> None:
    """The active card's threshold and operating point, less its calibration (which describes the
    active model's own out-of-fold probabilities: a new model reports raw peaks until calibrated)."""
    if active.card.path is None:
        return
    source = load_card(active.card.path)  # as saved: not a site's [model] threshold override
    update_card(card_path, threshold=source.threshold,
                operating_point=replace(source.operating_point, calibration=None))


def _with_operating_point(card_path: Path, active: Segmenter, training: Sequence[LabelledStudy],
                          models: ModelSection, folds: Sequence[FoldModel]) -> dict[str, Any]:
    """The candidate starts from the active card's operating point, its peak threshold then raised to
    the active model's false-positive rate on the training studies (:mod:`dicomnode.learn.operatingpoint`),
    counted on the fold models' out-of-fold maps where there are folds (:mod:`dicomnode.learn.crossval`),
    which then give the cross-validated estimate at that point."""
    for path in (card_path, *(f.card for f in folds)):
        _inherit_operating_point(path, active)

    def load(card: Path) -> Segmenter:
        return load_registry_model(card, models)

    peaks = out_of_fold_peaks(folds, load) if folds else None
    candidate = load(card_path)
    matched = match_false_positive_rate(candidate, active, training, candidate_peaks=peaks)
    update_card(card_path, operating_point=candidate.card.operating_point)
    if folds:
        matched["cross_validated"] = cross_validated(folds, load, matched["peak_threshold"])
    return matched


def learn(config: NodeConfig, database: Database, spool: Spool, *, data: Sequence[Path] = (),
          activate: bool = True, resume: bool = False, shuffled_labels: bool = False, by: str | None = None,
          epochs: int | None = None, progress: bool = True) -> LearnOutcome:
    """Run steps 1–5 of the module docstring; raises :class:`LearnError` when it cannot."""
    settings = config.learn
    examine_new(database, spool, config.results.manufacturer)
    refs = label_refs(database, reviewed_results_count=settings.reviewed_results_count)
    studies = site_studies(database, spool, refs)
    training, held_out = split_site(studies, settings.held_out_percent)
    if not any(has_lesion(s) for s in held_out):
        raise LearnError(f"{len(studies)} labelled studies, {len(held_out)} held out: the gate needs held-out "
                         "studies with lesions (more corrections, or a larger [learn] held_out_percent)")
    if not training:
        raise LearnError(f"{len(studies)} labelled studies, none left for training")
    if shuffled_labels:
        training = shuffled(training)
    extra = load_training_data(list(data)) if data else TrainingData([], [], {})
    active = _active_segmenter(database, config)
    # fine-tune the active model; a site on the network-free baseline starts from the shipped default
    start = active.card.weights_path if active.card.weights_path is not None else Segmenter.default().card.weights_path
    overrides: dict[str, object] = {"model.init": str(start)}
    if epochs is not None:
        overrides["optim.epochs"] = epochs
    preset = load_config(_preset_path(settings.preset), **overrides)
    out = Path(config.storage.var_dir) / RUN_FOLDER
    if not resume and out.exists():
        shutil.rmtree(out)
    patients = len({s.patient_id for s in training})
    if 2 <= patients < settings.folds:
        log.warning("fewer training patients than [learn] folds", extra={"patients": patients, "folds": settings.folds})
    folds = train_folds(preset, training, extra, min(settings.folds, patients), out, device=config.model.device,
                        threads=settings.threads, resume=resume, progress=progress) \
        if min(settings.folds, patients) >= 2 else []
    trained = run_training(preset, training_data(training, extra), out,
                           device=config.model.device, resume=resume, progress=progress,
                           num_threads=settings.threads)
    matched = _with_operating_point(trained.card, active, training, config.model, folds)
    summary = {"site_studies": len(studies), "training_studies": len(training), "held_out_studies": len(held_out),
               "held_out_percent": settings.held_out_percent, "extra_training_studies": len(extra.studies),
               "labels": {kind: sum(r.kind == kind for r in refs) for kind in ("positive", "negative", "reviewed")},
               "shuffled_labels": shuffled_labels, "preset": preset.name, "epochs": len(trained.history),
               "started_from": active.algorithm.version, "operating_point": matched}
    model = registry.register(database, config.storage.var_dir, trained.card, by=registry.who(by), data=summary)
    candidate = load_registry_model(registry.card_path(config.storage.var_dir, model), config.model)
    decision = decide([study_score(candidate, s) for s in held_out], [study_score(active, s) for s in held_out],
                      runs=settings.bootstrap, max_extra_false_positives=settings.max_extra_false_positives)
    do_activate = decision.passed and activate and not shuffled_labels
    report = {"candidate": {"id": model.id, "version": model.version},
              "active": {"version": active.algorithm.version}, "gate": decision.to_json(), "data": summary,
              "activated": do_activate}
    registry.set_metrics(database, model.id, report)
    (out / "gate.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "gate.txt").write_text(render(decision) + "\n")
    if do_activate:
        registry.activate(database, model.id, by=by)
    log.info("learn finished", extra={"model": model.id, "gate": "passed" if decision.passed else "refused",
                                      "activated": do_activate})
    return LearnOutcome(model, decision, do_activate, report)
