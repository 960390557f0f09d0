"""Fit the second stage that judges each lesion candidate on the anatomy map (dicomnode.segmentation.judgement).

    python -m dicomnode.train.secondstage --real /work/shared/realdata/bs80k-wholebody --sim-per-variant 4 \
        --out dicomnode/segmentation/weights/second-stage.json

Candidates are the shipped lesion model's components, collected down to peak probability
``--collect-peak`` (0.5; the shipped operating point is 0.977) so that the table can say whether a
second stage ranks lesions the operating point drops; the saved stage judges candidates down to
``--candidate-peak`` (default: the shipped 0.977). Each is measured on the anatomy map
(:func:`dicomnode.segmentation.judgement.candidates`); those the fixed rules decide (urine, extra-osseous
uptake, injection site) are left out of the fit. Labels: on real studies a candidate touching an
``Abnormal`` box is a lesion, every other one (a ``Normal`` box or nothing) is not; on simulated
studies — the normal variants of :mod:`dicomnode.synth.variants`, with and without metastases — a
candidate overlapping the truth mask is a lesion. The model is an L2-penalised logistic regression
on standardised features with balanced class weights (:func:`logistic_fit`, Newton's method). Its
threshold keeps the false positives of the real studies within ``--max-fp`` per study. The table
printed (and kept in the stage's ``training``) is on the real development half: the shipped model
alone, with the fixed rules, and with the second stage cross-validated by patient (5 folds; each
fold scored by a stage fitted and thresholded without it). The candidates are saved (``--examples``)
so that ``--from-examples`` refits without running the models again.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicomnode.segmentation.anatomymap import DEFAULT_ANATOMY_CARD, AnatomyMapper
from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.judgement import Candidate, SecondStage, candidates, judge
from dicomnode.segmentation.reading import with_candidates
from dicomnode.segmentation.result import SegmentationResult
from dicomnode.segmentation.scan import BoneScan, View

log = logging.getLogger(__name__)


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


def candidate_result(segmenter: Segmenter, scan: BoneScan, peak: float) -> SegmentationResult:
    """The lesion model's result with components kept down to peak probability ``peak``."""
    point = dataclasses.replace(segmenter.card.operating_point, peak_threshold=peak)
    return with_candidates(segmenter.segment(scan), point)


def ruled(found: list[Candidate]) -> list[tuple[Candidate, str | None]]:
    """Each candidate with the fixed rule that dismisses it, or None (judge without a stage)."""
    return [(v.candidate, None if v.suspicious else v.reason) for v in judge(found, None)]


def _touches(candidate: Candidate, mask: np.ndarray, boxes) -> tuple[frozenset, frozenset]:
    from dicomnode.segmentation.postprocess import lesion_labels

    abnormal, normal = set(), set()
    components, _ = lesion_labels(mask)
    own = components == candidate.lesion.label
    for index, box in enumerate(boxes):
        if own[box.clipped(own.shape)].any():
            (abnormal if box.kind == "Abnormal" else normal).add((candidate.lesion.view.value, index))
    return frozenset(abnormal), frozenset(normal)


