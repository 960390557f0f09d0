"""All result objects together: valid per object and across files, own series, identity, options."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.segmentation.scan import View
from tests.test_results_inputs import dcentvfy_errors, dciodvfy_errors, make_study, write

SIZES = [(1024, 256, 2.26), (2048, 512, 1.13)]
SOP_CLASSES = {
    ResultKind.SEG: "1.2.840.10008.5.1.4.1.1.66.4",
    ResultKind.GSPS: "1.2.840.10008.5.1.4.1.1.11.1",
    ResultKind.SR: "1.2.840.10008.5.1.4.1.1.88.33",
    ResultKind.SC: "1.2.840.10008.5.1.4.1.1.7",
}


@pytest.mark.parametrize("layout", ["multiframe", "split"])
@pytest.mark.parametrize(("rows", "columns", "spacing"), SIZES)
def test_every_object_passes_dciodvfy_and_dcentvfy_with_its_sources(
    layout: str, rows: int, columns: int, spacing: float, tmp_path: Path
) -> None:
    study = make_study(layout, rows=rows, columns=columns, spacing=spacing)
    objects = build_results(study.result, study.sources)
    assert [kind for kind, _ in objects] == [
        ResultKind.SEG, ResultKind.SEG, ResultKind.GSPS, ResultKind.SR, ResultKind.SC]
    sources = write(tmp_path, study.sources, "nm")
    results = write(tmp_path, [ds for _, ds in objects], "result")
    for (kind, _), path in zip(objects, results, strict=True):
        assert dciodvfy_errors(path) == [], (kind, path)
        back = pydicom.dcmread(path)
        assert back.SOPClassUID == SOP_CLASSES[kind]
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert dcentvfy_errors(sources + results) == []


def test_each_kind_has_its_own_series_in_the_source_study_with_identity_and_equipment() -> None:
    study = make_study("split", patient_name="Müller^Jörg")
    options = ResultOptions(institution_name="Nuclear Medicine Dept", device_serial_number="node-7")
    objects = build_results(study.result, study.sources, options)
    source = study.sources[0]
    series: dict[ResultKind, set[str]] = {}
    for kind, ds in objects:
        series.setdefault(kind, set()).add(ds.SeriesInstanceUID)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                        "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
            assert str(ds.get(keyword)) == str(source.get(keyword)), (kind, keyword)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        if kind is ResultKind.SEG:  # one series per view (seg.py)
            assert ds.SeriesNumber in (9001, 9005)
            assert ds.SeriesDescription in {f"{options.description(kind)} {v}" for v in ("ANT", "POST")}
        else:
            assert ds.SeriesNumber == 9000 + {"GSPS": 2, "SR": 3, "SC": 4}[kind.value]
            assert ds.SeriesDescription == options.description(kind)
        assert ds.Manufacturer == "dicomnode"
        assert ds.SoftwareVersions == options.software_version
        assert ds.InstitutionName == "Nuclear Medicine Dept"
        assert ds.DeviceSerialNumber == "node-7"
        assert ds.ManufacturerModelName == study.result.algorithm.name
        assert ds.InstanceCreationDate == objects[0][1].InstanceCreationDate
        assert ds.InstanceCreationTime == objects[0][1].InstanceCreationTime
    assert {kind: len(uids) for kind, uids in series.items()} == {
        ResultKind.SEG: 2, ResultKind.GSPS: 1, ResultKind.SR: 1, ResultKind.SC: 1}
    all_series = [uid for uids in series.values() for uid in uids]
    assert len(set(all_series)) == 5
    assert source.SeriesInstanceUID not in all_series


def test_compressed_sources_give_the_same_valid_objects(tmp_path: Path) -> None:
    study = make_study("multiframe")
    plain = build_results(study.result, study.sources)
    for ds in study.sources:
        ds.compress(RLELossless, generate_instance_uid=False)
    objects = build_results(study.result, study.sources)
    paths = write(tmp_path, [ds for _, ds in objects], "result")
    for path in paths:
        assert dciodvfy_errors(path) == []
    assert dcentvfy_errors(write(tmp_path, study.sources, "nm") + paths) == []
    assert [ds.SOPInstanceUID for _, ds in objects] == [ds.SOPInstanceUID for _, ds in plain]
    assert dict(objects)[ResultKind.SC].PixelData == dict(plain)[ResultKind.SC].PixelData


def test_building_leaves_the_sources_untouched() -> None:
    study = make_study("multiframe", geometry=True)
    before = [copy.deepcopy(ds) for ds in study.sources]
    build_results(study.result, study.sources)
    assert study.sources == before


def test_kinds_choose_the_objects_in_their_order() -> None:
    study = make_study("multiframe")
    options = ResultOptions(kinds=("SR", "SC"))
    assert [kind for kind, _ in build_results(study.result, study.sources, options)] == [
        ResultKind.SR, ResultKind.SC]
    assert build_results(study.result, study.sources, ResultOptions(kinds=())) == []


def test_options_reject_what_dicom_cannot_hold() -> None:
    with pytest.raises(ValueError, match="kinds.1\n  Input should be 'SEG', 'GSPS', 'SR' or 'SC'"):
        ResultOptions(kinds=("SEG", "RTSTRUCT"))
    with pytest.raises(ValueError, match="listed once"):
        ResultOptions(kinds=("SEG", "SEG"))
    with pytest.raises(ValueError, match="at most 64 characters"):
        ResultOptions(series_descriptions={"SR": "x" * 65})
    with pytest.raises(ValueError, match="series_number_base"):
        ResultOptions(series_number_base=-1)
    partial = ResultOptions(series_descriptions={"SC": "Key image"})
    assert partial.description(ResultKind.SC) == "Key image"
    assert partial.description(ResultKind.SEG) == "AI bone metastases SEG"


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_a_study_without_lesions_still_gets_every_object_saying_so(layout: str, tmp_path: Path) -> None:
    study = make_study(layout, with_lesions=False)
    objects = build_results(study.result, study.sources)
    assert len(objects) == 5
    paths = write(tmp_path, [ds for _, ds in objects], "result")
    for path in paths:
        assert dciodvfy_errors(path) == []
    sr = dict(objects)[ResultKind.SR]
    texts = [item.TextValue for item in _comments(sr)]
    assert "No lesion detected." in texts
    gsps = dict(objects)[ResultKind.GSPS]
    lines = [text.UnformattedTextValue for annotation in gsps.GraphicAnnotationSequence
             for text in annotation.get("TextObjectSequence", [])]
    assert "ANT: no lesion detected" in lines and "POST: no lesion detected" in lines
    assert all("GraphicObjectSequence" not in annotation for annotation in gsps.GraphicAnnotationSequence)


def test_a_study_with_one_view_says_which_is_missing(tmp_path: Path) -> None:
    study = make_study("split", views=(View.ANTERIOR,))
    objects = build_results(study.result, study.sources)
    assert [kind for kind, _ in objects] == [ResultKind.SEG, ResultKind.GSPS, ResultKind.SR, ResultKind.SC]
    paths = write(tmp_path, [ds for _, ds in objects], "result")
    for path in paths:
        assert dciodvfy_errors(path) == []
    assert dcentvfy_errors(write(tmp_path, study.sources, "nm") + paths) == []
    texts = [item.TextValue for item in _comments(dict(objects)[ResultKind.SR])]
    assert any("posterior view missing" in text for text in texts)
    assert list(dict(objects)[ResultKind.SC].PatientOrientation) == ["L", "F"]


def _comments(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (evaluations,) = [item for item in sr.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    return list(evaluations.ContentSequence)
