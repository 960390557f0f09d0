"""TID 1500 SR: the numbers read back (highdicom, dcmqi) equal the SegmentationResult's, and the
structure is the one OHIF's and dcmqi's readers take (sr.py docstring)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.planar.burden import assess_burden
from dicomnode.pipeline.results.planar.sr import SITE_CODES
from dicomnode.segmentation.scan import View
from tests.test_results_inputs import LESIONS, dciodvfy_errors, make_study, write

SR_AND_GSPS = ResultOptions(kinds=(ResultKind.SR, ResultKind.GSPS))
ALL = ResultOptions()
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
    built = build_results(study.result, study.sources, ALL)
    objects = {kind: ds for kind, ds in built if kind is not ResultKind.SEG}
    seg_by_view = {View.ANTERIOR if ds.SeriesDescription.endswith("ANT") else View.POSTERIOR: ds.SOPInstanceUID
                   for kind, ds in built if kind is ResultKind.SEG}
    (path,) = write(tmp_path, [objects[ResultKind.SR]], "sr")
    assert dciodvfy_errors(path) == []
    report = _read(path)
    groups = report.get_image_measurement_groups()
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
        assert group.finding_type.value == codes.SCT.Lesion.value  # a suspicious focus, not a diagnosis
        # No SCOORD at group level; every NUM is INFERRED FROM the outline on the lesion's own
        # source instance and frame (where OHIF's reader and adapter look), and the Area also
        # from the SEG. OHIF labels a NUM by its Code Meaning: the three must differ.
        assert not [item for item in group[0].ContentSequence if item.ValueType == "SCOORD"]
        nums = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
        first_num = nums[0]
        assert first_num.ConceptNameCodeSequence[0].CodeValue == codes.SCT.Area.value
        meanings = [num.ConceptNameCodeSequence[0].CodeMeaning for num in nums]
        assert len(set(meanings)) == 3 and meanings[1].startswith("Mean") and meanings[2].startswith("Maximum")
        scoords = [[item for item in num.ContentSequence if item.ValueType == "SCOORD"] for num in nums]
        assert [len(s) for s in scoords] == [1, 1, 1]
        assert len({tuple(s[0].GraphicData) for s in scoords}) == 1
        (scoord,) = scoords[0]
        (seg_ref,) = [item for item in first_num.ContentSequence if item.ValueType == "IMAGE"]
        assert seg_ref.ConceptNameCodeSequence[0].CodeValue == codes.DCM.SourceOfMeasurement.value
        referenced = seg_ref.ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPClassUID == SegmentationStorage
        assert referenced.ReferencedSOPInstanceUID == seg_by_view[lesion.view]
        assert int(referenced.ReferencedSegmentNumber) == 1
    # The SEGs are listed as evidence of the report (SR Document General, PS3.3 C.17.2).
    evidence = {item.ReferencedSOPInstanceUID for study_item in objects[ResultKind.SR].CurrentRequestedProcedureEvidenceSequence
                for series in study_item.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert set(seg_by_view.values()) <= evidence
    # The same tracking UIDs mark the lesion's contour in the GSPS.
    gsps_uids = {obj.TrackingUID for annotation in objects[ResultKind.GSPS].GraphicAnnotationSequence
                 for obj in annotation.get("GraphicObjectSequence", [])}
    assert gsps_uids == {group.tracking_uid for group in groups}


def _derived(sr) -> list:
    """The NUM items of the Derived Imaging Measurements container (DCM 126011)."""
    (container,) = [item for item in sr.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.DerivedImagingMeasurements.value]
    return list(container.ContentSequence)


def _number(items, name, view=None) -> float:
    matches = []
    for item in items:
        if item.ConceptNameCodeSequence[0].CodeValue != name.value:
            continue
        modifiers = [m.ConceptCodeSequence[0].CodeValue for m in item.get("ContentSequence", [])]
        if (view is None and not modifiers) or (view is not None and modifiers == [VIEW_CODE[view]]):
            matches.append(item)
    (item,) = matches
    value = item.MeasuredValueSequence[0]
    return float(value.get("FloatingPointValue", value.NumericValue))


def test_sr_study_and_view_numbers_equal_the_result(tmp_path: Path) -> None:
    """Per view and study numbers are in "Derived Imaging Measurements", not in measurement
    groups (OHIF stops on a measurement group without spatial coordinates)."""
    study = make_study("multiframe")
    (_, sr), = build_results(study.result, study.sources, ResultOptions(kinds=(ResultKind.SR,)))
    (path,) = write(tmp_path, [sr], "sr")
    report = _read(path)
    assert len(report.get_image_measurement_groups()) == len(study.result.lesions)
    items = _derived(hd.sr.srread(path))
    for view in (View.ANTERIOR, View.POSTERIOR):
        lesions = study.result.views[view].lesions
        assert _number(items, codes.SCT.NumberOfLesions, view) == len(lesions)
        assert _number(items, codes.SCT.Area, view) == sum(lesion.area_mm2 for lesion in lesions)
    assert _number(items, codes.SCT.NumberOfLesions) == len(study.result.lesions)
    assert _number(items, codes.SCT.Area) == sum(lesion.area_mm2 for lesion in study.result.lesions)
    bsi = [item for item in items if item.ConceptNameCodeSequence[0].CodeMeaning == "Approximate Bone Scan Index"]
    assert len(bsi) == 1 and bsi[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert _number(items, bsi[0].ConceptNameCodeSequence[0]) == assess_burden(study.result).bsi_percent
    assert _number(items, bsi[0].ConceptNameCodeSequence[0]) > 0

    comments = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence]
    assert sr.ContentSequence[-1].ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    assert any("Spiers" in text and "planar counts" in text for text in comments)
    assert all(text.isascii() for text in comments)
    assert any(text.endswith("NOT FOR DIAGNOSTIC USE.") for text in comments)
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_dcmqi_reads_the_measurement_groups(layout: str, tmp_path: Path) -> None:
    study = make_study(layout)
    (_, sr), = build_results(study.result, study.sources, ResultOptions(kinds=(ResultKind.SR,)))
    (path,) = write(tmp_path, [sr], "sr")
    out = tmp_path / "sr.json"
    run = subprocess.run(["tid1500reader", "--inputDICOM", str(path), "--outputMetadata", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    groups = json.loads(out.read_text())["Measurements"]
    assert len(groups) == len(study.result.lesions)  # one group per lesion
    first = groups[0]
    lesion = study.result.lesions[0]
    assert first["TrackingIdentifier"] == "ANT lesion 1"
    (area,) = [m for m in first["measurementItems"] if m["quantity"]["CodeValue"] == "42798000"]
    assert float(area["value"]) == pytest.approx(lesion.area_mm2, rel=1e-12)
    counts = {m["derivationModifier"]["CodeMeaning"]: float(m["value"]) for m in first["measurementItems"]
              if m["quantity"]["CodeValue"] == codes.DCM.NuclearMedicineProjectionActivity.value}
    assert counts == pytest.approx({"Mean": lesion.mean_counts, "Maximum": lesion.peak_counts}, rel=1e-12)
