"""Label import: DICOM SEG (e.g. a physician's correction) and LabelMe polygons, on fixtures made here.

The NM studies come from :mod:`tests.nm_factory`; the SEGs are real highdicom Segmentation objects
built the way the node builds its own (one SEG per view from a single-frame proxy that keeps the
source UIDs; docs/dicom.md, "Result objects"), then read back from files by the training loader.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.segmentation.scan import View
from tests.nm_factory import nm_study, phantom_counts, write_study
from dicomnode.train.datasets import load_dicom_folder, load_studies
from dicomnode.train.labelme import LabelMeError, read_labelme

ROWS, COLUMNS = 128, 64


def _study(tmp: Path, layout: str, patient: str) -> tuple[list[Dataset], list[Path]]:
    datasets = nm_study(phantom_counts(ROWS, COLUMNS, seed=1), layout=layout)
    for ds in datasets:
        ds.PatientID = patient
    return datasets, write_study(datasets, tmp / patient)


def _proxy(nm: Dataset, frame_index: int) -> Dataset:
    proxy = copy.deepcopy(nm)
    proxy.NumberOfFrames = 1
    proxy.PixelData = nm.pixel_array[frame_index].tobytes() if int(nm.NumberOfFrames) > 1 else nm.PixelData
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
        proxy.pop(keyword, None)
    groups = Dataset()
    measures = Dataset()
    measures.PixelSpacing = nm.PixelSpacing
    groups.PixelMeasuresSequence = [measures]
    proxy.SharedFunctionalGroupsSequence = [groups]
    return proxy


def _seg(nm: Dataset, frame_index: int, mask: np.ndarray, algorithm: str, content_time: str) -> hd.seg.Segmentation:
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Bone metastasis",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.NeoplasmSecondary,
        algorithm_type=algorithm,
        algorithm_identification=(
            hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.cid7162.ArtificialIntelligence)
            if algorithm != "MANUAL" else None
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[_proxy(nm, frame_index)],
        pixel_array=mask[np.newaxis],
        segmentation_type="BINARY",
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="dicomnode tests",
        manufacturer_model_name="labels",
        software_versions="1",
        device_serial_number="1",
        content_time=None,
    )
    seg.ContentTime = content_time
    for frame_group in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame_group.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                source.ReferencedFrameNumber = frame_index + 1
    return seg


def test_seg_correction_labels_the_right_view(tmp_path: Path) -> None:
    datasets, _ = _study(tmp_path, "multiframe", "P1")
    nm = datasets[0]
    posterior = np.zeros((ROWS, COLUMNS), np.uint8)
    posterior[30:40, 5:15] = 1  # stored layout of frame 2 (posterior, stored as seen from behind)
    older = np.zeros_like(posterior)
    older[60:70, 20:30] = 1
    automatic = np.zeros_like(posterior)
    automatic[80:90, 40:50] = 1
    _seg(nm, 1, older, "MANUAL", "100000").save_as(tmp_path / "P1" / "seg_old.dcm")
    _seg(nm, 1, posterior, "SEMIAUTOMATIC", "130000").save_as(tmp_path / "P1" / "seg_new.dcm")
    _seg(nm, 0, automatic, "AUTOMATIC", "140000").save_as(tmp_path / "P1" / "seg_model.dcm")

    (study,) = load_studies(tmp_path)
    assert study.patient_id == "P1" and study.label_source == "SEG"
    assert set(study.labels) == {View.POSTERIOR}  # the model's own AUTOMATIC SEG is not a label
    np.testing.assert_array_equal(study.labels[View.POSTERIOR], posterior)  # newest human label wins
    assert study.scan.posterior.source.frame_number == 2

    (with_automatic,) = load_dicom_folder(tmp_path, accept_automatic_seg=True)
    np.testing.assert_array_equal(with_automatic.labels[View.ANTERIOR], automatic)


def _labelme(path: Path, image: str, shapes: list[dict], rows: int = ROWS, columns: int = COLUMNS,
             flags: dict | None = None) -> Path:
    path.write_text(json.dumps({
        "version": "5.4.1", "flags": flags or {}, "shapes": shapes, "imagePath": image,
        "imageData": None, "imageHeight": rows, "imageWidth": columns,
    }))
    return path


def test_labelme_polygons_rectangles_and_circles(tmp_path: Path) -> None:
    _, paths = _study(tmp_path, "split", "P2")  # 1.dcm anterior, 2.dcm posterior
    _labelme(tmp_path / "P2" / "ant.json", "1.dcm", [
        {"label": "met", "shape_type": "polygon", "points": [[10, 20], [20, 20], [20, 30], [10, 30]]},
        {"label": "met", "shape_type": "rectangle", "points": [[40, 100], [44, 104]]},
    ])
    _labelme(tmp_path / "P2" / "post.json", "2.dcm", [
        {"label": "met", "shape_type": "circle", "points": [[30, 60], [33, 60]]},
    ])
    (study,) = load_studies(tmp_path)
    assert study.label_source == "LabelMe" and set(study.labels) == set(View)
    anterior = study.labels[View.ANTERIOR]
    # pixel centres inside the square with corners x 10..20, y 20..30 (inclusive edges): 11 × 11
    assert anterior[20:31, 10:21].all() and anterior[:, :10].sum() == 0
    assert anterior[100:105, 40:45].all()
    assert anterior.sum() == 11 * 11 + 5 * 5
    posterior = study.labels[View.POSTERIOR]
    rows, cols = np.nonzero(posterior)
    assert np.all((rows - 60) ** 2 + (cols - 30) ** 2 < 9)  # radius 3 around (row 60, column 30)
    assert posterior[60, 30] == 1 and posterior.sum() >= 20


def test_labelme_on_two_frame_instance_needs_a_view_flag(tmp_path: Path) -> None:
    _study(tmp_path, "multiframe", "P3")
    square = [{"label": "met", "shape_type": "polygon", "points": [[1, 1], [5, 1], [5, 5]]}]
    _labelme(tmp_path / "P3" / "none.json", "1.dcm", square)
    (study,) = load_studies(tmp_path)
    assert not study.labelled and study.label_source == "none"
    _labelme(tmp_path / "P3" / "none.json", "1.dcm", square, flags={"posterior": True})
    (study,) = load_studies(tmp_path)
    assert set(study.labels) == {View.POSTERIOR}


def test_labelme_errors_are_clear(tmp_path: Path) -> None:
    _study(tmp_path, "split", "P4")
    line = _labelme(tmp_path / "P4" / "line.json", "1.dcm",
                    [{"label": "x", "shape_type": "line", "points": [[1, 1], [5, 5]]}])
    with pytest.raises(LabelMeError, match="no area"):
        read_labelme(line)
    missing = _labelme(tmp_path / "P4" / "missing.json", "nope.dcm", [])
    with pytest.raises(LabelMeError, match="does not exist"):
        read_labelme(missing)
    bad = tmp_path / "P4" / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabelMeError, match="not a readable JSON"):
        read_labelme(bad)
    # a label drawn on another matrix size is refused by the loader (and the study stays unlabelled)
    line.unlink()
    missing.unlink()
    _labelme(tmp_path / "P4" / "size.json", "1.dcm",
             [{"label": "x", "shape_type": "polygon", "points": [[1, 1], [5, 1], [5, 5]]}], rows=256)
    (study,) = load_studies(tmp_path)
    assert not study.labelled
    # a view flag that contradicts the instance (1.dcm is the anterior view) is refused too
    (tmp_path / "P4" / "size.json").unlink()
    _labelme(tmp_path / "P4" / "flag.json", "1.dcm",
             [{"label": "x", "shape_type": "polygon", "points": [[1, 1], [5, 1], [5, 5]]}], flags={"posterior": True})
    (study,) = load_studies(tmp_path)
    assert not study.labelled


def test_unlabelled_and_unreadable_studies(tmp_path: Path) -> None:
    _study(tmp_path, "split", "P5")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    datasets, _ = _study(tmp_path, "split", "P6")
    (study5, study6) = sorted(load_studies(tmp_path), key=lambda s: s.patient_id)
    assert not study5.labelled and study6.patient_id == "P6"
    with pytest.raises(FileNotFoundError):
        load_studies(tmp_path / "absent")
