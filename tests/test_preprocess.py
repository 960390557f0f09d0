"""dicomnode.segmentation.preprocess / resample / tiling: geometry round trips, suppression, normalisation,
registration, aggregation and windows."""

from __future__ import annotations

import numpy as np
import pytest
from dicomnode.segmentation.preprocess import (
    Preprocessing,
    fit_dataset_minmax,
    prepare,
    prepare_label,
)
from dicomnode.segmentation.resample import ViewGeometry
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.tiling import Tiling, tent
from dicomnode.segmentation.views import load_scan
from tests.nm_factory import nm_study, phantom_counts


def blobs(shape, seed, count=6):
    """A 0/1 mask of a few random rectangles."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for _ in range(count):
        r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        mask[r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = 1
    return mask


def scan_of(rows, columns, spacing, **kwargs):
    return load_scan(nm_study(phantom_counts(rows, columns, seed=5), pixel_spacing=(spacing, spacing), **kwargs))


# --- geometry ------------------------------------------------------------------------------------


def test_a_stored_pixel_lands_on_its_canonical_model_pixel():
    """Hand-checked: at 2.26 mm the grid is the canonical frame; posterior column c ↦ W − 1 − c."""
    scan = scan_of(128, 32, 2.26)
    stored = np.zeros((128, 32), np.uint8)
    stored[10, 3] = 1
    assert np.argwhere(prepare_label(scan.posterior, stored, Preprocessing())).tolist() == [[10, 28]]
    assert np.argwhere(prepare_label(scan.anterior, stored, Preprocessing())).tolist() == [[10, 3]]


@pytest.mark.parametrize(
    "orientation",
    [None, {View.ANTERIOR: ("R", "H"), View.POSTERIOR: ("L", "H")}],
    ids=["convention", "feet-up"],
)
@pytest.mark.parametrize("rows, columns, spacing", [(128, 32, 2.26), (256, 64, 1.13), (2048, 512, 1.13)])
def test_model_grid_masks_survive_the_trip_to_the_source_and_back(rows, columns, spacing, orientation):
    scan = scan_of(rows, columns, spacing, orientation=orientation, layout="split")
    cfg = Preprocessing()
    for image in scan.views.values():
        geometry = ViewGeometry.of(image, cfg.spacing_mm)
        assert geometry.shape == (round(rows * spacing / 2.26), round(columns * spacing / 2.26))
        model = blobs(geometry.shape, seed=rows)
        stored = (geometry.to_source(model.astype(np.float32)) >= 0.5).astype(np.uint8)
        assert stored.shape == (rows, columns)
        assert stored.sum() == model.sum() * round(2.26 / spacing) ** 2  # each model pixel: k×k source
        np.testing.assert_array_equal(prepare_label(image, stored, cfg), model)


@pytest.mark.parametrize("rows, columns, spacing, block", [(128, 32, 2.26, 1), (2048, 512, 1.13, 2)])
def test_source_masks_of_whole_model_pixels_survive_the_trip_to_the_grid_and_back(rows, columns, spacing, block):
    """A mask drawn on the source that is made of whole model pixels comes back pixel-exactly."""
    scan = scan_of(rows, columns, spacing)
    cfg = Preprocessing()
    for image in scan.views.values():
        coarse = blobs((rows // block, columns // block), seed=7)
        stored = np.kron(coarse, np.ones((block, block), np.uint8))
        model = prepare_label(image, stored, cfg)
        back = (image_geometry(image).to_source(model.astype(np.float32)) >= 0.5).astype(np.uint8)
        np.testing.assert_array_equal(back, stored)


def image_geometry(image):
    return ViewGeometry.of(image, Preprocessing().spacing_mm)


def test_non_integer_factor_round_trip_is_close_and_shaped_like_the_source():
    scan = scan_of(300, 90, 1.7)
    image = scan.anterior
    geometry = image_geometry(image)
    assert geometry.shape == (226, 68)
    stored = np.zeros((300, 90), np.uint8)
    stored[100:140, 30:60] = 1
    back = geometry.to_source(prepare_label(image, stored, Preprocessing()).astype(np.float32)) >= 0.5
    assert back.shape == (300, 90)
    overlap = (back & (stored == 1)).sum() / (back | (stored == 1)).sum()
    assert overlap > 0.9


def test_resampling_preserves_total_counts_and_sums_blocks():
    scan = scan_of(256, 64, 1.13)
    image = scan.anterior
    model = image_geometry(image).counts_to_model(image.counts)
    assert model.shape == (128, 32)
    assert model.sum() == pytest.approx(float(image.counts.sum()), rel=1e-6)
    assert model[40, 10] == pytest.approx(float(image.counts[80:82, 20:22].sum()))


def test_geometry_refuses_arrays_of_the_wrong_shape():
    image = scan_of(128, 32, 2.26).anterior
    with pytest.raises(ValueError, match="does not match"):
        prepare_label(image, np.zeros((32, 128)), Preprocessing())
    with pytest.raises(ValueError, match="does not match"):
        image_geometry(image).to_source(np.zeros((64, 16)))


# --- suppression and normalisation --------------------------------------------------------------


def body_with_spots(level=10.0):
    """Flat body at ``level`` with a bone stripe (3×), a bladder (100×) and a lesion (2×bone)."""
    counts = np.zeros((256, 64), np.float32)
    counts[20:240, 16:48] = level
    counts[30:200, 30:34] = 3 * level  # spine
    counts[60:66, 30:34] = 6 * level  # lesion on the spine
    counts[205:215, 26:38] = 100 * level  # bladder
    return counts


def scan_from_counts(counts, **kwargs):
    return load_scan(nm_study({View.ANTERIOR: counts, View.POSTERIOR: counts}, layout="split", **kwargs))


def test_bladder_is_clipped_and_a_lesion_is_not():
    counts = body_with_spots()
    prepared = prepare(scan_from_counts(counts), Preprocessing(aggregation="none"))
    view = prepared.views[View.ANTERIOR]
    assert view.reference == 30.0  # 95th percentile of the body: bone (the spine is ~10% of it)
    bladder = np.zeros(counts.shape, bool)
    bladder[205:215, 26:38] = True
    np.testing.assert_array_equal(view.suppressed, bladder)
    image = view.image[0]
    assert image[bladder].max() == pytest.approx(2.0)  # clipped at suppress_clip × R, normalised
    assert image[60:66, 30:34].min() == pytest.approx(2.0)  # lesion (60 counts) untouched
    assert any("hot spots clipped" in note for note in prepared.notes)
    unsuppressed = prepare(scan_from_counts(counts), Preprocessing(aggregation="none", suppression=False))
    assert unsuppressed.views[View.ANTERIOR].image[0][bladder].max() == pytest.approx(1000 / 30)


def test_body_percentile_normalisation_does_not_depend_on_count_level():
    counts = phantom_counts(256, 64, seed=9)
    low = prepare(load_scan(nm_study(counts)), Preprocessing())
    high = prepare(load_scan(nm_study({v: 4 * c for v, c in counts.items()})), Preprocessing())
    for view in View:
        np.testing.assert_allclose(low.views[view].image, high.views[view].image, rtol=1e-5)


def test_dataset_minmax_uses_the_fitted_range():
    scans = [scan_from_counts(body_with_spots(level)) for level in (5.0, 20.0)]
    cfg = fit_dataset_minmax(scans, Preprocessing(aggregation="none"))
    # minimum: outside the body (0); maximum: the level-20 study's bladder clipped at 2 × R, R = 60
    assert (cfg.normalisation, cfg.count_min, cfg.count_max) == ("dataset-minmax", 0.0, 120.0)
    image = prepare(scans[0], cfg).views[View.ANTERIOR].image[0]
    assert image[100, 20] == pytest.approx(5.0 / 120.0)  # soft tissue of the level-5 study
    assert image.min() >= 0 and image.max() <= 1


# --- registration and aggregation ---------------------------------------------------------------


@pytest.mark.parametrize("registration", ["integer", "subpixel"])
def test_posterior_is_registered_into_the_anterior_frame(registration):
    counts = phantom_counts(256, 64, seed=3)
    shifted = {View.ANTERIOR: counts[View.ANTERIOR], View.POSTERIOR: np.roll(counts[View.POSTERIOR], (6, -2), (0, 1))}
    aligned = prepare(load_scan(nm_study(counts)), Preprocessing(registration="none"))
    moved = prepare(load_scan(nm_study(shifted)), Preprocessing(registration=registration))
    assert any("[-6.0, 2.0]" in note for note in moved.notes)
    inner = (slice(10, -10), slice(4, -4))
    np.testing.assert_allclose(
        moved.views[View.ANTERIOR].image[1][inner], aligned.views[View.ANTERIOR].image[1][inner], atol=1e-5
    )
    # and the anterior moved the other way into the posterior's frame
    np.testing.assert_allclose(
        moved.views[View.POSTERIOR].image[1][inner],
        np.roll(aligned.views[View.POSTERIOR].image[1], (6, -2), (0, 1))[inner],
        atol=1e-5,
    )


def test_an_implausible_shift_is_not_applied():
    counts = phantom_counts(256, 64, seed=3)
    shifted = {View.ANTERIOR: counts[View.ANTERIOR], View.POSTERIOR: np.roll(counts[View.POSTERIOR], 40, 0)}
    prepared = prepare(load_scan(nm_study(shifted)), Preprocessing(max_shift_mm=20.0))
    assert any("not shifted" in note for note in prepared.notes)
    own_posterior = prepared.views[View.POSTERIOR].image[0]
    np.testing.assert_array_equal(prepared.views[View.ANTERIOR].image[1], own_posterior)


def test_aggregations_give_the_documented_channels():
    scan = load_scan(nm_study(phantom_counts(128, 32, seed=4)))
    stack = prepare(scan, Preprocessing(aggregation="stack", registration="none")).views
    add = prepare(scan, Preprocessing(aggregation="add", registration="none")).views
    none = prepare(scan, Preprocessing(aggregation="none")).views
    ant, post = stack[View.ANTERIOR].image
    assert stack[View.ANTERIOR].image.shape == (2, 128, 32)
    np.testing.assert_array_equal(stack[View.POSTERIOR].image, np.stack([post, ant]))
    np.testing.assert_allclose(add[View.ANTERIOR].image, ((ant + post) / 2)[None])
    np.testing.assert_array_equal(none[View.ANTERIOR].image, ant[None])
    assert [Preprocessing(aggregation=a).in_channels for a in ("stack", "add", "none")] == [2, 1, 1]


def test_a_missing_view_gives_a_zero_channel_when_stacked():
    counts = phantom_counts(128, 32, seed=4)
    scan = load_scan(nm_study({View.ANTERIOR: counts[View.ANTERIOR]}))
    prepared = prepare(scan, Preprocessing())
    assert list(prepared.views) == [View.ANTERIOR]
    assert not prepared.views[View.ANTERIOR].image[1].any()
    assert prepared.views[View.ANTERIOR].image[0].any()


# --- windows -----------------------------------------------------------------------------------


def test_the_papers_windows_cover_a_whole_body_view_in_seven():
    tiling = Tiling((1024, 256), 256, 128)
    assert tiling.padded_shape == (1024, 256)
    assert tiling.origins == [(r, 0) for r in range(0, 769, 128)]


@pytest.mark.parametrize("shape", [(1024, 256), (300, 200), (100, 50)])
def test_stitching_windows_of_an_image_gives_the_image_back(shape):
    image = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    tiling = Tiling(shape, 256, 128)
    windows = tiling.windows(image)
    assert windows.shape == (len(tiling.origins), 2, 256, 256)
    np.testing.assert_allclose(tiling.stitch(windows[:, 0]), image[0], rtol=1e-6)


def test_stitching_weights_window_centres_over_borders():
    tiling = Tiling((512, 256), 256, 128)
    first, second, third = (np.full((256, 256), v, np.float32) for v in (0.0, 1.0, 0.0))
    stitched = tiling.stitch(np.stack([first, second, third]))
    # row 200 is 72 px into window 1 (weight near its border) and 200 px from window 0's top
    t = tent(256)[:, 128]
    assert stitched[200, 128] == pytest.approx(t[72] / (t[200] + t[72]), rel=1e-5)
    assert stitched[256, 128] == pytest.approx(1.0 * t[128] / (t[128] + t[0]), rel=1e-5)
    assert stitched[0, 0] == 0.0


def test_tent_weights_of_half_overlapping_windows_sum_to_a_constant():
    ramp = tent(256)[:, 128] / tent(256)[128, 128]
    np.testing.assert_allclose(ramp[128:] + ramp[:128], (ramp[128:] + ramp[:128])[0])


# --- settings -----------------------------------------------------------------------------------


def test_settings_round_trip_through_a_dict():
    cfg = Preprocessing(aggregation="add", window=None, percentile=90.0)
    assert Preprocessing.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"bladder": True}, "unknown preprocessing key"),
        ({"aggregation": "sum"}, "aggregation"),
        ({"normalisation": "dataset-minmax"}, "count_max"),
        ({"window": 256, "stride": 300}, "stride"),
        ({"suppress_clip": 6.0}, "suppress_clip"),
        ({"percentile": 0}, "percentile"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(settings)


def test_prepared_input_is_float32_on_the_model_grid():
    scan = scan_of(512, 128, 1.13)
    for view in scan.views:
        image = prepare(scan, Preprocessing()).views[view].image
        assert image.dtype == np.float32 and image.shape == (2, 256, 64)
        assert np.isfinite(image).all()