def real_examples(folder: Path, segmenter: Segmenter, mapper: AnatomyMapper, peak: float) -> tuple[list[Example], dict]:
    """Candidates of every BS-80K study under ``folder``, and each study's box counts."""
    from dicomnode.train.bs80k import load_wholebody_folder

    examples, studies = [], {}
    for study in load_wholebody_folder(folder):
        result = candidate_result(segmenter, study.scan, peak)
        anatomy = mapper.map(study.scan)
        abnormal = sum(b.kind == "Abnormal" for boxes in study.boxes.values() for b in boxes)
        normal = sum(b.kind == "Normal" for boxes in study.boxes.values() for b in boxes)
        studies[study.key] = {"patient": study.patient_id, "abnormal_boxes": abnormal, "normal_boxes": normal}
        for candidate, rule in ruled(candidates(study.scan.views, result.views, anatomy)):
            view = candidate.lesion.view
            hit_a, hit_n = _touches(candidate, result.views[view].mask, study.boxes.get(view, ()))
            examples.append(Example(study.key, study.patient_id, candidate, bool(hit_a), hit_a, hit_n, True, rule))
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
    for seed in seeds:
        variant = VARIANTS[seed % len(VARIANTS)]
        study = simulate_study(seed, variant=variant, metastases=bool(seed // len(VARIANTS) % 2))
        scan = simulated_scan(study, seed)
        result = candidate_result(segmenter, scan, peak)
        anatomy = mapper.map(scan)
        for candidate, rule in ruled(candidates(scan.views, result.views, anatomy)):
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


def fit(examples: list[Example], real_studies: int, max_fp: float, peak: float) -> SecondStage:
    """Logistic regression on the learnable ``examples``; threshold from the real ones (module docstring)."""
    examples = [e for e in examples if e.rule is None]
    x = np.stack([e.candidate.features() for e in examples])
    y = np.array([e.lesion for e in examples])
    mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
    weights, bias = logistic_fit((x - mean) / scale, y)
    stage = SecondStage(tuple(map(float, weights)), float(bias), 0.5, tuple(map(float, mean)), tuple(map(float, scale)))
    real = [e for e in examples if e.real]
    scores = np.array([stage.score(e.candidate.features()) for e in real])
    negatives = np.sort(scores[[not e.lesion for e in real]])[::-1]
    allowed = int(np.floor(max_fp * real_studies))
    threshold = float(negatives[allowed] + 1e-6) if allowed < len(negatives) else 0.0
    return SecondStage(stage.weights, stage.bias, min(max(threshold, 1e-6), 1.0), stage.mean, stage.scale,
                       candidate_peak=peak)


def box_scores(examples: list[Example], studies: dict, stage: SecondStage | None) -> dict[str, float]:
    """Lesion sensitivity, mean per-study sensitivity, false positives per study, Normal boxes marked
    and study AUC of the real ``examples`` kept by ``stage`` (None: every candidate)."""
    from dicomnode.train.boxscore import roc_auc

    kept = [e for e in examples if stage is None or (e.rule is None and stage.score(e.candidate.features()) >= stage.threshold)]
    found = {s: set() for s in studies}
    marked, fp, best = 0, 0, {s: 0.0 for s in studies}
    for e in kept:
        found[e.study] |= set(e.abnormal_boxes)
        fp += not e.lesion
    marked = len({(e.study, b) for e in kept for b in e.normal_boxes})
    for e in examples:
        score = e.candidate.probability if stage is None else stage.score(e.candidate.features())
        best[e.study] = max(best[e.study], score)
    boxes = sum(s["abnormal_boxes"] for s in studies.values())
    per_study = [len(found[k]) / s["abnormal_boxes"] for k, s in studies.items() if s["abnormal_boxes"]]
    return {"studies": len(studies), "lesion_sensitivity": round(sum(len(v) for v in found.values()) / max(boxes, 1), 4),
            "mean_study_sensitivity": round(float(np.mean(per_study)) if per_study else float("nan"), 4),
            "false_positives_per_study": round(fp / max(len(studies), 1), 4),
            "normal_marked_fraction": round(marked / max(sum(s["normal_boxes"] for s in studies.values()), 1), 4),
            "study_auc": round(roc_auc([best[k] for k in studies], [s["abnormal_boxes"] > 0 for s in studies.values()]), 4)}


def crossvalidate(real: list[Example], sim: list[Example], studies: dict, folds: int, max_fp: float,
                  peak: float, seed: int = 42) -> dict[str, float]:
    """Patient-level k-fold: out-of-fold scores of the real studies, pooled over the folds."""
    patients = sorted({s["patient"] for s in studies.values()})
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[i]: k % folds for k, i in enumerate(order)}
    from dicomnode.train.boxscore import roc_auc

    kept: list[Example] = []
    best = {key: 0.0 for key in studies}  # each study's highest out-of-fold score
    for fold in range(folds):
        train = [e for e in real if fold_of[e.patient] != fold]
        n_train = sum(fold_of[s["patient"]] != fold for s in studies.values())
        stage = fit(train + sim, n_train, max_fp, peak)
        for e in real:
            if fold_of[e.patient] == fold and e.rule is None:
                score = stage.score(e.candidate.features())
                best[e.study] = max(best[e.study], score)
                if score >= stage.threshold:
                    kept.append(e)
    auc = roc_auc([best[k] for k in studies], [s["abnormal_boxes"] > 0 for s in studies.values()])
    return box_scores(kept, studies, None) | {"study_auc": round(auc, 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="BS-80K whole-body folder (development half)")
    parser.add_argument("--sim-per-variant", type=int, default=8)
    parser.add_argument("--sim-seed", type=int, default=700000)
    parser.add_argument("--collect-peak", type=float, default=0.5,
                        help="candidates are collected down to this peak probability")
    parser.add_argument("--candidate-peak", type=float, default=0.977,
                        help="the saved stage judges candidates down to this peak probability")
    parser.add_argument("--from-examples", action="store_true",
                        help="refit from the candidates saved by a previous run (--examples)")
    parser.add_argument("--examples", type=Path, default=Path("runs/secondstage-examples.pkl"))
    parser.add_argument("--max-fp", type=float, default=0.5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--anatomy", type=Path, default=DEFAULT_ANATOMY_CARD)
    parser.add_argument("--out", type=Path, default=Path("dicomnode/segmentation/weights/second-stage.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from dicomnode.synth.variants import VARIANTS

    segmenter = Segmenter.default()
    seeds = range(args.sim_seed, args.sim_seed + 2 * len(VARIANTS) * args.sim_per_variant)
    if args.from_examples:
        with open(args.examples, "rb") as stream:
            saved = pickle.load(stream)
        real, sim, studies = saved["real"], saved["sim"], saved["studies"]
    else:
        mapper = AnatomyMapper.from_card(args.anatomy)
        real, studies = real_examples(args.real, segmenter, mapper, args.collect_peak)
        sim = simulated_examples(seeds, segmenter, mapper, args.collect_peak)
        with open(args.examples, "wb") as stream:  # for --from-examples: refits without the models
            pickle.dump({"real": real, "sim": sim, "studies": studies}, stream)
    log.info("%d real candidates (%d lesions), %d simulated (%d lesions)", len(real),
             sum(e.lesion for e in real), len(sim), sum(e.lesion for e in sim))
    shipped = [e for e in real if e.candidate.probability >= segmenter.card.operating_point.peak_threshold]
    negatives = sorted((e.candidate.probability for e in real if not e.lesion), reverse=True)
    budget = negatives[int(args.max_fp * len(studies))] if int(args.max_fp * len(studies)) < len(negatives) else 0.0
    table = {"shipped model alone (its operating point)": box_scores(shipped, studies, None),
             f"shipped model alone, peak threshold raised to {args.max_fp} FP/study (chosen in-sample)":
                 box_scores([e for e in real if e.candidate.probability > budget], studies, None),
             "shipped operating point + fixed anatomy rules": box_scores([e for e in shipped if e.rule is None], studies, None),
             f"candidates at peak {args.collect_peak} + fixed rules, no second stage":
                 box_scores([e for e in real if e.rule is None], studies, None),
             f"candidates at peak {args.collect_peak} + second stage, {args.folds}-fold cross-validated by patient":
                 crossvalidate(real, sim, studies, args.folds, args.max_fp, args.collect_peak)}
    peak = segmenter.card.operating_point.peak_threshold
    above = [e for e in real if e.candidate.probability >= peak]
    table[f"candidates at the shipped peak {peak:.3f} + second stage, {args.folds}-fold cross-validated"] = (
        crossvalidate(above, [e for e in sim if e.candidate.probability >= peak], studies, args.folds,
                      args.max_fp, peak))
    chosen = [e for e in real + sim if e.candidate.probability >= args.candidate_peak]
    stage = fit(chosen, len(studies), args.max_fp, args.candidate_peak)
    training = {"command": "python -m dicomnode.train.secondstage " + " ".join(argv or []),
                "real_studies": len(studies), "real_candidates": len(real), "simulated_candidates": len(sim),
                "simulated_seeds": f"{seeds.start}-{seeds.stop - 1}", "candidate_peak_threshold": args.candidate_peak,
                "collected_down_to_peak": args.collect_peak,
                "max_false_positives_per_study": args.max_fp, "real_development_half": table}
    stage = SecondStage(stage.weights, stage.bias, stage.threshold, stage.mean, stage.scale, training,
                        args.candidate_peak)
    stage.save(args.out)
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
