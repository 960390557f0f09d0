"""TID 1500 SR: the numbers read back (highdicom, dcmqi) equal the SegmentationResult's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.sr.codedict import codes

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.burden import assess_burden
from dicomnode.pipeline.results.sr import SITE_CODES
from segmentation.scan import View
from tests.test_results_inputs import LESIONS, dciodvfy_errors, make_study, write

SR_AND_GSPS = ResultOptions(kinds=(ResultKind.SR, ResultKind.GSPS))
VIEW_CODE = {View.ANTERIOR: "399321004", View.POSTERIOR: "399001007"}


def _read(path: Path) -> hd.sr.MeasurementReport:
    sr = hd.sr.srread(path)
    return hd.sr.MeasurementReport.from_sequence([sr])


def _measurement(group, name, derivation=None) -> float:
    matches = [m for m in group.get_measurements(name=name)
               if derivation is None or (m.derivation is not None and m.derivation.value == derivation.value)]
    assert len(matches) == 1, (name, derivation)
    return matches[0].value


def _code_of(group, name) -> str:
    (value,) = [e.value.value for e in group.get_qualitative_evaluations() if e.name.value == name.value]
    return value


@pytest.mark.parametrize("layout", ["multiframe", "split"])
@pytest.mark.parametrize(("rows", "columns", "spacing"), [(1024, 256, 2.26), (2048, 512, 1.13)])
def test_sr_lesion_measurements_equal_the_result(
    layout: str, rows: int, columns: int, spacing: float, tmp_path: Path
) -> None:
    study = make_study(layout, rows=rows, columns=columns, spacing=spacing)
    objects = dict(build_results(study.result, study.sources, SR_AND_GSPS))
    (path,) = write(tmp_path, [objects[ResultKind.SR]], "sr")
    assert dciodvfy_errors(path) == []
    report = _read(path)
    groups = report.get_planar_roi_measurement_groups()
    lesions = study.result.lesions
    assert len(groups) == len(lesions) == sum(len(v) for v in LESIONS.values())
    burden = assess_burden(study.result)
    sites = {(item.lesion.view, item.lesion.label): item.site
             for view_burden in burden.views.values() for item in view_burden.lesions}
    for group, lesion in zip(groups, lesions, strict=True):
        assert _measurement(group, codes.SCT.Area) == lesion.area_mm2
        activity = codes.DCM.NuclearMedicineProjectionActivity
        assert _measurement(group, activity, codes.SCT.Mean) == lesion.mean_counts
        assert _measurement(group, activity, codes.SCT.Maximum) == lesion.peak_counts
        assert _code_of(group, codes.DCM.ImageView) == VIEW_CODE[lesion.view]
        (site,) = group.finding_sites
        assert site.value.value == SITE_CODES[sites[(lesion.view, lesion.label)]].value
        assert group.finding_type.value == codes.SCT.NeoplasmSecondary.value
        # The region is drawn on the lesion's own source instance and frame.
        source = study.result.scan.views[lesion.view].source
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        (image_ref,) = [item for item in region.ContentSequence]
        assert image_ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
        frames = image_ref.ReferencedSOPSequence[0].get("ReferencedFrameNumber")
        assert (frames is not None) == (layout == "multiframe")
        if frames is not None:
            assert int(frames) == source.frame_number
        r0, c0, r1, c1 = lesion.bbox
        columns_, rows_ = region.value[:, 0], region.value[:, 1]
        assert c0 <= columns_.min() and columns_.max() <= c1 and r0 <= rows_.min() and rows_.max() <= r1
    # The same tracking UIDs mark the lesion's contour in the GSPS.
    gsps_uids = {obj.TrackingUID for annotation in objects[ResultKind.GSPS].GraphicAnnotationSequence
                 for obj in annotation.get("GraphicObjectSequence", [])}
    assert gsps_uids == {group.tracking_uid for group in groups}


def test_sr_study_and_view_numbers_equal_the_result(tmp_path: Path) -> None:
    study = make_study("multiframe")
    (_, sr), = build_results(study.result, study.sources, ResultOptions(kinds=(ResultKind.SR,)))
    (path,) = write(tmp_path, [sr], "sr")
    report = _read(path)
    groups = {group.tracking_identifier: group for group in report.get_image_measurement_groups()}
    for view in (View.ANTERIOR, View.POSTERIOR):
        group = groups[f"{'ANT' if view is View.ANTERIOR else 'POST'} view lesions"]
        lesions = study.result.views[view].lesions
        assert _measurement(group, codes.SCT.NumberOfLesions) == len(lesions)
        assert _measurement(group, codes.SCT.Area) == sum(lesion.area_mm2 for lesion in lesions)
        assert _code_of(group, codes.DCM.ImageView) == VIEW_CODE[view]
    total = groups["Study bone burden"]
    assert _measurement(total, codes.SCT.NumberOfLesions) == len(study.result.lesions)
    assert _measurement(total, codes.SCT.Area) == sum(lesion.area_mm2 for lesion in study.result.lesions)
    bsi = [m for m in total.get_measurements() if m.name.meaning == "Approximate Bone Scan Index"]
    assert len(bsi) == 1 and bsi[0].unit.value == "%"
    assert bsi[0].value == assess_burden(study.result).bsi_percent
    assert bsi[0].value > 0

    comments = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence]
    assert sr.ContentSequence[-1].ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    assert any("Spiers" in text and "planar counts" in text for text in comments)
    assert all(text.isascii() for text in comments)
    assert any(text.endswith("NOT FOR DIAGNOSTIC USE.") for text in comments)
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_dcmqi_reads_the_measurement_groups(tmp_path: Path) -> None:
    study = make_study("split")
    (_, sr), = build_results(study.result, study.sources, ResultOptions(kinds=(ResultKind.SR,)))
    (path,) = write(tmp_path, [sr], "sr")
    out = tmp_path / "sr.json"
    run = subprocess.run(["tid1500reader", "--inputDICOM", str(path), "--outputMetadata", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    groups = json.loads(out.read_text())["Measurements"]
    assert len(groups) == len(study.result.lesions) + 2 + 1  # lesions, views, study
    first = groups[0]
    lesion = study.result.lesions[0]
    assert first["TrackingIdentifier"] == "ANT lesion 1"
    (area,) = [m for m in first["measurementItems"] if m["quantity"]["CodeValue"] == "42798000"]
    assert float(area["value"]) == pytest.approx(lesion.area_mm2, rel=1e-12)
