"""The learned second stage (dicomnode.train.secondstage): candidates from out-of-fold maps labelled
by their boxes, the nested fit (threshold and calibration from scores the stage never fitted), and
the reading using a stage only for the lesion model it was fitted on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dicomnode.segmentation.anatomy import AnatomyLabel
from dicomnode.segmentation.anatomymap import AnatomyMapper
from dicomnode.segmentation.judgement import FEATURES, Candidate, SecondStage
from dicomnode.segmentation.result import Lesion
from dicomnode.segmentation.scan import View
from dicomnode.train import secondstage
from dicomnode.train.secondstage import Example


def _example(fold: int, lesion: bool, probability: float, contrast: float, study: str) -> Example:
    spot = Lesion(View.ANTERIOR, 1, 10, 50.0, (100.0, 30.0), (95, 25, 105, 35), 100.0, 50.0)
    candidate = Candidate(spot, AnatomyLabel.THORACIC_SPINE, None, contrast, 0.0, False, 0.0, 0.0, probability)
    boxes = frozenset({("anterior", hash((study, contrast)) % 1000)}) if lesion else frozenset()
    return Example(study, study, candidate, lesion, boxes, frozenset(), True, None, fold)


def _separable_by_contrast(seed: int = 0) -> tuple[list[Example], dict]:
    """Three folds of studies whose lesions are hotter than bone but no more probable than the rest:
    the lesion model's peak ranks them at random, the contrast separates them."""
    rng = np.random.default_rng(seed)
    examples, studies = [], {}
    for fold in (1, 2, 3):
        for s in range(6):
            key = f"f{fold}s{s}"
            lesions = int(s % 2 == 0)
            studies[key] = {"patient": key, "fold": fold, "abnormal_boxes": lesions, "normal_boxes": 0}
            if lesions:
                examples.append(_example(fold, True, rng.uniform(0.6, 0.99), rng.uniform(4, 6), key))
            for _ in range(3):
                examples.append(_example(fold, False, rng.uniform(0.6, 0.99), rng.uniform(1, 3), key))
    return examples, studies


def test_out_of_fold_scores_come_from_stages_fitted_without_the_fold():
    examples, _ = _separable_by_contrast()
    scored = secondstage.out_of_fold_scores(examples, [])
    assert len(scored) == len(examples)
    for fold in (1, 2, 3):
        without = secondstage._weights([e for e in examples if e.fold != fold])
        with_it = secondstage._weights(examples)
        mine = [(e, s) for e, s in scored if e.fold == fold]
        assert all(s == pytest.approx(without.score(e.candidate.features())) for e, s in mine)
        assert any(s != pytest.approx(with_it.score(e.candidate.features())) for e, s in mine)


def test_the_threshold_keeps_the_false_positive_budget():
    examples, studies = _separable_by_contrast()
    scored = [(e, float(i) / len(examples)) for i, e in enumerate(examples)]
    for max_fp in (0.0, 0.5, 1.0, 2.0):
        threshold = secondstage.threshold_at(scored, len(studies), max_fp)
        false_positives = sum(1 for e, s in scored if not e.lesion and s >= threshold)
        assert false_positives <= max_fp * len(studies)
        assert false_positives == min(int(max_fp * len(studies)), sum(not e.lesion for e in examples))


def test_the_fitted_stage_ranks_by_what_separates_and_is_thresholded_out_of_fold():
    examples, studies = _separable_by_contrast()
    stage = secondstage.fit(examples, [], len(studies), 0.5, 0.5)
    scored = secondstage.out_of_fold_scores(examples, [])
    assert stage.threshold == pytest.approx(secondstage.threshold_at(scored, len(studies), 0.5))
    assert stage.weights[FEATURES.index("log_contrast")] > abs(stage.weights[FEATURES.index("logit")])
    assert stage.calibration is not None and stage.candidate_peak == 0.5
    # the calibration maps the out-of-fold scores near the observed rate of lesions
    probabilities = stage.calibration([s for _, s in scored])
    rate = np.mean([e.lesion for e, _ in scored])
    assert abs(float(np.mean(probabilities)) - rate) < 0.05


def test_the_nested_table_shows_the_stage_beating_the_peak_where_contrast_separates():
    examples, studies = _separable_by_contrast()
    table = secondstage.crossvalidate(examples, [], studies, max_fp=0.5)
    assert table["stage"]["lesion_sensitivity"]["mean"] == pytest.approx(1.0)
    assert table["stage"]["lesion_sensitivity"]["mean"] > table["peak"]["lesion_sensitivity"]["mean"]
    assert table["stage"]["false_positives_per_study"]["mean"] <= 0.5
    assert table["ceiling"]["false_positives_per_study"]["mean"] == pytest.approx(3.0)
    assert "second stage" in secondstage.markdown(table, 0.5)


