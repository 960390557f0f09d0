"""Fit the second stage that judges each lesion candidate on the anatomy map (dicomnode.segmentation.judgement).

    python -m dicomnode.train.secondstage --cv runs/cv-100 --data REAL/bs80k-wholebody --data REAL/bs80k-chest \\
        --data data/synth-mix --out dicomnode/segmentation/weights/second-stage.json

``--cv`` is a :mod:`dicomnode.train.crossval` run of the shipped lesion model's recipe and ``--data`` its
folders in the same order. **Candidates** are the components (pixel threshold 0.3, peak down to
``--candidate-peak``, 0.5; the lesion model's own operating point is 0.977) of each development
study's **out-of-fold** probability maps (``fold<k>/oof.npz``): the fold model that drew them never
trained on the study, so they are what the shipped model gives on a new scan. (The shipped model's
own candidates on the studies it trained on are over-confident: a stage fitted on them judged the
lesions the fold models find worse than the peak probability alone; CHANGELOG 2026-12-07.) Each is
measured on the anatomy map (:func:`dicomnode.segmentation.judgement.candidates`); those a fixed rule
decides (urine, extra-osseous uptake, injection site, facial bones, forearms and hands) are left out
of the fit. A candidate touching an ``Abnormal`` box is a lesion, every other one (a ``Normal`` box or
nothing) is not. ``--sim-per-variant N`` adds N simulated studies per normal variant of
:mod:`dicomnode.synth.variants` (with and without metastases, read by the shipped model; a candidate
overlapping the truth is a lesion); off by default, because with them the stage ranked the real
candidates worse (docs/training.md, "Anatomy map and second stage").

The model is an L2-penalised logistic regression on standardised features with balanced class
weights (:func:`logistic_fit`, Newton's method). Its **threshold** keeps the false positives within
``--max-fp`` per study on the stage's own out-of-fold scores (each cross-validation fold scored by
the stage fitted on the other folds), not on the scores of the candidates it was fitted on, which
are optimistic. Its **calibration** (:class:`dicomnode.segmentation.calibration.Calibration`) is a
Platt map fitted on the same out-of-fold scores: the probability a reported focus carries.

The **table** (kept in the stage's ``training``) is cross-validated on the run's own folds, nested:
fold ``k`` is read by a stage fitted, thresholded and calibrated on the other folds only (so the
threshold comes from an inner cross-validation on those), against the lesion model's peak alone
after the fixed rules, its peak threshold chosen on the other folds at the same ``--max-fp``. The
candidates are saved (``--examples``) so that ``--from-examples`` refits without the models.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pickle
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.segmentation.anatomymap import DEFAULT_ANATOMY_CARD, AnatomyMapper
from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.judgement import Candidate, SecondStage, candidates, judge
from dicomnode.segmentation.postprocess import OperatingPoint, view_result
from dicomnode.segmentation.reading import with_candidates
from dicomnode.segmentation.scan import BoneScan, View

from .bootstrap import StudyScore, differences, measures
from .calibration import fit_platt, judged_studies, reliability, saved_maps
from .crossval import mean_std
from .study import LabelledStudy

log = logging.getLogger(__name__)

#: The pixel threshold of the candidates (the lesion model's own, ``threshold`` in its card).
PIXEL_THRESHOLD = 0.3
MEASURES = ("lesion_sensitivity", "mean_study_sensitivity", "false_positives_per_study", "normal_marked_fraction",
            "study_auc")
#: The differences stage − peak given with a patient-bootstrap interval (over all studies pooled).
BOOTSTRAPPED = ("lesion_sensitivity", "mean_study_sensitivity", "false_positives_per_study")


@dataclass(frozen=True)
class Example:
    """One candidate of one study, with its label and what the box scoring needs."""

    study: str
    patient: str
    candidate: Candidate
    lesion: bool  # touches an Abnormal box / overlaps the truth
    abnormal_boxes: frozenset[tuple[str, int]]  # (view, box index) it touches
    normal_boxes: frozenset[tuple[str, int]]
    real: bool
    rule: str | None = None  # the fixed rule that dismissed it (urine, extra-osseous); None: learnable
    fold: int = 0  # the cross-validation fold that held its study out (0: simulated, always in training)


def ruled(found: list[Candidate]) -> list[tuple[Candidate, str | None]]:
    """Each candidate with the fixed rule that dismisses it, or None (judge without a stage)."""
    return [(v.candidate, None if v.suspicious else v.reason) for v in judge(found, None)]


def touched_boxes(candidate: Candidate, mask: np.ndarray, boxes) -> tuple[frozenset, frozenset]:
    """The ``Abnormal`` and the other boxes (view, index) that the candidate's own component pixels meet."""
    from dicomnode.segmentation.postprocess import lesion_labels

    abnormal, normal = set(), set()
    components, _ = lesion_labels(mask)
    own = components == candidate.lesion.label
    for index, box in enumerate(boxes):
        if own[box.clipped(own.shape)].any():
            (abnormal if box.kind == "Abnormal" else normal).add((candidate.lesion.view.value, index))
    return frozenset(abnormal), frozenset(normal)


