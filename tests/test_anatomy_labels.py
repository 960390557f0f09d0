"""The simulator's exact anatomy labels and midline (dicomnode.synth.labels), and the augmentation of
the anatomy map's training views toward real scans (dicomnode.train.anatomydata)."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.synth.simulate import simulate_study
from dicomnode.segmentation.anatomy import AnatomyLabel, Midline, ViewAnatomy, anatomically_possible, fit_midline
from dicomnode.segmentation.scan import View, ViewRule, ViewSource
from dicomnode.train.anatomydata import MAP_SHAPE, SimulatedView, _cut, augment, simulated_views

ROWS, COLUMNS = 512, 128


@pytest.fixture(scope="module")
def study():
    return simulate_study(11, rows=ROWS, columns=COLUMNS, spacing_mm=4.8)


def _anatomy(study, view: View) -> ViewAnatomy:
    source = ViewSource("1.2.3", "1.2.840.10008.5.1.4.1.1.20", "1.2.3.4", 1 if view is View.ANTERIOR else 2,
                        ROWS, COLUMNS, flip_lr=view is View.POSTERIOR, flip_ud=False, rule=ViewRule.VIEW_CODE)
    return ViewAnatomy(study.anatomy[view], study.midline, source)


def test_the_bladder_is_labelled_where_the_simulator_put_it_in_both_views(study):
    (row, column), = [p for m, p in zip(study.mimics, study.mimic_positions_px) if m.kind == "bladder"]
    assert _anatomy(study, View.ANTERIOR).label_at(row, column) is AnatomyLabel.BLADDER
    assert _anatomy(study, View.POSTERIOR).label_at(row, COLUMNS - 1 - column) is AnatomyLabel.BLADDER
    bladder = study.anatomy[View.ANTERIOR] == AnatomyLabel.BLADDER
    rows, cols = np.nonzero(bladder)
    assert abs(rows.mean() - row) < 2 and abs(cols.mean() - column) < 2  # centred on it, not beside it


def test_views_share_one_anatomy_mirrored_left_right(study):
    assert np.array_equal(study.anatomy[View.POSTERIOR], study.anatomy[View.ANTERIOR][:, ::-1])


def test_left_and_right_follow_each_views_orientation(study):
    """The patient's left kidney is right of the midline in the anterior view as stored (L\\F) and
    left of it in the posterior view as stored (R\\F); ViewAnatomy.side names it left in both."""
    kidneys = study.anatomy[View.ANTERIOR] == AnatomyLabel.KIDNEYS
    rows, cols = np.nonzero(kidneys)
    midline = study.midline.column(rows)
    left = cols > midline
    assert left.any() and (~left).any()  # two kidneys, one each side
    anterior, posterior = _anatomy(study, View.ANTERIOR), _anatomy(study, View.POSTERIOR)
    r, c = rows[left][0], cols[left][0]
    assert anterior.side(r, c) == "left"
    assert posterior.side(r, COLUMNS - 1 - c) == "left"
    r, c = rows[~left][0], cols[~left][0]
    assert anterior.side(r, c) == "right" and posterior.side(r, COLUMNS - 1 - c) == "right"
    # the mirrored point of a left kidney pixel lies on the right side, in both stored layouts
    mirrored = posterior.mirror(rows[left][0], COLUMNS - 1 - cols[left][0])
    assert posterior.side(*mirrored) == "right"


def test_lesions_lie_on_bone_labels_and_the_skeleton_is_ordered_head_to_feet(study):
    labels = study.anatomy[View.ANTERIOR]
    on_bone = [AnatomyLabel(int(labels[round(les.position_px[0]), round(les.position_px[1])])).is_bone
               for les in study.lesions]
    assert not study.lesions or np.mean(on_bone) >= 0.8

    def centre_row(label: AnatomyLabel) -> float:
        return float(np.nonzero(labels == label)[0].mean())

    order = [AnatomyLabel.SKULL, AnatomyLabel.CERVICAL_SPINE, AnatomyLabel.THORACIC_SPINE,
             AnatomyLabel.LUMBAR_SPINE, AnatomyLabel.SACRUM, AnatomyLabel.FEMORA,
             AnatomyLabel.LOWER_LEGS_AND_FEET]
    assert [centre_row(label) for label in order] == sorted(centre_row(label) for label in order)
    assert set(np.unique(labels)) == {int(label) for label in AnatomyLabel}


def test_the_midline_fitted_to_the_labels_is_the_patients(study):
    fitted = fit_midline(study.anatomy[View.ANTERIOR])
    rows = np.arange(50, 400)
    assert np.abs(fitted.column(rows) - study.midline.column(rows)).max() < 1.5
    assert study.midline.slope != 0  # the simulated patient lies a little rotated


def test_no_long_bone_lies_on_the_midline_and_the_simulated_anatomy_keeps_every_one(study):
    """The simulator's exact labels pass untouched (its knees, femora and arms lie clear of the
    midline); a femur the network would put on the bladder becomes soft tissue, and nothing else moves."""
    labels = study.anatomy[View.ANTERIOR]
    assert np.array_equal(anatomically_possible(labels, study.midline, 4.8), labels)
    (row, column), = [p for m, p in zip(study.mimics, study.mimic_positions_px) if m.kind == "bladder"]
    rows, columns = np.ogrid[:ROWS, :COLUMNS]
    blob = (rows - row) ** 2 + (columns - column) ** 2 <= 9
    wrong = labels.copy()
    wrong[blob] = AnatomyLabel.FEMORA
    overruled = anatomically_possible(wrong, study.midline, 4.8)
    assert (overruled[blob] == AnatomyLabel.SOFT_TISSUE).all()
    assert np.array_equal(overruled[~blob], labels[~blob])
    assert np.array_equal(anatomically_possible(wrong, None, 4.8), wrong)  # no midline: nothing to hold it to


def test_a_small_body_keeps_its_femora_closer_to_the_midline():
    """The clearance shrinks with the body: a child's knees held together stand less than 5 cm off the
    midline. A femur 14 mm off it stays in a body 10 cm wide and is soft tissue in one 29 cm wide."""
    def body(first: int, last: int) -> np.ndarray:
        labels = np.zeros((40, 61), np.uint8)
        labels[:, first:last + 1] = AnatomyLabel.SOFT_TISSUE
        labels[:, 27] = AnatomyLabel.FEMORA  # 3 pixels of 4.8 mm off the midline at column 30
        return labels

    midline = Midline(30.0, 0.0)
    narrow, wide = body(20, 40), body(0, 60)
    assert (anatomically_possible(narrow, midline, 4.8)[:, 27] == AnatomyLabel.FEMORA).all()
    assert (anatomically_possible(wide, midline, 4.8)[:, 27] == AnatomyLabel.SOFT_TISSUE).all()


def test_midline_scaling_keeps_the_same_line():
    midline = fit_midline(simulate_study(3, rows=ROWS, columns=COLUMNS, spacing_mm=4.8).anatomy[View.ANTERIOR])
    finer = midline.scaled(2.0, 2.0)  # the same field at twice the matrix
    for row in (10.0, 200.0, 400.0):
        assert finer.column((row + 0.5) * 2 - 0.5) == pytest.approx((midline.column(row) + 0.5) * 2 - 0.5)


def test_views_cut_at_the_head_or_feet_lose_image_and_labels_together():
    view = simulated_views(5)[0]
    for seed in range(6):
        counts, labels = _cut(view.counts, view.labels, np.random.default_rng(seed))
        removed = (labels == AnatomyLabel.BACKGROUND).all(axis=1) & (view.labels != 0).any(axis=1)
        assert removed.any()
        assert not counts[removed].any()


def test_augmented_views_keep_the_map_grid_and_normalise_to_the_body_level():
    rng = np.random.default_rng(0)
    views = simulated_views(6)
    levels = []
    for view in views * 4:
        image, labels = augment(view, rng)
        assert image.shape == labels.shape == MAP_SHAPE and image.dtype == np.float32
        bone = np.isin(labels, [int(label) for label in AnatomyLabel if label.is_bone])
        levels.append(float(np.median(image[bone])))
    # 8-bit or 16-bit, thinned or not: bone sits near the body reference level
    assert 0.2 < min(levels) and max(levels) < 2.0


def test_eight_bit_views_saturate_at_255():
    view = simulated_views(7)[0]
    from dicomnode.train.anatomydata import Augmentation

    eight = Augmentation(eight_bit=1.0, zoom=0.0, shift_mm=0.0, cut=0.0, flip_lr=0.0, thinning_min_keep=1.0)
    rng = np.random.default_rng(1)
    image, _ = augment(SimulatedView(view.counts, view.labels), rng, eight)
    values = np.unique(image)
    assert len(values) <= 256  # 8-bit levels only
