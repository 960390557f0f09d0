"""What counts as a label (docs/training.md, "Site labels"): the rules of dicomnode.learn.corrections on
real highdicom SEGs and rejection notes made here."""

from __future__ import annotations

import re

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage, generate_uid

from dicomnode.learn.corrections import OurResults, checked_text, classify
from dicomnode.store.models import LabelKind
from dicomnode.synth.studies import write_studies
from dicomnode.tools.site import READER, VIEWER, correction_seg

OUR_SEG, OUR_SERIES = generate_uid(), generate_uid()
OURS = OurResults(processed=True, sop_instance_uids=frozenset({OUR_SEG}), series_instance_uids=frozenset({OUR_SERIES}),
                  segs=((7, OUR_SEG),), by_sop={OUR_SEG: 7})


@pytest.fixture(scope="module")
def anterior(tmp_path_factory) -> Dataset:
    folder = tmp_path_factory.mktemp("synth")
    entry = write_studies(folder, studies=1, seed=3, layout="split", png=False, rows=512, columns=128,
                          spacing_mm=4.52)["studies"][0]
    return pydicom.dcmread(folder / entry["folder"] / "anterior.dcm")


def _seg(nm: Dataset, marked: bool) -> Dataset:
    mask = np.zeros((nm.Rows, nm.Columns), np.uint8)
    if marked:
        mask[100:104, 60:64] = 1
    return correction_seg(nm, mask, series_uid=hd.UID(), number=1)


def test_a_drawn_seg_is_a_positive_with_its_provenance(anterior: Dataset) -> None:
    verdict = classify(_seg(anterior, True), OURS, manufacturer="dicomnode")
    assert verdict.kind is LabelKind.POSITIVE
    assert verdict.corrects_result_id == 7  # the study's newest SEG of ours
    assert verdict.creator == READER and re.fullmatch(r"[0-9]{8}[0-9.]+", verdict.content_at or "")


def test_a_seg_with_empty_lesion_segments_is_a_negative(anterior: Dataset) -> None:
    assert classify(_seg(anterior, False), OURS, manufacturer="dicomnode").kind is LabelKind.NEGATIVE


@pytest.mark.parametrize("change, reason", [
    (lambda ds: setattr(ds, "SOPInstanceUID", OUR_SEG), "own results"),
    (lambda ds: setattr(ds, "SeriesInstanceUID", OUR_SERIES), "own results"),
    (lambda ds: setattr(ds, "Manufacturer", "dicomnode"), "Manufacturer"),
])
def test_the_nodes_own_objects_are_not_labels(anterior: Dataset, change, reason: str) -> None:
    seg = _seg(anterior, True)
    change(seg)
    verdict = classify(seg, OURS, manufacturer="dicomnode")
    assert verdict.kind is LabelKind.IGNORED and reason in verdict.reason


def test_a_study_the_node_has_not_processed_gives_no_label(anterior: Dataset) -> None:
    verdict = classify(_seg(anterior, True), OurResults(processed=False), manufacturer="dicomnode")
    assert verdict.kind is LabelKind.IGNORED


def test_a_seg_without_a_lesion_segment_is_not_a_label(anterior: Dataset) -> None:
    seg = _seg(anterior, True)
    seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue = "91723000"  # Anatomical Structure
    assert classify(seg, OURS, manufacturer="dicomnode").kind is LabelKind.IGNORED


def _rejection(title: str, referenced: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = KeyObjectSelectionDocumentStorage, generate_uid(), generate_uid()
    ds.Manufacturer = VIEWER
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = title, "DCM", "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = [code]
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.66.4", referenced
    series = Dataset()
    series.ReferencedSOPSequence = [instance]
    evidence = Dataset()
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    return ds


def test_a_rejection_note_of_our_result_is_a_negative_and_others_are_not_labels() -> None:
    verdict = classify(_rejection("113001", OUR_SEG), OURS, manufacturer="dicomnode")
    assert verdict.kind is LabelKind.NEGATIVE and verdict.corrects_result_id == 7
    assert classify(_rejection("113001", generate_uid()), OURS, manufacturer="dicomnode").kind is LabelKind.IGNORED
    assert classify(_rejection("113039", OUR_SEG), OURS, manufacturer="dicomnode").kind is LabelKind.IGNORED


def test_network_text_is_checked_before_it_is_stored() -> None:
    assert checked_text("Doe^Jane\n\x1b[31m", 64) == "Doe^Jane??[31m"
    assert checked_text("x" * 100, 64) == "x" * 64
    assert checked_text("", 64) is None
