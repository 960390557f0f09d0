"""dicomnode.segmentation.inference / postprocess: end to end with tiny weights, and the threshold baseline."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

import dicomnode.segmentation.inference as inference
from dicomnode.segmentation.inference import NetworkSegmenter, Segmenter, ThresholdSegmenter
from dicomnode.segmentation.modelcard import save_model
from dicomnode.segmentation.networks import build
from dicomnode.segmentation.postprocess import lesions, view_result
from dicomnode.segmentation.preprocess import Preprocessing, prepare
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.views import load_scan
from tests.nm_factory import nm_study, phantom_counts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 4-channel U-Net, seeded, output bias zeroed so its logits fall on both sides of 0 (p = 0.5)."""
    torch.manual_seed(0)
    net = build("unet", in_channels=2, width=4)
    with torch.no_grad():
        net.head.bias.fill_(0.0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    card = save_model(
        net, path, name="dicomnode-unet-test", version="0.0.1", network="unet",
        preprocessing=Preprocessing(window=None),
    )
    return card


@pytest.fixture(scope="module")
def fine_scan():
    """256 × 64 at 1.13 mm: the model grid is 128 × 32 at 2.26 mm."""
    return load_scan(nm_study(phantom_counts(256, 64, seed=11), pixel_spacing=(1.13, 1.13)))


def expected_probability(segmenter, scan, view):
    """What the network gives for the view, computed by hand: pad, run, sigmoid, crop, map back."""
    prepared = prepare(scan, segmenter.card.preprocessing).views[view]
    h, w = prepared.image.shape[1:]
    padded = np.zeros((1, prepared.image.shape[0], -(-h // 16) * 16, -(-w // 16) * 16), np.float32)
    padded[0, :, :h, :w] = prepared.image
    with torch.no_grad():
        model = torch.sigmoid(segmenter.net(torch.from_numpy(padded)))[0, 0, :h, :w].numpy()
    return prepared.to_source(model)


def test_tiny_weights_segment_a_study_on_its_source_frames(tiny_model, fine_scan):
    segmenter = Segmenter.from_weights(tiny_model.weights_path, device="cpu")
    assert isinstance(segmenter, NetworkSegmenter)
    result = segmenter.segment(fine_scan)
    assert result.algorithm.name == "dicomnode-unet-test" and result.algorithm.version == "0.0.1"
    assert set(result.views) == {View.ANTERIOR, View.POSTERIOR}
    for view, view_result_ in result.views.items():
        source = fine_scan.views[view].source
        assert view_result_.probability.shape == (source.rows, source.columns) == (256, 64)
        np.testing.assert_allclose(
            view_result_.probability, expected_probability(segmenter, fine_scan, view), atol=1e-5
        )
        np.testing.assert_array_equal(view_result_.mask, view_result_.probability >= 0.5)
        assert 0 < view_result_.mask.sum() < view_result_.mask.size  # the test is not vacuous
        _, components = ndimage.label(view_result_.mask, structure=np.ones((3, 3)))
        assert len(view_result_.lesions) == components
        for lesion in view_result_.lesions:
            assert lesion.area_mm2 == pytest.approx(lesion.pixel_count * 1.13 * 1.13)
        assert sum(lesion.pixel_count for lesion in view_result_.lesions) == view_result_.mask.sum()


def test_windowed_inference_gives_source_shapes_and_is_repeatable(tiny_model, fine_scan):
    card = replace(tiny_model, preprocessing=Preprocessing(window=64, stride=32))
    segmenter = NetworkSegmenter(card, device="cpu")
    first, second = segmenter.segment(fine_scan), segmenter.segment(fine_scan)
    for view in View:
        assert first.views[view].probability.shape == (256, 64)
        np.testing.assert_array_equal(first.views[view].probability, second.views[view].probability)


def test_segment_many_batches_studies_and_agrees_with_one_at_a_time(tiny_model, fine_scan):
    other = load_scan(nm_study(phantom_counts(256, 64, seed=12), pixel_spacing=(1.13, 1.13)))
    segmenter = NetworkSegmenter(tiny_model, device="cpu", batch_size=3)
    together = segmenter.segment_many([fine_scan, other])
    for scan, result in zip([fine_scan, other], together):
        alone = segmenter.segment(scan)
        assert result.scan is scan
        for view in View:
            np.testing.assert_allclose(result.views[view].probability, alone.views[view].probability, atol=1e-5)


def test_a_one_view_study_gives_one_view_and_says_which_is_missing(tiny_model):
    counts = phantom_counts(128, 32, seed=13)
    scan = load_scan(nm_study({View.POSTERIOR: counts[View.POSTERIOR]}, layout="split"))
    result = Segmenter.from_weights(tiny_model.path).segment(scan)
    assert list(result.views) == [View.POSTERIOR]
    assert result.missing == [View.ANTERIOR]
    assert any("no anterior view" in note for note in result.notes)


def test_default_without_shipped_weights_is_a_clear_file_not_found(monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "DEFAULT_CARD", tmp_path / "default.json")
    with pytest.raises(FileNotFoundError, match="no default model"):
        Segmenter.default()


# --- the threshold baseline ----------------------------------------------------------------------


def bone_scan_with_lesion():
    """A body with a spine; one focal lesion at 3× the spine; a bladder at 50× (must not be found)."""
    counts = np.zeros((512, 128), np.float32)
    counts[20:500, 34:94] = 10.0
    counts[40:400, 60:68] = 30.0  # spine
    counts[150:156, 60:66] = 90.0  # lesion
    counts[420:436, 56:72] = 1500.0  # bladder
    return counts


def test_threshold_baseline_finds_a_hot_lesion_and_not_the_bladder():
    counts = bone_scan_with_lesion()
    scan = load_scan(nm_study({View.ANTERIOR: counts, View.POSTERIOR: counts}, layout="split"))
    segmenter = Segmenter.from_weights(inference.WEIGHTS_DIR / "threshold.json")
    assert isinstance(segmenter, ThresholdSegmenter)
    result = segmenter.segment(scan)
    assert result.algorithm.network == "threshold"
    for view in View:
        found = result.views[view].lesions
        assert len(found) == 1, [(lesion.bbox, lesion.pixel_count) for lesion in found]
        (lesion,) = found
        stored_lesion = scan.views[view].source.to_stored(counts == 90.0)
        rows, cols = np.nonzero(stored_lesion)
        assert lesion.bbox[0] <= rows.min() and lesion.bbox[2] > rows.max()
        assert lesion.bbox[1] <= cols.min() and lesion.bbox[3] > cols.max()
        assert lesion.peak_counts == 90.0
        assert result.views[view].mask[scan.views[view].source.to_stored(counts == 1500.0)].sum() == 0


# --- postprocess ---------------------------------------------------------------------------------


def test_lesions_are_eight_connected_components_measured_on_the_stored_frame():
    counts = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
    scan = load_scan(nm_study({View.POSTERIOR: counts}, layout="split", pixel_spacing=(2.0, 3.0)))
    image = scan.posterior
    stored_counts = image.source.to_stored(image.counts)
    mask = np.zeros((16, 8), np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # diagonal neighbours: one lesion
    mask[10:12, 5:8] = 1  # a 2 × 3 block
    first, second = lesions(image, mask)
    assert (first.pixel_count, first.area_mm2, first.bbox) == (2, 12.0, (1, 1, 3, 3))
    assert first.centroid == (1.5, 1.5)
    assert first.peak_counts == stored_counts[2, 2] and first.mean_counts == pytest.approx(
        (stored_counts[1, 1] + stored_counts[2, 2]) / 2
    )
    assert (second.pixel_count, second.area_mm2, second.bbox, second.label) == (6, 36.0, (10, 5, 12, 8), 2)
    assert second.centroid == (10.5, 6.0)
    assert {first.view, second.view} == {View.POSTERIOR}


def test_view_result_thresholds_at_the_given_level_and_checks_the_shape():
    counts = np.ones((16, 8), np.float32)
    image = load_scan(nm_study({View.ANTERIOR: counts}, layout="split")).anterior
    probability = np.zeros((16, 8), np.float32)
    probability[3, 3], probability[8, 4] = 0.5, 0.49
    result = view_result(image, probability, threshold=0.5)
    assert result.mask.dtype == np.uint8 and result.mask.sum() == 1 and result.mask[3, 3] == 1
    with pytest.raises(ValueError, match="does not match"):
        view_result(image, np.zeros((8, 16), np.float32))


@pytest.mark.parametrize("rows, columns, spacing", [(1024, 256, 2.26), (2048, 512, 1.13)])
def test_a_simulated_study_end_to_end_with_tiny_weights(tiny_model, tmp_path, rows, columns, spacing):
    """dicomnode.synth → DICOM files → load_scan → segment: results on the source frames."""
    from dicomnode.synth.dicom import StudyIdentity, write_nm_files
    from dicomnode.synth.simulate import simulate_study

    from dicomnode.segmentation.views import load_scan_files

    study = simulate_study(5, rows=rows, columns=columns, spacing_mm=spacing)
    write_nm_files(study, StudyIdentity(5, 1), tmp_path, "multiframe")
    scan = load_scan_files(sorted(tmp_path.glob("*.dcm")))
    for segmenter in (Segmenter.from_weights(tiny_model.path), Segmenter.from_weights(inference.WEIGHTS_DIR / "threshold.json")):
        result = segmenter.segment(scan)
        assert result.lesions, f"{segmenter.algorithm.network} found nothing: the checks below would be vacuous"
        for view, view_result_ in result.views.items():
            assert view_result_.probability.shape == view_result_.mask.shape == (rows, columns)
            assert view_result_.probability.dtype == np.float64  # peaks near 1 stay ordered
            assert 0.0 <= view_result_.probability.min() and view_result_.probability.max() <= 1.0
            assert sum(lesion.pixel_count for lesion in view_result_.lesions) == view_result_.mask.sum()
            labels, _ = ndimage.label(view_result_.mask, structure=np.ones((3, 3)))
            for lesion in view_result_.lesions:
                assert lesion.area_mm2 == pytest.approx(lesion.pixel_count * spacing * spacing)
                # peak and mean counts come from the stored frame the SEG will reference
                under = study.images[view][labels == lesion.label]
                assert (lesion.peak_counts, lesion.pixel_count) == (under.max(), under.size)
                assert lesion.mean_counts == pytest.approx(under.mean(), rel=1e-5)
