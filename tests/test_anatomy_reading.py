"""The anatomy reading of lesion candidates (dicomnode.segmentation.judgement, dicomnode.segmentation.reading) on simulated
studies whose exact anatomy (dicomnode.synth.labels) stands in for the map: the fixed rules, the
features the second stage learns from, the sites; and the SR built from a read result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from dicomnode.synth.simulate import simulate_study
from dicomnode.segmentation.anatomy import AnatomyLabel, ViewAnatomy, anatomically_possible
from dicomnode.segmentation.calibration import Calibration
from dicomnode.segmentation.judgement import FEATURES, SecondStage, candidates, judge
from dicomnode.segmentation.postprocess import view_result
from dicomnode.segmentation.scan import View
from dicomnode.train.secondstage import simulated_scan


def _exact(study, scan) -> dict[View, ViewAnatomy]:
    return {view: ViewAnatomy(study.anatomy[view], study.midline, image.source)
            for view, image in scan.views.items()}


def _marked(study, scan, extra: dict[View, np.ndarray]):
    """Lesion results whose masks are the truth plus ``extra`` hot spots (probability 0.99 there)."""
    results = {}
    for view, image in scan.views.items():
        mask = (study.truth[view] > 0) | extra[view]
        results[view] = view_result(image, mask.astype(np.float32) * 0.99, 0.5)
    return results


def _blob(shape, row: float, column: float, radius: float = 4) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - row) ** 2 + (cols - column) ** 2 <= radius ** 2


@pytest.fixture(scope="module")
def bladder_study():
    study = simulate_study(31, variant="full-bladder")
    return study, simulated_scan(study, 31)


def test_a_hot_spot_on_the_bladder_is_urine_and_lesions_keep_their_bone_and_side(bladder_study):
    study, scan = bladder_study
    (row, column), = [p for m, p in zip(study.mimics, study.mimic_positions_px) if m.kind == "bladder"]
    extra = {View.ANTERIOR: _blob(study.truth[View.ANTERIOR].shape, row, column),
             View.POSTERIOR: _blob(study.truth[View.POSTERIOR].shape, row, scan.posterior.source.columns - 1 - column)}
    results = _marked(study, scan, extra)
    verdicts = judge(candidates(scan.views, results, _exact(study, scan)), None)
    on_bladder = [v for v in verdicts if v.candidate.region is AnatomyLabel.BLADDER]
    assert len(on_bladder) == 2 and all(not v.suspicious and v.reason == "urine" for v in on_bladder)
    kept = [v for v in verdicts if v.suspicious]
    assert kept and all(v.candidate.region.is_bone for v in kept)
    sided = 0
    for verdict in kept:
        lesion = verdict.candidate.lesion
        truth = [t for t in study.lesions if t.visible[lesion.view]
                 and np.hypot(*np.subtract(t.position_px, _canonical(scan, lesion))) < 6]
        bone = truth[0].lesion.bone if truth else ""
        if bone.split(" ")[0] in ("left", "right") and verdict.candidate.region.paired:
            assert verdict.candidate.site.startswith(bone.split(" ")[0]), (bone, verdict.candidate.site)
            sided += 1
    assert sided >= 1


def test_a_suspicious_focus_reports_the_cards_calibrated_probability(bladder_study):
    study, scan = bladder_study
    results = _marked(study, scan, {view: np.zeros(study.truth[view].shape, bool) for view in scan.views})
    found = candidates(scan.views, results, _exact(study, scan))
    calibration = Calibration(slope=0.5, intercept=-1.0)
    raw, calibrated = judge(found, None), judge(found, None, calibration)
    kept = [(r, c) for r, c in zip(raw, calibrated) if r.suspicious]
    assert kept and all(c.suspicious for _, c in kept)  # the calibration moves no verdict
    for r, c in kept:
        assert r.score == pytest.approx(0.99) and c.score == pytest.approx(calibration.probability(0.99))
        assert c.score < 0.9


def _canonical(scan, lesion) -> tuple[float, float]:
    source = scan.views[lesion.view].source
    row, column = lesion.centroid
    return row, (source.columns - 1 - column) if source.flip_lr else column


def test_injection_site_and_skin_contamination_are_not_bone_lesions():
    for seed, variant, reasons in ((32, "injection-site", {"injection site", "extra-osseous uptake",
                                                          "degenerative or traumatic (forearm or hand)"}),
                                   (34, "urine-contamination", {"extra-osseous uptake", "urine"})):
        study = simulate_study(seed, variant=variant, metastases=False)
        scan = simulated_scan(study, seed)
        extra = {}
        for view in View:
            spots = np.zeros(study.truth[view].shape, bool)
            for mimic, (row, column) in zip(study.mimics, study.mimic_positions_px):
                if mimic.kind in ("injection_site", "contamination"):
                    col = column if view is View.ANTERIOR else study.truth[view].shape[1] - 1 - column
                    spots |= _blob(spots.shape, row, col, 3)
            extra[view] = spots
        verdicts = judge(candidates(scan.views, _marked(study, scan, extra), _exact(study, scan)), None)
        assert verdicts, variant
        assert {v.reason for v in verdicts} <= reasons, (variant, [(v.reason, v.candidate.site) for v in verdicts])


def test_facial_and_forearm_hot_spots_are_physiological_and_a_spine_focus_is_suspicious(bladder_study):
    """The fixed region rules: a focus on the facial bones or a forearm/hand is not reported, one on
    the thoracic spine (the same size, the same probability) is."""
    study, scan = bladder_study
    anatomy = study.anatomy[View.ANTERIOR]
    extra = {View.ANTERIOR: np.zeros(anatomy.shape, bool), View.POSTERIOR: np.zeros(anatomy.shape, bool)}
    for label in (AnatomyLabel.FACIAL_BONES, AnatomyLabel.FOREARMS_AND_HANDS, AnatomyLabel.THORACIC_SPINE):
        inside = ndimage.binary_erosion(anatomy == label, iterations=2) & ~ndimage.binary_dilation(
            study.truth[View.ANTERIOR] > 0, iterations=8)
        points = np.argwhere(inside)
        assert len(points), label
        row, column = points[len(points) // 2]
        extra[View.ANTERIOR] |= _blob(anatomy.shape, row, column, 2)
    verdicts = judge(candidates(scan.views, _marked(study, scan, extra), _exact(study, scan)), None)
    by_region = {v.candidate.region: v for v in verdicts
                 if v.candidate.lesion.view is View.ANTERIOR and extra[View.ANTERIOR][
                     tuple(np.round(v.candidate.lesion.centroid).astype(int))]}
    assert not by_region[AnatomyLabel.FACIAL_BONES].suspicious
    assert by_region[AnatomyLabel.FACIAL_BONES].reason == "facial and dental uptake"
    assert not by_region[AnatomyLabel.FOREARMS_AND_HANDS].suspicious
    assert by_region[AnatomyLabel.FOREARMS_AND_HANDS].reason == "degenerative or traumatic (forearm or hand)"
    assert by_region[AnatomyLabel.THORACIC_SPINE].suspicious


def test_a_hot_spot_the_network_calls_a_femur_on_the_midline_is_not_reported_as_bone(bladder_study):
    """A map whose network names the bladder's hot spot a femur (as it does on some real scans) is
    overruled (no femur lies on the midline): beside the bladder label the hot spot is urine; where
    the network held nothing else there, soft tissue."""
    study, scan = bladder_study
    (row, column), = [p for m, p in zip(study.mimics, study.mimic_positions_px) if m.kind == "bladder"]
    shape = study.truth[View.ANTERIOR].shape
    spot = _blob(shape, row, column, 4)
    results = _marked(study, scan, {View.ANTERIOR: spot, View.POSTERIOR: np.zeros(shape, bool)})
    source = scan.anterior.source
    for painted, region, reason in ((_blob(shape, row, column, 8), AnatomyLabel.SOFT_TISSUE, "extra-osseous uptake"),
                                    (spot & (np.arange(shape[1]) < column), AnatomyLabel.BLADDER, "urine")):
        anatomy = _exact(study, scan)
        labels = source.to_canonical(anatomy[View.ANTERIOR].labels).copy()
        labels[spot] = AnatomyLabel.BLADDER
        labels[painted] = AnatomyLabel.FEMORA
        labels = anatomically_possible(labels, study.midline, scan.anterior.pixel_spacing[1])
        anatomy[View.ANTERIOR] = dataclasses.replace(anatomy[View.ANTERIOR], labels=source.to_stored(labels))
        (verdict,) = [v for v in judge(candidates(scan.views, results, anatomy), None)
                      if v.candidate.lesion.view is View.ANTERIOR and spot[
                          tuple(np.round(v.candidate.lesion.centroid).astype(int))]]
        assert verdict.candidate.region is region and verdict.reason == reason and not verdict.suspicious


def test_symmetric_knees_measure_symmetric_and_a_one_sided_focus_does_not():
    study = simulate_study(33, variant="degenerative-knees", metastases=False)
    scan = simulated_scan(study, 33)
    knees = [(m, p) for m, p in zip(study.mimics, study.mimic_positions_px) if m.site.endswith("knee")]
    assert len(knees) == 2
    extra = {View.ANTERIOR: np.zeros(study.truth[View.ANTERIOR].shape, bool)}
    for _, (row, column) in knees:
        extra[View.ANTERIOR] |= _blob(extra[View.ANTERIOR].shape, row, column, 4)
    extra[View.POSTERIOR] = np.zeros_like(extra[View.ANTERIOR])
    found = candidates(scan.views, _marked(study, scan, extra), _exact(study, scan))
    at_knees = [c for c in found if c.lesion.view is View.ANTERIOR]
    assert len(at_knees) == 2 and all(c.lateral for c in at_knees)
    assert all(abs(c.asymmetry) < np.log(1.6) for c in at_knees)  # the other knee is as hot
    assert {c.side for c in at_knees} == {"left", "right"}
    assert {c.region for c in at_knees} <= {AnatomyLabel.FEMORA, AnatomyLabel.LOWER_LEGS_AND_FEET}
    # a focus on one femoral shaft only: its mirror point is normal bone, the asymmetry is large
    femur = np.argwhere(study.anatomy[View.ANTERIOR] == AnatomyLabel.FEMORA)
    row, column = femur[len(femur) // 2]
    one = {View.ANTERIOR: _blob(extra[View.ANTERIOR].shape, row, column, 4), View.POSTERIOR: extra[View.POSTERIOR]}
    image = scan.anterior
    boosted = dataclasses.replace(image, counts=image.counts + 4 * image.counts.max() * one[View.ANTERIOR])
    scan = dataclasses.replace(scan, anterior=boosted)
    (single,) = [c for c in candidates(scan.views, _marked(study, scan, one), _exact(study, scan))
                 if c.lesion.view is View.ANTERIOR]
    assert single.asymmetry > np.log(2.0)


def test_a_focus_hot_in_the_other_views_counts_measures_so_though_the_model_missed_it_there():
    """Other-view contrast reads the counts, not the lesion model: a focus boosted in both views'
    counts but marked in the anterior only measures a higher other-view contrast than one boosted
    in the anterior only; the AP agreement (the posterior's probability) is 0 for both."""
    study = simulate_study(33, variant="degenerative-knees", metastases=False)
    scan = simulated_scan(study, 33)
    femur = np.argwhere(study.anatomy[View.ANTERIOR] == AnatomyLabel.FEMORA)
    row, column = femur[len(femur) // 2]
    spot = _blob(study.truth[View.ANTERIOR].shape, row, column, 4)  # the anterior's stored layout is canonical
    marks = {View.ANTERIOR: spot, View.POSTERIOR: np.zeros_like(spot)}
    measured = {}
    for views in ((View.ANTERIOR,), (View.ANTERIOR, View.POSTERIOR)):
        boosted = scan
        for view in views:
            image = boosted.views[view]  # counts are canonical: the same (row, column) in both views
            field = "anterior" if view is View.ANTERIOR else "posterior"
            boosted = dataclasses.replace(boosted, **{field: dataclasses.replace(
                image, counts=image.counts + 4 * image.counts.max() * spot)})
        (focus,) = [c for c in candidates(boosted.views, _marked(study, boosted, marks), _exact(study, boosted))
                    if c.lesion.view is View.ANTERIOR]
        assert focus.ap_agreement == 0.0
        measured[views] = focus.other_view_contrast
    assert measured[(View.ANTERIOR, View.POSTERIOR)] > measured[(View.ANTERIOR,)] + np.log(2.0)


def test_the_second_stage_scores_what_its_weights_say(tmp_path):
    """A stage that weighs only asymmetry keeps the asymmetric focus and dismisses the symmetric one."""
    weights = [0.0] * len(FEATURES)
    weights[FEATURES.index("asymmetry")] = 4.0
    stage = SecondStage(tuple(weights), 0.0, 0.5, (0.0,) * len(FEATURES), (1.0,) * len(FEATURES),
                        calibration=Calibration(0.5, -1.0), lesion_model="default-x")
    stage.save(tmp_path / "stage.json")
    loaded = SecondStage.load(tmp_path / "stage.json")
    assert loaded == stage
    assert loaded.judges("default-x") and not loaded.judges("site-y")
    assert loaded.probability(0.5) == pytest.approx(Calibration(0.5, -1.0).probability(0.5))
    features = np.zeros(len(FEATURES))
    assert loaded.score(features) == pytest.approx(0.5)
    features[FEATURES.index("asymmetry")] = 1.0
    assert loaded.score(features) > 0.95
    features[FEATURES.index("asymmetry")] = -1.0
    assert loaded.score(features) < 0.05
    bad = (tmp_path / "stage.json").read_text().replace('"asymmetry"', '"symmetry"')
    (tmp_path / "bad.json").write_text(bad)
    with pytest.raises(ValueError, match="features"):
        SecondStage.load(tmp_path / "bad.json")


def test_components_and_lesion_labels_agree():
    """candidates() finds each lesion's pixels by its label (postprocess numbers components in raster order)."""
    study = simulate_study(35)
    scan = simulated_scan(study, 35)
    results = _marked(study, scan, {v: np.zeros(study.truth[v].shape, bool) for v in View})
    found = candidates(scan.views, results, _exact(study, scan))
    assert len(found) == sum(len(r.lesions) for r in results.values())
    for candidate in found:
        _labels, _ = ndimage.label(results[candidate.lesion.view].mask)
        assert candidate.probability == pytest.approx(0.99, abs=1e-6)


def test_physiological_removed_zeroes_what_the_reading_dismisses_and_keeps_the_rest(bladder_study):
    """Scoring the whole reading from saved maps: the shipped map finds the bladder of a simulated
    full-bladder study, so a hot spot there leaves the map, and the components it keeps are untouched."""
    from dicomnode.segmentation.reading import AnatomyReader, physiological_removed

    study, scan = bladder_study
    reader = AnatomyReader.default()
    assert reader is not None, "the anatomy map is shipped"
    (row, column), = [p for m, p in zip(study.mimics, study.mimic_positions_px) if m.kind == "bladder"]
    extra = {View.ANTERIOR: _blob(study.truth[View.ANTERIOR].shape, row, column),
             View.POSTERIOR: _blob(study.truth[View.POSTERIOR].shape, row, scan.posterior.source.columns - 1 - column)}
    maps = {view: r.probability for view, r in _marked(study, scan, extra).items()}
    read = physiological_removed(reader, scan, maps, 0.5)
    for view in scan.views:
        assert read[view][extra[view]].max() == 0.0, view  # the bladder hot spot is gone
        changed = read[view] != maps[view]
        assert not (changed & ~(maps[view] >= 0.5)).any()  # only component pixels change
    kept = [view for view in scan.views if (read[view][study.truth[view] > 0] > 0).any()]
    assert kept, "the truth lesions on bone stay"
