"""The BS-80K readers, weak labels from boxes, and crop preparation, on synthetic fixtures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dicomnode.segmentation.preprocess import Preprocessing, body_mask, reference_level
from dicomnode.segmentation.scan import View, ViewRule
from tests.bs80k_fixtures import HotSpot, write_crops, write_wholebody
from dicomnode.train.bs80k import BS80KError, load_crop_folder, read_voc_boxes, read_wholebody
from dicomnode.train.crops import CHEST_TO_BODY_REFERENCE, on_canvas, prepare_crop
from dicomnode.train.datasets import DataFormat, detect_format, load_studies, load_training_data
from dicomnode.train.weak import ABNORMAL, HARD_NEGATIVE, NORMAL, PLAIN, UNCERTAIN, Box, WeakLabelRules, lesion_in_box, weak_labels


@pytest.fixture
def wholebody(tmp_path: Path) -> Path:
    root = tmp_path / "wholebody"
    write_wholebody(root, "7", [HotSpot(60, 20, 4), HotSpot(200, 32, 6, abnormal=False)], seed=1)
    write_wholebody(root, "8", [HotSpot(100, 40, 4)], seed=2, posterior_first=True)
    return root


def test_formats_are_detected(wholebody: Path, tmp_path: Path) -> None:
    crops = write_crops(tmp_path / "crops", [True, False])
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "manifest.json").write_text("{}")
    (tmp_path / "dicom").mkdir()
    assert detect_format(wholebody) is DataFormat.BS80K_WHOLEBODY
    assert detect_format(crops) is DataFormat.BS80K_CROPS
    assert detect_format(tmp_path / "synth") is DataFormat.SYNTH
    assert detect_format(tmp_path / "dicom") is DataFormat.DICOM
    with pytest.raises(ValueError, match="crops"):
        load_studies(crops)


def test_wholebody_views_follow_the_private_codes_and_the_posterior_is_mirrored(wholebody: Path) -> None:
    normal = read_wholebody(next((wholebody / "7").glob("*.dcm")))
    swapped = read_wholebody(next((wholebody / "8").glob("*.dcm")))
    for scan, frame in ((normal, {View.ANTERIOR: 1, View.POSTERIOR: 2}), (swapped, {View.ANTERIOR: 2, View.POSTERIOR: 1})):
        assert {v: im.source.frame_number for v, im in scan.views.items()} == frame
        assert all(im.source.rule is ViewRule.VIEW_CODE for im in scan.views.values())
        assert scan.posterior.source.flip_lr and not scan.anterior.source.flip_lr
    # the hot disc sits at the same canonical column in both views (posterior un-mirrored)
    for image in normal.views.values():
        row = image.counts[55:66]
        assert abs(int(np.argmax(row.sum(0))) - 20) <= 2


def test_boxes_become_lesions_uncertain_rims_and_hard_negatives(wholebody: Path) -> None:
    study = next(s for s in load_studies(wholebody) if s.patient_id == "7")
    assert study.label_source == "BS-80K boxes"
    for view in View:
        boxes = study.boxes[view]
        assert sorted(b.kind for b in boxes) == [ABNORMAL, NORMAL]
        abnormal = next(b for b in boxes if b.kind == ABNORMAL)
        normal = next(b for b in boxes if b.kind == NORMAL)
        label, regions = study.labels[view], study.regions[view]
        inside = label[abnormal.clipped(label.shape)]
        assert 20 <= inside.sum() <= 81 and label.sum() == inside.sum()  # the disc (r = 4), not the box (13 × 13)
        assert np.all(regions[label != 0] == PLAIN)
        box_regions = regions[abnormal.clipped(label.shape)]
        assert np.all((box_regions == UNCERTAIN) | (inside != 0))
        assert np.all(regions[normal.clipped(label.shape)] == HARD_NEGATIVE)


def test_half_maximum_contour_of_a_gaussian_hot_spot() -> None:
    """On a noise-free Gaussian over flat background, the derived mask is the half-maximum disc."""
    sigma, background, height = 3.0, 20.0, 80.0
    r, c = np.mgrid[:64, :64]
    counts = background + height * np.exp(-((r - 32) ** 2 + (c - 30) ** 2) / (2 * sigma**2))
    mask = lesion_in_box(counts.astype(np.float32), Box(ABNORMAL, 18, 16, 46, 44), WeakLabelRules(smoothing=0))
    assert mask is not None
    radius = sigma * math.sqrt(2 * math.log(2))
    assert mask.sum() == pytest.approx(math.pi * radius**2, rel=0.2)
    assert mask[32, 30] == 1 and mask[32, 30 + 6] == 0


def test_a_box_without_a_hot_spot_gets_no_lesion_pixels() -> None:
    counts = np.full((40, 40), 30.0, np.float32)
    box = Box(ABNORMAL, 10, 10, 20, 20)
    assert lesion_in_box(counts, box) is None
    label, regions = weak_labels(counts, [box])
    assert label.sum() == 0 and np.all(regions[10:21, 10:21] == UNCERTAIN)


def test_voc_boxes_are_read_and_odd_files_refused(tmp_path: Path) -> None:
    good = tmp_path / "a.xml"
    good.write_text("<annotation><object><name>Abnormal</name><bndbox><xmin>3</xmin><ymin>5</ymin>"
                    "<xmax>9</xmax><ymax>12</ymax></bndbox></object></annotation>")
    assert read_voc_boxes(good) == (Box(ABNORMAL, 5, 3, 12, 9),)
    bad_name = tmp_path / "b.xml"
    bad_name.write_text(good.read_text().replace("Abnormal", "Tumour"))
    with pytest.raises(BS80KError, match="Tumour"):
        read_voc_boxes(bad_name)
    broken = tmp_path / "c.xml"
    broken.write_text("<annotation>")
    with pytest.raises(BS80KError, match="Pascal VOC"):
        read_voc_boxes(broken)


def test_crops_are_read_mirrored_and_bad_lines_skipped(tmp_path: Path) -> None:
    root = write_crops(tmp_path / "crops", [True, False, False])
    with (root / "chestRANT" / "chestRANT.txt").open("a") as stream:
        stream.write("../../escape.jpg\t1\nmissing.jpg\t0\n4.jpg\tmaybe\n")
    crops = load_crop_folder(root)
    assert len(crops) == 6 and sum(c.abnormal for c in crops) == 2
    assert {c.patient_id for c in crops} == {"1", "2", "3"}
    anterior = next(c for c in crops if c.view is View.ANTERIOR and c.patient_id == "2")
    posterior = next(c for c in crops if c.view is View.POSTERIOR and c.patient_id == "2")
    from PIL import Image

    stored = np.asarray(Image.open(root / "chestRPOST" / "2.jpg"), dtype=np.float32)
    assert np.array_equal(posterior.image, stored[:, ::-1]) and anterior.image.shape == stored.shape


def test_crop_preparation_puts_the_chest_on_the_whole_body_scale(tmp_path: Path) -> None:
    crop = load_crop_folder(write_crops(tmp_path / "crops", [False]))[0]
    image = prepare_crop(crop, Preprocessing(window=None, aggregation="none"))
    assert image.shape[0] == 1 and image.shape[1] == round(crop.image.shape[0] * 2.3976 / 2.26)
    level = reference_level(image[0], body_mask(image[0]), 95.0)
    assert level == pytest.approx(CHEST_TO_BODY_REFERENCE, rel=0.05)
    padded, valid = on_canvas(image, (128, 64))
    assert padded.shape == (1, 128, 64) and valid.sum() == image.shape[1] * image.shape[2]
    assert padded[0][valid > 0].sum() == pytest.approx(image.sum(), rel=1e-5)


def test_several_folders_never_share_a_patient(wholebody: Path, tmp_path: Path) -> None:
    crops = write_crops(tmp_path / "crops", [True, False])
    data = load_training_data([wholebody, crops])
    assert data.formats == {str(wholebody): "bs80k-wholebody", str(crops): "bs80k-crops"}
    assert {s.patient_id for s in data.studies} == {"0:7", "0:8"}
    assert {c.patient_id for c in data.crops} == {"1:1", "1:2"}
