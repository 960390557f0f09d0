"""The in-memory simulation: physics that shows, truth that lies on bone, mimics that never enter it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, label

from dicomnode.synth import simulate_study
from dicomnode.synth.anatomy import BONE_SITES
from dicomnode.synth.physics import system_fwhm_mm
from dicomnode.segmentation.scan import View

SEEDS = range(12)


@pytest.fixture(scope="module")
def studies():
    return [simulate_study(np.random.default_rng([77, seed])) for seed in SEEDS]


def _stored_px(study, view: View, row: float, col: float) -> tuple[int, int]:
    """A canonical (row, column) position in ``view``'s stored layout (posterior mirrored)."""
    r, c = int(round(row)), int(round(col))
    return (r, study.columns - 1 - c) if view is View.POSTERIOR else (r, c)


def test_same_seed_same_study_other_seed_other_study():
    a, b, c = simulate_study(3), simulate_study(3), simulate_study(4)
    for view in View:
        np.testing.assert_array_equal(a.images[view], b.images[view])
        np.testing.assert_array_equal(a.truth[view], b.truth[view])
    assert not np.array_equal(a.images[View.ANTERIOR], c.images[View.ANTERIOR])


def test_counts_are_poisson_around_the_expected_image(studies):
    study = studies[0]
    for view in View:
        counts = study.images[view].astype(float)
        expected = study.expected[view].astype(float)
        busy = expected > 20
        z = (counts[busy] - expected[busy]) / np.sqrt(expected[busy])
        assert abs(z.mean()) < 0.05
        assert 0.95 < z.std() < 1.05


def test_count_levels_are_clinical(studies):
    levels = [s.count_level for s in studies]
    assert 0.5e6 < min(levels) and max(levels) < 3.5e6
    assert len({round(level, -3) for level in levels}) == len(levels)  # they vary per study


def _column_centroid(image: np.ndarray) -> float:
    weights = image.sum(axis=0)
    return float((np.arange(image.shape[1]) * weights).sum() / weights.sum())


def test_posterior_is_stored_as_seen_from_behind(studies):
    """The patient's midline sits at column c in the anterior view and at (columns - 1 - c) in the
    stored posterior view; patients lie off-centre, so an unmirrored posterior would give away."""
    for study in studies:
        ant = study.expected[View.ANTERIOR]
        post = study.expected[View.POSTERIOR]
        c_ant, c_post = _column_centroid(ant), _column_centroid(post)
        assert abs(c_ant + c_post - (study.columns - 1)) < 1.0
        if abs(study.patient.shift_mm) > 10.0:
            assert abs(c_ant - c_post) > 4.0
        mirrored = np.corrcoef(ant.ravel(), post[:, ::-1].ravel())[0, 1]
        assert mirrored > np.corrcoef(ant.ravel(), post.ravel())[0, 1]
        np.testing.assert_array_equal(study.bone_labels[View.POSTERIOR],
                                      study.bone_labels[View.ANTERIOR][:, ::-1])


def _region_mean(study, view: View, site: str) -> float:
    region = study.bone_labels[view] == BONE_SITES.index(site) + 1
    return float(study.expected[view][region].mean())


def _anterior_to_posterior(study, site: str) -> float:
    return _region_mean(study, View.ANTERIOR, site) / _region_mean(study, View.POSTERIOR, site)


def test_depth_decides_which_view_shows_a_bone_better(studies):
    """Spine and scapulae lie posteriorly, patellae anteriorly; the sternum overlies the spine, so
    its region is relatively (not absolutely) brighter anteriorly than the spine's."""
    for study in studies:
        assert _anterior_to_posterior(study, "thoracic_spine") < 0.7
        assert _anterior_to_posterior(study, "scapula") < 0.9
        assert _anterior_to_posterior(study, "patella") > 1.1
        assert _anterior_to_posterior(study, "sternum") > 1.2 * _anterior_to_posterior(study, "thoracic_spine")


def test_bladder_is_hotter_than_bone_and_bone_hotter_than_soft_tissue(studies):
    for study in studies:
        for view in View:
            image = study.expected[view]
            bones = study.bone_labels[view] > 0
            body = image > 0.02 * np.percentile(image, 99.9)
            soft = body & ~binary_dilation(bones, iterations=4)
            spine = study.bone_labels[view] == BONE_SITES.index("thoracic_spine") + 1
            bladder = study.mimic_positions_px[[m.kind for m in study.mimics].index("bladder")]
            assert image[_stored_px(study, view, *bladder)] > np.percentile(image[bones], 99)
            if view is View.POSTERIOR:
                assert np.median(image[spine]) > 2.0 * np.median(image[soft])
            assert np.median(image[bones]) > 1.2 * np.median(image[soft])