def study_examples(study: LabelledStudy, maps: Mapping[View, np.ndarray], mapper: AnatomyMapper, peak: float,
                   fold: int) -> list[Example]:
    """The candidates of one boxed study's probability maps, measured on its anatomy map and labelled by its boxes."""
    point = OperatingPoint(peak_threshold=peak)
    views = {view: view_result(study.scan.views[view], probability, PIXEL_THRESHOLD, point)
             for view, probability in maps.items()}
    examples = []
    for candidate, rule in ruled(candidates(study.scan.views, views, mapper.map(study.scan))):
        view = candidate.lesion.view
        hit_a, hit_n = touched_boxes(candidate, views[view].mask, study.boxes.get(view, ()))
        examples.append(Example(study.key, study.patient_id, candidate, bool(hit_a), hit_a, hit_n, True, rule, fold))
    return examples


def box_counts(study: LabelledStudy, fold: int) -> dict[str, Any]:
    return {"patient": study.patient_id, "fold": fold,
            "abnormal_boxes": sum(b.kind == "Abnormal" for boxes in study.boxes.values() for b in boxes),
            "normal_boxes": sum(b.kind == "Normal" for boxes in study.boxes.values() for b in boxes)}


def out_of_fold_examples(cv: Path, roots: Sequence[Path], mapper: AnatomyMapper,
                         peak: float) -> tuple[list[Example], dict[str, dict[str, Any]]]:
    """Every held-out study's candidates from ``cv``'s saved maps, and each study's fold and box counts."""
    judged = judged_studies(roots)
    folds = sorted(int(f.name[4:]) for f in cv.glob("fold*") if f.name[4:].isdigit() and (f / "oof.npz").is_file())
    if len(folds) < 3:
        raise ValueError(f"{cv}: {len(folds)} fold(s) with saved maps; the nested table needs three")
    examples, studies = [], {}
    for fold in folds:
        maps, _ = saved_maps(cv, fold, judged)
        for key, views in maps.items():
            studies[key] = box_counts(judged[key], fold)
            examples += study_examples(judged[key], views, mapper, peak, fold)
        log.info("fold %d: %d studies, %d candidates so far", fold, len(maps), len(examples))
    return examples, studies


def simulated_scan(study, seed: int) -> BoneScan:
    """A simulated study as the node reads it (through its DICOM writer and view loader)."""
    from dicomnode.synth.dicom import StudyIdentity, nm_dataset
    from dicomnode.segmentation.views import load_scan

    return load_scan([nm_dataset(study, StudyIdentity(seed=seed, index=1), (View.ANTERIOR, View.POSTERIOR), 1)])


