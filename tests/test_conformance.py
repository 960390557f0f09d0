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
    storage_row = next(line for line in table.splitlines() if line.startswith("| NM Image Storage"))
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
