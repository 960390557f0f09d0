"""Whole-body acquisitions of a real exam: phases, re-acquired views, identity that disagrees, what is
not a bone scan; views from a detector's Image Orientation and Siemens 99NMG codes; contradictory
view information; header repairs before result building (issue "Real cameras")."""

from __future__ import annotations

import copy

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.dicom.acquisitions import (
    NMImageKind,
    nm_image_kind,
    split_acquisitions,
    split_hybrid,
    study_tracer_refusal,
)
from dicomnode.pipeline.models import NodeModels
from dicomnode.pipeline.processing import process_acquisition
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.results.identity import repair_sources
from dicomnode.segmentation.scan import NotWholeBodyView, View, ViewError, ViewRule
from dicomnode.segmentation.viewrules import stated_views
from dicomnode.segmentation.views import load_scan
from tests.nm_factory import nm_study, phantom_counts
from tests.processing_helpers import threshold_segmenter  # noqa: F401 (the "segmenter" fixture)


def split_pair(seed: int = 1, time: str = "100000") -> list[Dataset]:
    pair = nm_study(phantom_counts(rows=256, columns=64, seed=seed), layout="split")
    for ds in pair:
        ds.AcquisitionDate, ds.AcquisitionTime = "20261130", time
    return pair


def renamed(ds: Dataset, suffix: str) -> Dataset:
    copied = copy.deepcopy(ds)
    copied.SOPInstanceUID = f"{ds.SOPInstanceUID[:50]}.{suffix}"
    return copied


def siemens_detector(item: Dataset, value: str, meaning: str, orientation: list[float] | None) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "99NMG", meaning
    item.ViewCodeSequence = Sequence([code])
    item.ImageOrientationPatient = orientation


def pharmaceutical(name: str) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = name
    return item


def test_image_type_value_3_decides_the_kind_and_a_missing_one_falls_back_to_the_matrix():
    (ds,) = nm_study(phantom_counts(rows=256, columns=64))
    assert nm_image_kind(ds) == (NMImageKind.WHOLE_BODY, None)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    assert nm_image_kind(ds)[0] is NMImageKind.STATIC
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    kind, note = nm_image_kind(ds)
    assert kind is NMImageKind.WHOLE_BODY and "256 x 64 matrix" in note
    ds.Rows = ds.Columns = 64
    assert nm_image_kind(ds)[0] is NMImageKind.OTHER


def test_two_phases_in_one_series_are_two_acquisitions_paired_by_time():
    early, late = split_pair(1, "090000"), split_pair(2, "120000")
    for ds in late:
        ds.SeriesInstanceUID = early[0].SeriesInstanceUID
    acquisitions = split_acquisitions([*late, *early])
    assert [a.key.endswith(f"phase {n}") for n, a in enumerate(acquisitions, start=1)] == [True, True]
    assert {ds.SOPInstanceUID for ds in acquisitions[0].datasets} == {ds.SOPInstanceUID for ds in early}
    assert all(a.refusal is None for a in acquisitions)


def test_a_reacquired_view_supersedes_the_earlier_one_with_a_note():
    anterior, posterior = split_pair(1, "100000")
    again = renamed(anterior, "2")
    again.AcquisitionTime = "102000"
    (acquisition,) = split_acquisitions([anterior, posterior, again])
    assert acquisition.refusal is None
    assert {ds.SOPInstanceUID for ds in acquisition.datasets} == {again.SOPInstanceUID, posterior.SOPInstanceUID}
    assert any("re-acquired" in note and anterior.SOPInstanceUID in note for note in acquisition.notes)
    assert set(load_scan(acquisition.datasets).views) == {View.ANTERIOR, View.POSTERIOR}


def test_views_of_different_patients_are_not_merged():
    anterior, posterior = split_pair()
    posterior.PatientID = "SOMEONE-ELSE"
    (acquisition,) = split_acquisitions([anterior, posterior])
    assert acquisition.refusal == "the views disagree on patient identity (Patient ID); not merged"
    assert "SOMEONE-ELSE" not in acquisition.refusal


@pytest.mark.parametrize("change, reason", [
    (lambda ds: setattr(ds, "SeriesDescription", "FLOOD 57Co"), "flood acquisition"),
    (lambda ds: setattr(ds, "RadiopharmaceuticalInformationSequence", Sequence([pharmaceutical("Tc99m MIBI")])),
     "is not a 99mTc bone agent"),
])
def test_what_is_not_a_bone_scan_is_not_processable(change, reason):
    (ds,) = nm_study(phantom_counts(rows=256, columns=64))
    change(ds)
    (acquisition,) = split_acquisitions([ds])
    assert reason in acquisition.refusal