def simulated_examples(seeds: range, segmenter: Segmenter, mapper: AnatomyMapper, peak: float) -> list[Example]:
    """Candidates of normal-variant studies (every variant, with and without metastases)."""
    from dicomnode.synth.simulate import simulate_study
    from dicomnode.synth.variants import VARIANTS

    examples = []
    point = OperatingPoint(peak_threshold=peak)
    for seed in seeds:
        variant = VARIANTS[seed % len(VARIANTS)]
        study = simulate_study(seed, variant=variant, metastases=bool(seed // len(VARIANTS) % 2))
        scan = simulated_scan(study, seed)
        result = with_candidates(segmenter.segment(scan), point)
        for candidate, rule in ruled(candidates(scan.views, result.views, mapper.map(scan))):
            view = candidate.lesion.view
            r0, c0, r1, c1 = candidate.lesion.bbox
            lesion = bool(study.truth[view][r0:r1, c0:c1].any())
            examples.append(Example(f"sim-{seed}", f"sim-{seed}", candidate, lesion, frozenset(), frozenset(),
                                    False, rule))
    return examples


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression with balanced class weights, by Newton's method (IRLS)."""
    n, k = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    positives = max(int(y.sum()), 1)
    sample = np.where(y, n / (2 * positives), n / (2 * max(n - positives, 1)))
    beta = np.zeros(k + 1)
    penalty = np.diag([l2] * k + [0.0])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(design @ beta)))
        gradient = design.T @ (sample * (p - y)) + penalty @ beta
        hessian = (design * (sample * p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:k], float(beta[k])


def _learnable(examples: Sequence[Example]) -> list[Example]:
    return [e for e in examples if e.rule is None]


def _weights(examples: Sequence[Example]) -> SecondStage:
    """The logistic model on the learnable ``examples`` (threshold not yet chosen)."""
    learnable = _learnable(examples)
    x = np.stack([e.candidate.features() for e in learnable])
    y = np.array([e.lesion for e in learnable])
    if y.all() or not y.any():
        raise ValueError("the second stage needs lesion and non-lesion candidates")
    mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
    weights, bias = logistic_fit((x - mean) / scale, y)
    return SecondStage(tuple(map(float, weights)), float(bias), 0.5, tuple(map(float, mean)), tuple(map(float, scale)))


def out_of_fold_scores(real: Sequence[Example], simulated: Sequence[Example]) -> list[tuple[Example, float]]:
    """Each learnable real example with the score of the stage fitted on the other folds (and ``simulated``)."""
    scored = []
    for fold in sorted({e.fold for e in real}):
        stage = _weights([e for e in real if e.fold != fold] + list(simulated))
        scored += [(e, stage.score(e.candidate.features())) for e in _learnable(real) if e.fold == fold]
    return scored


def threshold_at(scored: Sequence[tuple[Example, float]], studies: int, max_fp: float) -> float:
    """The lowest score threshold whose non-lesions stay within ``max_fp`` per study."""
    negatives = np.sort([s for e, s in scored if not e.lesion])[::-1]
    allowed = int(np.floor(max_fp * studies))
    return float(min(max(negatives[allowed] + 1e-9, 1e-6), 1.0)) if allowed < negatives.size else 1e-6


def fit(real: Sequence[Example], simulated: Sequence[Example], studies: int, max_fp: float,
        peak: float, scored: Sequence[tuple[Example, float]] | None = None) -> SecondStage:
    """The stage fitted on every example; threshold and calibration from its out-of-fold scores
    (module docstring; ``scored``: those scores where the caller has them, :func:`out_of_fold_scores`)."""
    stage = _weights(list(real) + list(simulated))
    scored = out_of_fold_scores(real, simulated) if scored is None else scored
    calibration = fit_platt([s for _, s in scored], [e.lesion for e, _ in scored])
    return SecondStage(stage.weights, stage.bias, threshold_at(scored, studies, max_fp), stage.mean, stage.scale,
                       candidate_peak=peak, calibration=calibration)


def _study_scores(kept: Sequence[Example], studies: Mapping[str, Mapping[str, Any]],
                  study_score: Mapping[str, float]) -> list[StudyScore]:
    """Each study's boxes found and false positives by the reported ``kept`` candidates, and its score."""
    return [StudyScore(s["patient"], s["abnormal_boxes"],
                       len(set().union(*(e.abnormal_boxes for e in kept if e.study == key))),
                       sum(not e.lesion for e in kept if e.study == key), study_score.get(key, 0.0))
            for key, s in studies.items()]


def box_scores(per_study: Sequence[StudyScore], kept: Sequence[Example],
               studies: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Lesion sensitivity, mean per-study sensitivity, false positives per study and study AUC of
    ``per_study`` (:func:`dicomnode.train.bootstrap.measures`), and the ``Normal`` boxes the reported
    ``kept`` candidates mark (:mod:`dicomnode.train.boxscore` defines each)."""
    marked = len({(e.study, b) for e in kept for b in e.normal_boxes})
    return {**measures(per_study),
            "normal_marked_fraction": marked / max(sum(s["normal_boxes"] for s in studies.values()), 1)}


def _highest(scored: Sequence[tuple[Example, float]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for e, score in scored:
        best[e.study] = max(best.get(e.study, 0.0), score)
    return best


def crossvalidate(real: Sequence[Example], simulated: Sequence[Example], studies: Mapping[str, Mapping[str, Any]],
                  max_fp: float, runs: int = 2000) -> dict[str, Any]:
    """The nested table of the module docstring: per fold, then mean ± std over folds, and the
    difference stage − peak over all studies with its patient-bootstrap 95 % interval
    (:func:`dicomnode.train.bootstrap.differences`)."""
    rows: dict[str, list[dict[str, float]]] = {"peak": [], "stage": [], "ceiling": []}
    per_study: dict[str, list[StudyScore]] = {"peak": [], "stage": []}
    for fold in sorted({e.fold for e in real}):
        train = [e for e in real if e.fold != fold]
        held = _learnable([e for e in real if e.fold == fold])
        train_studies = sum(s["fold"] != fold for s in studies.values())
        mine = {k: s for k, s in studies.items() if s["fold"] == fold}
        stage = _weights(train + list(simulated))
        readings = {
            "peak": ([(e, e.candidate.probability) for e in held],
                     threshold_at([(e, e.candidate.probability) for e in _learnable(train)], train_studies, max_fp)),
            "stage": ([(e, stage.score(e.candidate.features())) for e in held],
                      threshold_at(out_of_fold_scores(train, simulated), train_studies, max_fp)),
        }
        for name, (scored, threshold) in readings.items():
            kept = [e for e, score in scored if score >= threshold]
            found = _study_scores(kept, mine, _highest(scored))
            rows[name].append(box_scores(found, kept, mine))
            per_study[name] += found
        highest_peak = _highest(readings["peak"][0])
        rows["ceiling"].append(box_scores(_study_scores(held, mine, highest_peak), held, mine))
    table: dict[str, Any] = {name: {"folds": values, **mean_std(values, MEASURES)} for name, values in rows.items()}
    table["stage_minus_peak"] = {name: dataclasses.asdict(interval) for name, interval in
                                 differences(per_study["stage"], per_study["peak"], runs=runs,
                                             names=BOOTSTRAPPED).items()}
    return table


ROWS = {"ceiling": "every candidate down to the candidate peak + fixed rules (no threshold)",
        "peak": "lesion model's peak + fixed rules, peak threshold nested",
        "stage": "lesion model + fixed rules + learned second stage, nested"}


def markdown(table: Mapping[str, Any], max_fp: float) -> str:
    lines = [f"Out of fold, mean ± std over folds; thresholds chosen on the other folds at ≤ {max_fp:g} "
             "false positives per study.", "",
             "| reading | " + " | ".join(m.replace("_", " ") for m in MEASURES) + " |", "|---" * (len(MEASURES) + 1) + "|"]
    for name, label in ROWS.items():
        cells = [f"{table[name][m]['mean']:.3f} ± {table[name][m]['std']:.3f}" if m in table[name] else "–"
                 for m in MEASURES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Second stage − peak, over all studies (pooled), patient-bootstrap 95 % interval: " + "; ".join(
        f"{name.replace('_', ' ')} {d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        for name, d in table["stage_minus_peak"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.train.secondstage", description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=Path, help="a dicomnode.train.crossval run of the shipped lesion model's recipe")
    parser.add_argument("--data", type=Path, action="append", help="the run's data folders, same order (repeatable)")
    parser.add_argument("--sim-per-variant", type=int, default=0,
                        help="simulated studies per normal variant added to the fit (default none)")
    parser.add_argument("--sim-seed", type=int, default=700000)
    parser.add_argument("--candidate-peak", type=float, default=0.5,
                        help="the stage judges the lesion model's components down to this peak probability")
    parser.add_argument("--from-examples", action="store_true",
                        help="refit from the candidates saved by a previous run (--examples)")
    parser.add_argument("--examples", type=Path, default=Path("runs/secondstage-examples.pkl"))
    parser.add_argument("--max-fp", type=float, default=0.5)
    parser.add_argument("--anatomy", type=Path, default=DEFAULT_ANATOMY_CARD)
    parser.add_argument("--out", type=Path, default=Path("dicomnode/segmentation/weights/second-stage.json"))
    args = parser.parse_args(argv)
    if not args.from_examples and (args.cv is None or not args.data):
        parser.error("--cv and --data are needed (or --from-examples)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from dicomnode.synth.variants import VARIANTS

    segmenter = Segmenter.default()
    if args.cv is not None:
        preset = json.loads((args.cv / "crossval.json").read_text()).get("preset")
        if preset != segmenter.card.training.get("preset"):
            parser.error(f"{args.cv} did not cross-validate the shipped lesion model's recipe: its candidates "
                         "are not the shipped model's")
    seeds = range(args.sim_seed, args.sim_seed + 2 * len(VARIANTS) * args.sim_per_variant)
    if args.from_examples:
        with open(args.examples, "rb") as stream:
            saved = pickle.load(stream)
        real, simulated, studies = saved["real"], saved["simulated"], saved["studies"]
    else:
        mapper = AnatomyMapper.from_card(args.anatomy)
        real, studies = out_of_fold_examples(args.cv, args.data, mapper, args.candidate_peak)
        simulated = simulated_examples(seeds, segmenter, mapper, args.candidate_peak)
        args.examples.parent.mkdir(parents=True, exist_ok=True)
        with open(args.examples, "wb") as stream:  # for --from-examples: refits without the models
            pickle.dump({"real": real, "simulated": simulated, "studies": studies}, stream)
    log.info("%d real candidates (%d lesions), %d simulated (%d lesions)", len(real),
             sum(e.lesion for e in real), len(simulated), sum(e.lesion for e in simulated))
    table = crossvalidate(real, simulated, studies, args.max_fp)
    scored = out_of_fold_scores(real, simulated)
    stage = fit(real, simulated, len(studies), args.max_fp, args.candidate_peak, scored)
    labels = [e.lesion for e, _ in scored]
    training = {"command": " ".join(["python -m dicomnode.train.secondstage", *(argv if argv is not None else sys.argv[1:])]),
                "cross_validation": str(args.cv), "real_studies": len(studies), "real_candidates": len(real),
                "learnable_candidates": len(scored), "lesion_candidates": int(sum(labels)),
                "simulated_candidates": len(simulated),
                "simulated_seeds": f"{seeds.start}-{seeds.stop - 1}" if seeds else None,
                "max_false_positives_per_study": args.max_fp,
                "out_of_fold_reliability": {
                    "raw": {k: v for k, v in reliability([s for _, s in scored], labels).items() if k != "bins"},
                    "calibrated_in_sample": {k: v for k, v in reliability(
                        stage.calibration([s for _, s in scored]), labels).items() if k != "bins"}},
                "real_development_half": table}
    stage = SecondStage(stage.weights, stage.bias, stage.threshold, stage.mean, stage.scale, training,
                        stage.candidate_peak, stage.calibration, segmenter.card.version)
    stage.save(args.out)
    print(markdown(table, args.max_fp))


if __name__ == "__main__":
    main()