def test_truth_masks_lie_on_bone(studies):
    """Every truth pixel lies on the bone map grown by half the worst collimator FWHM; most on bone."""
    seen = 0
    for study in studies:
        grow = int(np.ceil(system_fwhm_mm(250.0) / 2 / study.spacing_mm))
        for view in View:
            truth = study.truth[view] > 0
            if not truth.any():
                continue
            seen += 1
            bone = study.bone_labels[view] > 0
            assert binary_dilation(bone, iterations=grow)[truth].all()
            assert bone[truth].mean() > 0.85
    assert seen >= 5


def test_truth_holds_only_visible_lesions_and_never_mimics(studies):
    for study in studies:
        for view in View:
            truth = study.truth[view]
            visible = [t for t in study.lesions if t.visible[view]]
            components, n = label(truth)
            # every connected component contains the centre of a lesion visible in this view
            centres = {components[_stored_px(study, view, *t.position_px)] for t in visible}
            assert set(range(1, n + 1)) <= centres
            for t in study.lesions:
                if not t.visible[view]:
                    assert t.snr[view] < 5.0 or t.contrast[view] < 0.10
            # focal mimics (degenerative joints, fractures, injection) stay outside the truth
            for mimic, (row, col) in zip(study.mimics, study.mimic_positions_px):
                if not mimic.focal:
                    continue
                r, c = _stored_px(study, view, row, col)
                radius = int(np.ceil(mimic.radius_mm / study.spacing_mm))
                window = truth[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1]
                assert not window.any(), (mimic.kind, mimic.site)


def test_a_lesion_can_be_visible_in_one_view_only():
    one_view = 0
    for seed in range(40):
        study = simulate_study(np.random.default_rng([78, seed]))
        one_view += sum(t.visible[View.ANTERIOR] != t.visible[View.POSTERIOR] for t in study.lesions)
        if one_view >= 3:
            break
    assert one_view >= 3


def test_mimics_appear_in_the_image():
    """Focal mimics are really drawn: their pixels are hotter than the same place without them."""
    found = set()
    for seed in range(40):
        study = simulate_study(np.random.default_rng([79, seed]))
        for mimic, (row, col) in zip(study.mimics, study.mimic_positions_px):
            if not mimic.focal:
                continue
            r, c = _stored_px(study, View.ANTERIOR, row, col)
            image = study.expected[View.ANTERIOR]
            ring = image[max(r - 12, 0):r + 13, max(c - 12, 0):c + 13]
            assert image[r, c] > np.percentile(ring, 50), mimic
            found.add(mimic.kind)
        if {"degenerative_joint", "injection_site"} <= found:
            break
    assert {"degenerative_joint", "injection_site"} <= found


def test_patients_vary(studies):
    heights = [s.patient.height_mm for s in studies]
    poses = {s.patient.arm_pose for s in studies}
    assert max(heights) - min(heights) > 80
    assert len(poses) >= 2
    assert len({round(s.patient.shift_mm) for s in studies}) >= 8


def test_adolescents_have_hot_symmetric_growth_plates_that_are_never_the_truth():
    """The "adolescent" population: open physes at shoulders and knees on both sides, brighter than
    the shaft of their bone, alike left and right, drawn into the image and never into the truth;
    no degenerative joints. Adults keep closed growth plates."""
    for seed in range(3):
        study = simulate_study(np.random.default_rng([80, seed]), population="adolescent")
        assert 10 <= study.patient.age_years <= 17 and 2.0 <= study.patient.physis_to_bone <= 4.0
        kinds = [m.kind for m in study.mimics]
        assert kinds.count("physis") == 6 and "degenerative_joint" not in kinds
        image = study.expected[View.ANTERIOR]
        at = {}
        for mimic, (row, col) in zip(study.mimics, study.mimic_positions_px):
            if mimic.kind != "physis":
                continue
            r, c = int(round(row)), int(round(col))
            assert not study.truth[View.ANTERIOR][r - 3:r + 4, c - 3:c + 4].any()
            at[mimic.site] = float(image[r - 1:r + 2, c - 1:c + 2].mean())
            if "femoral" in mimic.site or "tibial" in mimic.site:  # the shaft, 25 pixels up or down the leg
                shaft = r - 25 if "femoral" in mimic.site else r + 25
                assert at[mimic.site] > 1.3 * image[shaft - 1:shaft + 2, c - 1:c + 2].mean(), mimic.site
        for part in ("humeral head", "femoral condyles", "tibial plateau"):
            right, left = at[f"right {part} physis"], at[f"left {part} physis"]
            assert abs(right - left) / max(right, left) < 0.25, part
    adult = simulate_study(3)
    assert adult.patient.physis_to_bone == 0 and all(m.kind != "physis" for m in adult.mimics)