def _recon(uid: str, frame_of_reference: str, agent: str = "Tc99m MDP") -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = uid, "1.2.3", frame_of_reference
    ds.SeriesDescription = "SPECT AC"
    ds.RadiopharmaceuticalInformationSequence = Sequence([pharmaceutical(agent)])
    return ds


def _ct(uid: str, series: str, frame_of_reference: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid, series, frame_of_reference
    return ds


def test_spect_pairs_with_the_ct_of_its_frame_of_reference_runs_alone_without_and_a_perfusion_spect_is_refused():
    cts = [_ct(f"2.{n}", "2", "9.1") for n in range(3)] + [_ct("3.1", "3", "9.1"), _ct("4.1", "4", "9.9")]
    hybrid, alone, perfusion = split_hybrid(
        [_recon("1.1", "9.1"), _recon("1.2", "9.7"), _recon("1.3", "9.9", "Tc99m sestamibi")], cts)
    assert [ds.SOPInstanceUID for ds in hybrid.ct] == ["2.0", "2.1", "2.2"]  # the longest series of 9.1
    assert hybrid.refusal is None
    assert alone.ct == () and alone.refusal is None  # SPECT-only: segmented on its own grid
    assert "is not a 99mTc bone agent" in perfusion.refusal


def test_a_small_matrix_is_not_a_whole_body_scan():
    (ds,) = nm_study(phantom_counts(rows=64, columns=16))
    (acquisition,) = split_acquisitions([ds])
    assert "is not a whole-body scan" in acquisition.refusal


def test_siemens_views_come_from_the_detector_orientation_and_its_geometry_is_followed():
    (ds,) = nm_study(phantom_counts(rows=256, columns=64), layout="multiframe")
    ds.PatientOrientation = None
    items = ds.DetectorInformationSequence
    siemens_detector(items[0], "RT      ANT", "RT      ANT      LT", [1, 0, 0, 0, 0, -1])
    siemens_detector(items[1], "LT     POST", "LT     POST     RT", [-1, 0, 0, 0, 0, -1])
    assert stated_views(ds) == [(View.ANTERIOR, ViewRule.DETECTOR_ORIENTATION),
                                (View.POSTERIOR, ViewRule.DETECTOR_ORIENTATION)]
    scan = load_scan([ds])
    assert (scan.posterior.source.flip_lr, scan.anterior.source.flip_lr) == (True, False)
    for item in items:  # without orientation the private code still says it
        item.ImageOrientationPatient = None
    assert [view for view, _ in stated_views(ds)] == [View.ANTERIOR, View.POSTERIOR]
    assert {rule for _, rule in stated_views(ds)} == {ViewRule.VENDOR_CODE}


@pytest.mark.parametrize("orientation, code", [([0.7071, 0.7071, 0, 0, 0, -1], None), (None, "LAO")])
def test_an_oblique_detector_is_not_a_whole_body_view(orientation, code):
    (ds,) = nm_study(phantom_counts(rows=256, columns=64), layout="multiframe")
    siemens_detector(ds.DetectorInformationSequence[0], code or "RT      ANT", code or "RT ANT LT", orientation)
    with pytest.raises(NotWholeBodyView):
        stated_views(ds)


def test_a_code_contradicted_by_the_description_is_refused_but_an_unmirrored_posterior_is_not():
    anterior, posterior = split_pair()
    posterior.SeriesDescription = "WB ANT"
    with pytest.raises(ViewError, match="contradictory view information"):
        stated_views(posterior)
    posterior.SeriesDescription, posterior.ImageID, posterior.PatientOrientation = "Bone", "", ["L", "F"]
    assert stated_views(posterior) == [(View.POSTERIOR, ViewRule.VIEW_CODE)]


def test_broken_patient_headers_are_repaired_and_the_repairs_are_noted(segmenter):
    (ds,) = nm_study(phantom_counts(rows=256, columns=64))
    ds.PatientBirthDate = "00000000"
    del ds.StudyID
    ds.PatientName = "X" * 100_000
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds.PatientSex = "UNKNOWN"
    repaired, notes = repair_sources([ds])
    assert repaired[0].PatientBirthDate == "" and repaired[0].StudyID == ""
    assert len(str(repaired[0].PatientName)) == 64 and repaired[0].SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientBirthDate == "00000000"  # the received data set is untouched
    assert len(notes) == 5 and not any("X" * 10 in note for note in notes)
    (acquisition,) = split_acquisitions([ds])
    run = process_acquisition(acquisition, NodeModels(planar=segmenter), ResultOptions())
    assert run.processed and len(run.objects) == 5
    report = next(obj for kind, obj in run.objects if kind.value == "SR")
    assert report.PatientBirthDate == "" and report.StudyID == ""


def _described(ds: Dataset, study: str, series: str, agent: str | None = None) -> Dataset:
    copied = copy.deepcopy(ds)
    copied.StudyDescription, copied.SeriesDescription = study, series
    if agent is None:
        copied.pop("RadiopharmaceuticalInformationSequence", None)
    else:
        copied.RadiopharmaceuticalInformationSequence = Sequence([pharmaceutical(agent)])
    return copied


def test_a_sestamibi_study_is_not_a_bone_scan_from_any_of_its_evidence():
    """As the real exam: the TOMO series states Sestamibi, the whole-body instances state no agent;
    the study is decided as a whole. Without any stated agent the descriptions decide; a stated bone
    agent outweighs a description."""
    (whole_body,) = nm_study(phantom_counts(rows=256, columns=64))
    unstated = _described(whole_body, "NM MIBI Parathyroid", "WB ANT/POST")
    tomo = _described(whole_body, "NM MIBI Parathyroid", "TOMO", agent="Sestamibi")
    assert split_acquisitions([unstated])[0].refusal is None  # each instance alone: nothing to refuse
    assert study_tracer_refusal([unstated, tomo]) == \
        "the study states radiopharmaceutical 'Sestamibi', not a 99mTc bone agent"
    assert "names 'mibi'" in study_tracer_refusal([unstated])
    assert "names 'mag3'" in study_tracer_refusal([_described(whole_body, "MAG3 Renogram", "WB")])
    assert study_tracer_refusal([_described(whole_body, "NM MIBI", "WB", agent="Tc99m MDP")]) is None
    assert study_tracer_refusal([_described(whole_body, "Skelettszintigraphie", "Ganzkoerper")]) is None
    assert study_tracer_refusal([_described(whole_body, "NM Bone Whole Body", "WB ANT/POST")]) is None


def test_a_later_reconstruction_of_the_same_acquisition_supersedes_the_earlier():
    """Two reconstructions with the same description and acquisition time, made a day apart: the later
    is segmented, with a note naming the earlier; another acquisition's volume is kept."""
    first = _recon("1.1", "9.7")
    first.SeriesInstanceUID, first.AcquisitionDate, first.AcquisitionTime = "5.1", "20261130", "101500"
    first.ContentDate, first.ContentTime = "20261130", "110000"
    later = copy.deepcopy(first)
    later.SOPInstanceUID, later.SeriesInstanceUID, later.ContentDate = "1.2", "5.2", "20261201"
    other = copy.deepcopy(first)
    other.SOPInstanceUID, other.SeriesInstanceUID, other.AcquisitionTime = "1.3", "5.3", "143000"
    kept, afternoon = split_hybrid([later, first, other], [])
    assert kept.spect is later and afternoon.spect is other and afternoon.notes == ()
    (note,) = kept.notes
    assert "series 5.2" in note and "supersedes the earlier reconstruction" in note and "series 5.1" in note


def test_the_planar_sr_names_its_acquisition_once_and_always_how_each_view_was_decided(segmenter):
    """The real SRs said "acquisition '…'" twice, and named the view rule only when a view was
    assumed; docs/conformance.md promises the rule always."""
    (ds,) = nm_study(phantom_counts(rows=256, columns=64))
    (acquisition,) = split_acquisitions([ds])
    run = process_acquisition(acquisition, NodeModels(planar=segmenter), ResultOptions())
    report = next(obj for kind, obj in run.objects if kind.value == "SR")
    comments = [str(item.TextValue) for item in report.ContentSequence[-1].ContentSequence]
    assert sum("acquisition '" in text for text in comments) == 1
    assert len(comments) == len(set(comments))
    (rules,) = [text for text in comments if text.startswith("Views decided: ")]
    assert "anterior by " in rules and "posterior by " in rules and "(frame 1)" in rules and "(frame 2)" in rules
