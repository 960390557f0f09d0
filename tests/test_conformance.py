"""docs/conformance.md says what the code does: its tables are checked against the code's own constants,
so a change to the receiver, the exporter or their defaults that the statement does not follow fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pynetdicom
from pynetdicom.sop_class import Verification

from dicomnode.config import NodeConfig
from dicomnode.dicom.status import PERMANENT_FAILURES, Status, permanent, stored
from dicomnode.dicom.sop import RECEIVED
from dicomnode.pipeline.receiver import TRANSFER_SYNTAXES

STATEMENT = (Path(__file__).resolve().parents[1] / "docs" / "conformance.md").read_text()


def section(title: str) -> str:
    """The text of the section whose heading contains ``title``, up to the next heading of its level or higher."""
    match = re.search(rf"^(#+) [\d.]* *{re.escape(title)}.*$", STATEMENT, re.MULTILINE)
    assert match, f"no section {title!r}"
    level = len(match[1])
    end = re.search(rf"^#{{1,{level}}} ", STATEMENT[match.end():], re.MULTILINE)
    return STATEMENT[match.end(): match.end() + end.start() if end else None]


def uids(text: str) -> list[str]:
    return re.findall(r"\b1\.2\.840\.10008(?:\.\d+)+\b", text)


def test_receiver_presentation_contexts_are_those_negotiated():
    table = section("Accepted presentation contexts")
    storage_row = next(line for line in table.splitlines() if line.startswith("| Every Storage SOP class"))
    assert uids(storage_row) == [str(uid) for uid in TRANSFER_SYNTAXES]  # same syntaxes, same preference
    sop_classes = section("SOP classes")  # the receiver's table comes first
    assert set(uids(sop_classes)) == {str(Verification), *map(str, RECEIVED)}


def test_storage_scp_statuses_are_those_answered():
    table = section("SOP specific conformance — Storage SCP")
    listed = {int(code, 16) for code in re.findall(r"^\| 0x([0-9A-F]{4}) \|", table, re.MULTILINE)}
    assert listed == {int(status) for status in Status}


def test_export_status_handling_matches_the_exporter():
    table = section("Activity — send results")
    warnings_row = next(line for line in table.splitlines() if "Delivered" in line)
    assert all(stored(int(code, 16)) for code in re.findall(r"0x([0-9A-F]{4})", warnings_row))
    refused_row = next(line for line in table.splitlines() if "sending it again gets the same answer" in line)
    ranges = re.findall(r"0x([0-9A-F]{4})–0x([0-9A-F]{4})", refused_row)
    single = {int(code, 16) for code in re.findall(r"(?<!–)0x([0-9A-F]{4})(?!–)", refused_row)}
    assert single | {0x0122} == set(PERMANENT_FAILURES)  # 0x0122 has its own row; the ranges follow
    assert ranges == [("A900", "A9FF"), ("C000", "CFFF")]
    assert all(permanent(code) for code in single | {int(end, 16) for pair in ranges for end in pair})


def test_defaults_and_implementation_identity():
    defaults = NodeConfig().node
    parameters = section("Parameters")
    assert f"| `node.max_pdu_size` | {defaults.max_pdu_size} |" in parameters
    assert f"| `node.max_associations` | {defaults.max_associations} |" in parameters
    policies = section("Association policies")
    assert pynetdicom.PYNETDICOM_IMPLEMENTATION_UID in policies
    assert pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION in policies


#: Every clause of the Storage SCP status table's refusal rows (0xA900, 0xC000), each with the cases
#: of tests/malformed_corpus.py that exercise it. test_malformed sends every case to a real receiver
#: and checks the status it gets, so a clause of the statement without a case, or a case whose status
#: is not its row's, fails here.
CLAUSES: dict[int, dict[str, list[str]]] = {
    0xA900: {
        "SOP Class / Instance UID of the data set differ": ["dataset_sop_class_differs", "dataset_sop_instance_differs"],
        "Modality not that of the class": ["modality_not_nm"],
        "Study / Series Instance UID or an Image Pixel Module attribute missing": [
            "missing_study_uid", "missing_rows", "missing_pixel_data"],
        "Bits Allocated not 8/16 (NM, SC), 16 (CT) or 1/8 (SEG)": ["bits_allocated_32"],
        "Bits Stored / High Bit inconsistent": ["high_bit_mismatch"],
        "Number of Frames not a positive integer": ["zero_number_of_frames"],
        "Pixel Data length ≠ Rows × Columns × Frames × Samples × Bits Allocated": [
            "rows_columns_mismatch", "frames_mismatch", "zero_rows"],
        "contradictory view information": ["code_contradicted_by_description", "two_anterior_views",
                                           "detector_vector_frames_mismatch", "detector_vector_without_item",
                                           "unreadable_patient_orientation"],
        "an oblique or lateral detector in a WHOLE BODY instance": ["oblique_detector"],
        "Pixel Spacing missing or not numeric": ["missing_pixel_spacing", "pixel_spacing_not_numeric"],
        "colour pixels": ["rgb_pixels"],
    },
    0xC000: {
        "truncated data": ["truncated_header"],
        "bytes after the last element": ["bytes_after_last_element"],
        "a declared length beyond the received bytes": ["truncated_pixel_data", "enormous_pixel_data_length",
                                                        "enormous_element_length"],
        "VR encoding other than the negotiated one": ["explicit_bytes_on_implicit_context",
                                                      "implicit_bytes_on_explicit_context"],
        "undecodable values or compressed pixels": ["undecodable_value", "corrupt_rle"],
        "a deflated stream that does not inflate": ["plain_bytes_on_deflate_context"],
        "native Pixel Data of undefined length": ["native_pixel_data_undefined_length"],
        "an invalid UID": ["sop_instance_uid_path_traversal", "study_uid_path_traversal", "uid_too_long",
                           "uid_empty_component"],
        "a SEG that references no current instance of the same study held by this node": [
            "seg_of_unknown_instance", "seg_without_references"],
    },
}


#: Parts of those rows that introduce clauses rather than state one.
HEADINGS = {"Not readable in the negotiated transfer syntax", "For whole-body NM images only"}


def _row(status: int) -> str:
    table = section("SOP specific conformance — Storage SCP")
    (row,) = [line for line in table.splitlines() if line.startswith(f"| 0x{status:04X} |")]
    return row.split("|")[3]


def test_every_refusal_the_statement_lists_is_a_case_the_receiver_answers_so():
    from tests.malformed_corpus import KINDS

    statuses = {kind.name: kind.status for kind in KINDS}
    for status, clauses in CLAUSES.items():
        cell = _row(status)
        for clause, cases in clauses.items():
            assert clause in cell, f"0x{status:04X}: the statement no longer says {clause!r}"
            assert cases and all(statuses[case] == status for case in cases), (status, clause)
        # Every part of the row (split at ';', ',', ':' and '. ' outside parentheses) is a clause above.
        parts = [part.strip(" .") for part in re.split(r"(?:[;,:]|\. )(?![^()]*\))", cell)]
        uncovered = [part for part in parts if part and part not in HEADINGS
                     and not any(part in clause or clause in part for clause in clauses)]
        assert uncovered == [], f"0x{status:04X}: clauses without a test case: {uncovered}"