def test_a_stage_needs_both_kinds_of_candidate():
    examples, _ = _separable_by_contrast()
    with pytest.raises(ValueError, match="lesion and non-lesion"):
        secondstage._weights([e for e in examples if not e.lesion])


def test_candidates_of_saved_maps_are_labelled_by_the_boxes_they_touch(tmp_path):
    from dicomnode.train.datasets import load_training_data
    from tests.bs80k_fixtures import HotSpot, write_wholebody

    write_wholebody(tmp_path / "wholebody", "1", [HotSpot(60, 20, 3), HotSpot(200, 30, 3, abnormal=False)])
    (study,) = load_training_data([tmp_path / "wholebody"]).studies
    maps = {}
    for view, boxes in study.boxes.items():
        source = study.scan.views[view].source
        probability = np.zeros((source.rows, source.columns), np.float32)
        for box in boxes:
            probability[box.clipped(probability.shape)] = 0.9
        probability[10:13, 5:8] = 0.8  # a focus on nothing
        probability[20:23, 5:8] = 0.4  # below the candidate peak
        maps[view] = probability
    found = secondstage.study_examples(study, maps, AnatomyMapper.default(), peak=0.5, fold=3)
    assert len(found) == 3 * len(maps) and {e.fold for e in found} == {3}
    for view in maps:
        mine = [e for e in found if e.candidate.lesion.view is view]
        abnormal = [e for e in mine if e.abnormal_boxes]
        normal = [e for e in mine if e.normal_boxes]
        assert len(abnormal) == 1 and abnormal[0].lesion
        assert len(normal) == 1 and not normal[0].lesion
        assert sum(not e.abnormal_boxes and not e.normal_boxes and not e.lesion for e in mine) == 1
    counts = secondstage.box_counts(study, 3)
    assert counts["abnormal_boxes"] == 2 and counts["normal_boxes"] == 2 and counts["fold"] == 3


def test_the_reading_uses_a_stage_only_for_its_own_lesion_model(tmp_path):
    """A stage that dismisses everything, fitted for another lesion model, leaves the fixed rules to
    read the shipped model's result; for the shipped model it dismisses every learnable candidate."""
    from dicomnode.segmentation.inference import Segmenter
    from dicomnode.segmentation.reading import AnatomyReader
    from dicomnode.synth.simulate import simulate_study
    from dicomnode.train.secondstage import simulated_scan

    segmenter = Segmenter.default()
    scan = simulated_scan(simulate_study(40), 40)
    result = segmenter.segment(scan)
    assert any(r.lesions for r in result.views.values()), "the shipped model marks this study"
    refuse = SecondStage((0.0,) * len(FEATURES), -50.0, 0.5, (0.0,) * len(FEATURES), (1.0,) * len(FEATURES),
                         candidate_peak=None, lesion_model="another-model")
    mapper = AnatomyMapper.default()
    fixed = AnatomyReader(mapper, None).read(result, segmenter.card.operating_point)
    other = AnatomyReader(mapper, refuse).read(result, segmenter.card.operating_point)
    assert [r.lesions for r in other.views.values()] == [r.lesions for r in fixed.views.values()]
    mine = dataclasses.replace(refuse, lesion_model=segmenter.card.version)
    read = AnatomyReader(mapper, mine).read(result, segmenter.card.operating_point)
    assert not any(r.lesions for r in read.views.values())
    assert {d.reason for d in read.dismissed} >= {"physiological (second stage)"}
    kept = sum(len(r.lesions) for r in fixed.views.values())
    assert kept > 0
    assert sum(d.reason == "physiological (second stage)" for d in read.dismissed) == kept


def test_model_anatomy_second_stage_switches_the_learned_stage(tmp_path):
    """``[model.anatomy] second_stage``: the shipped stage judges the shipped lesion model's candidates
    unless the site turns it off; a site's own lesion model is read by the fixed rules alone."""
    from dicomnode.config import load_config
    from dicomnode.pipeline.models import load_segmenter

    shipped = load_segmenter("default", "cpu")
    assert shipped.reader is not None and shipped.reader.stage_for(shipped.card.version) is not None
    assert shipped.reader.stage.lesion_model == shipped.card.version
    off = load_segmenter("default", "cpu", second_stage=False)
    assert off.reader is not None and off.reader.stage is None
    baseline = load_segmenter("threshold", "cpu")
    assert baseline.reader.stage_for(baseline.card.version) is None
    path = tmp_path / "node.toml"
    path.write_text('[model.anatomy]\nsecond_stage = false\n')
    assert load_config(path).model.anatomy.second_stage is False
    path.write_text('[model.anatomy]\nsecond_stage = "sometimes"\n')
    with pytest.raises(Exception, match="second_stage"):
        load_config(path)
