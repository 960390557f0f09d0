"""DICOM SEG from a bone-scan result: valid (dciodvfy, dcentvfy), pixel-exact through highdicom
(frames and ``get_volume()``) and dcmqi's ``segimage2itkimage`` (the 3D Slicer reader)."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.planar.seg import IDENTITY_ORIENTATION
from dicomnode.segmentation.scan import View
from tests.test_results_inputs import (
    ALGORITHM,
    dcentvfy_errors,
    dciodvfy_errors,
    make_study,
    write,
)

SEG_ONLY = ResultOptions(kinds=(ResultKind.SEG,))
SIZES = [(1024, 256, 2.26), (2048, 512, 1.13)]


def _source_reference(seg: pydicom.Dataset) -> tuple[str, int]:
    (frame_groups,) = seg.PerFrameFunctionalGroupsSequence
    (derivation,) = frame_groups.DerivationImageSequence
    (source,) = derivation.SourceImageSequence
    return str(source.ReferencedSOPInstanceUID), int(source.ReferencedFrameNumber)


@pytest.mark.parametrize("layout", ["multiframe", "split"])
@pytest.mark.parametrize(("rows", "columns", "spacing"), SIZES)
def test_seg_is_valid_and_reads_back_pixel_exact(
    layout: str, rows: int, columns: int, spacing: float, tmp_path: Path
) -> None:
    study = make_study(layout, rows=rows, columns=columns, spacing=spacing)
    objects = build_results(study.result, study.sources, SEG_ONLY)
    assert [kind for kind, _ in objects] == [ResultKind.SEG, ResultKind.SEG]  # one per view

    sources = write(tmp_path, study.sources, "nm")
    segs = write(tmp_path, [ds for _, ds in objects], "seg")
    for path in segs:
        assert dciodvfy_errors(path) == [], path
    assert dcentvfy_errors(sources + segs) == []

    expected_refs = {
        view: (image.source.sop_instance_uid, image.source.frame_number)
        for view, image in study.result.scan.views.items()
    }
    for view, path in zip((View.ANTERIOR, View.POSTERIOR), segs, strict=True):
        seg = hd.seg.segread(path)
        uid, frame = _source_reference(seg)
        assert (uid, frame) == expected_refs[view]
        pixels = seg.get_pixels_by_source_frame(uid, source_frame_numbers=[frame], segment_numbers=[1])
        np.testing.assert_array_equal(pixels[0, :, :, 0], study.result.views[view].mask)
        volume = seg.get_volume()
        assert volume.spatial_shape == (1, rows, columns)
        np.testing.assert_array_equal(volume.array[0, :, :, 0], study.result.views[view].mask)
        assert seg.NumberOfFrames == 1
        assert (seg.Rows, seg.Columns) == (rows, columns)


def test_seg_segment_codes_algorithm_and_identity(tmp_path: Path) -> None:
    study = make_study("multiframe", patient_name="Müller^Jörg")
    objects = build_results(study.result, study.sources, SEG_ONLY)
    source = study.sources[0]
    series_uids = set()
    for number, (_, seg) in enumerate(objects, start=1):
        path = write(tmp_path, [seg], f"seg{number}-")[0]
        back = pydicom.dcmread(path)
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert back.SegmentationType == "BINARY"
        (segment,) = back.SegmentSequence
        assert segment.SegmentLabel == "Bone metastasis"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "14799000"
        assert segment.AnatomicRegionSequence[0].CodeValue == "272673000"
        assert len(segment.RecommendedDisplayCIELabValue) == 3
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == ALGORITHM.name
        assert algorithm.AlgorithmVersion == ALGORITHM.version
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == (
            codes.cid7162.ArtificialIntelligence.value, "DCM")
        assert str(back.PatientName) == "Müller^Jörg"
        assert back.SpecificCharacterSet == "ISO_IR 192"
        for keyword in ("PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber", "StudyDate"):
            assert back.get(keyword) == source.get(keyword), keyword
        assert back.SeriesInstanceUID != source.SeriesInstanceUID
        name = "ANT" if number == 1 else "POST"
        # One series per view, told apart by number and description (OHIF: one display set per series).
        assert back.SeriesNumber == (9001 if number == 1 else 9005)
        assert back.SeriesDescription == f"AI bone metastases SEG {name}"
        assert back.InstanceNumber == 1
        lesions = len(study.result.views[View.ANTERIOR if number == 1 else View.POSTERIOR].lesions)
        noun = "lesion" if lesions == 1 else "lesions"
        assert back.ContentDescription == f"AI bone metastases {name}, {lesions} {noun}; NOT FOR DIAGNOSTIC USE"
        assert str(back.ContentCreatorName) == f"{ALGORITHM.name}^"
        assert back.Manufacturer == "dicomnode"
        assert back.InstanceCreationDate and back.InstanceCreationTime
        series_uids.add(back.SeriesInstanceUID)
    assert len(series_uids) == 2


def test_long_descriptions_are_cut_at_a_word() -> None:
    study = make_study("split")
    long = "Bone metastases segmentation by the research node of the nuclear medicine dept"[:64]
    options = ResultOptions(kinds=(ResultKind.SEG,), series_descriptions={ResultKind.SEG: long})
    descriptions = [ds.SeriesDescription for _, ds in build_results(study.result, study.sources, options)]
    assert descriptions == [
        "Bone metastases segmentation by the research node of the ANT",
        "Bone metastases segmentation by the research node of the POST",
    ]


def _nrrd(path: Path) -> tuple[dict[str, str], np.ndarray]:
    """Header fields and voxels (x fastest) of the gzip-encoded NRRD that dcmqi writes."""
    raw = path.read_bytes()
    head, data = raw.split(b"\n\n", 1)
    fields = dict(
        line.split(": ", 1) for line in head.decode("latin-1").splitlines()[1:] if ": " in line
    )
    assert fields["encoding"] == "gzip" and fields["type"] == "short" and fields["endian"] == "little"
    sizes = [int(v) for v in fields["sizes"].split()]
    voxels = np.frombuffer(gzip.decompress(data), dtype="<i2").reshape(sizes[::-1])
    return fields, voxels


def segimage2itkimage(seg: Path, out: Path) -> tuple[dict[str, str], np.ndarray, dict]:
    """Run dcmqi's SEG reader (3D Slicer's): the NRRD header, voxels and metadata JSON."""
    out.mkdir(parents=True)
    run = subprocess.run(
        ["segimage2itkimage", "--inputDICOM", str(seg), "--outputDirectory", str(out), "-t", "nrrd"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    fields, voxels = _nrrd(out / "1.nrrd")
    return fields, voxels, json.loads((out / "meta.json").read_text())


@pytest.mark.parametrize("geometry", [True, False], ids=["detector-geometry", "no-geometry"])
@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_seg_geometry_per_source_layout_reads_in_dcmqi_and_highdicom(
    layout: str, geometry: bool, tmp_path: Path
) -> None:
    """Two-frame source with detector geometry: the first detector's orientation (as OHIF orients
    every frame) at the frame's detector position; otherwise the identity orientation at the origin
    (seg.py docstring, "Geometry"). Always a Frame of Reference."""
    study = make_study(layout, geometry=geometry)
    objects = build_results(study.result, study.sources, SEG_ONLY)
    sources = write(tmp_path, study.sources, "nm")
    segs = write(tmp_path, [ds for _, ds in objects], "seg")
    for path in segs:
        assert dciodvfy_errors(path) == []
    assert dcentvfy_errors(sources + segs) == []
    frames = [study.result.scan.views[v] for v in (View.ANTERIOR, View.POSTERIOR)]
    for index, ((_, seg), path, image) in enumerate(zip(objects, segs, frames, strict=True)):
        source = study.sources[index if layout == "split" else 0]
        if geometry:
            assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        else:
            assert "FrameOfReferenceUID" not in source and seg.FrameOfReferenceUID
        detector = source.DetectorInformationSequence[index if layout == "multiframe" else 0]
        if layout == "multiframe" and geometry:
            expected_position = [float(v) for v in detector.ImagePositionPatient]
            first = source.DetectorInformationSequence[0]
            expected_orientation = [float(v) for v in first.ImageOrientationPatient]
        else:
            expected_position, expected_orientation = [0.0, 0.0, 0.0], list(IDENTITY_ORIENTATION)
        position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
        orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        assert [float(v) for v in position] == expected_position
        assert [float(v) for v in orientation.ImageOrientationPatient] == expected_orientation

        mask = study.result.views[image.view].mask
        volume = hd.seg.segread(path).get_volume()
        np.testing.assert_array_equal(volume.array[0, :, :, 0], mask)
        np.testing.assert_allclose(volume.position, expected_position)

        fields, voxels, meta = segimage2itkimage(path, tmp_path / f"dcmqi{index}")
        assert fields["sizes"] == f"{mask.shape[1]} {mask.shape[0]} 1"
        np.testing.assert_array_equal(voxels[0] != 0, mask.astype(bool))
        assert meta["SeriesDescription"].startswith("AI bone metastases SEG ")
        assert meta["segmentAttributes"][0][0]["SegmentLabel"] == "Bone metastasis"


def test_seg_without_lesions_keeps_the_empty_frame_on_its_own_view(tmp_path: Path) -> None:
    """An empty SEG (no lesion in a view) is sent, and its one frame references the frame of its own
    view, never the anterior one (OHIF 3.13 opened the real posterior empty SEG over the anterior
    frame: with no segment pixels it stays on the display set's first frame; docs/conformance.md)."""
    study = make_study("multiframe", with_lesions=False)
    objects = build_results(study.result, study.sources, SEG_ONLY)
    assert len(objects) == 2
    expected = {view: (image.source.sop_instance_uid, image.source.frame_number)
                for view, image in study.result.scan.views.items()}
    assert expected[View.POSTERIOR][1] == 2
    for view, path in zip((View.ANTERIOR, View.POSTERIOR), write(tmp_path, [ds for _, ds in objects], "seg"),
                          strict=True):
        assert dciodvfy_errors(path) == []
        seg = hd.seg.segread(path)
        assert seg.NumberOfFrames == 1 and seg.SeriesDescription.endswith(("ANT", "POST")[view is View.POSTERIOR])
        uid, frame = _source_reference(seg)
        assert (uid, frame) == expected[view]
        assert "0 lesions" in seg.ContentDescription
        pixels = seg.get_pixels_by_source_frame(uid, source_frame_numbers=[frame], segment_numbers=[1])
        assert pixels.shape == (1, 1024, 256, 1) and not pixels.any()


def test_seg_for_a_study_with_one_view_only() -> None:
    study = make_study("split", views=(View.POSTERIOR,))
    objects = build_results(study.result, study.sources, SEG_ONLY)
    assert len(objects) == 1
    uid, frame = _source_reference(objects[0][1])
    assert (uid, frame) == (study.sources[0].SOPInstanceUID, 1)


def test_reprocessing_gives_new_series_and_a_retry_the_same_uids() -> None:
    study = make_study("multiframe")
    first = build_results(study.result, study.sources, SEG_ONLY)
    retry = build_results(study.result, study.sources, SEG_ONLY)
    second = build_results(study.result, study.sources, SEG_ONLY, study_version=2)
    assert [ds.SOPInstanceUID for _, ds in first] == [ds.SOPInstanceUID for _, ds in retry]
    assert first[0][1].SeriesInstanceUID != second[0][1].SeriesInstanceUID
    assert {ds.SOPInstanceUID for _, ds in first}.isdisjoint(ds.SOPInstanceUID for _, ds in second)
    assert second[0][1].SeriesNumber == 9011
    custom = ResultOptions(kinds=(ResultKind.SEG,), series_number_base=500,
                           series_descriptions={ResultKind.SEG: "Bone mets (research)"})
    (_, seg), _ = build_results(study.result, study.sources, custom, study_version=3)
    assert (seg.SeriesNumber, seg.SeriesDescription) == (521, "Bone mets (research) ANT")


def test_seg_rejects_sources_that_do_not_fit() -> None:
    study = make_study("split")
    with pytest.raises(ValueError, match="posterior view's SOP Instance UID"):
        build_results(study.result, study.sources[:1], SEG_ONLY)
    other = make_study("split", seed=1)
    with pytest.raises(ValueError, match="belongs to study"):
        foreign = [copy.deepcopy(study.sources[0]), study.sources[1]]
        foreign[0].StudyInstanceUID = other.result.scan.study_instance_uid
        build_results(study.result, foreign, SEG_ONLY)
    small = make_study("split", rows=512, columns=128, spacing=4.52)
    with pytest.raises(ValueError, match="the scan says 1024 x 256"):
        swapped = [copy.deepcopy(small.sources[0]), study.sources[1]]
        swapped[0].SOPInstanceUID = study.sources[0].SOPInstanceUID
        swapped[0].StudyInstanceUID = study.sources[0].StudyInstanceUID
        build_results(study.result, swapped, SEG_ONLY)
    with pytest.raises(ValueError, match="study_version"):
        build_results(study.result, study.sources, SEG_ONLY, study_version=0)
