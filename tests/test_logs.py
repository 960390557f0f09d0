"""The node's log (dicomnode.ops.logs): its own handler beside any other, patient identifiers only
when ``[logging] include_patient_data`` says so."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from dicomnode.config import LoggingSection
from dicomnode.ops.logs import NodeLogHandler, configure_logging

PATIENT = {"patient_id": "PID-Q7Z3X9", "accession_number": "ACC-42"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in ("dicomnode",)}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def record(**extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("dicomnode.pipeline.receiver", logging.INFO, __file__, 1, "C-STORE %s", ("1.2.3",),
                              None)
    entry.__dict__.update(extra)
    return entry


@pytest.mark.parametrize("json_lines", [True, False])
def test_patient_identifiers_appear_only_when_included(json_lines: bool) -> None:
    hidden = NodeLogHandler(LoggingSection(json=json_lines)).format(record(study_uid="1.2", **PATIENT))
    shown = NodeLogHandler(LoggingSection(json=json_lines, include_patient_data=True)).format(
        record(study_uid="1.2", **PATIENT))
    assert "1.2" in hidden and not any(value in hidden for value in PATIENT.values())
    assert all(value in shown for value in PATIENT.values())
    if json_lines:
        assert json.loads(shown)["patient_id"] == "PID-Q7Z3X9" and "patient_id" not in json.loads(hidden)


def test_configuring_adds_one_handler_and_leaves_the_others(restore_logging: None,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    root = logging.getLogger()
    others = [h for h in root.handlers if not isinstance(h, NodeLogHandler)]
    root_level = root.level
    configure_logging(LoggingSection(level="DEBUG"))
    handler = configure_logging(LoggingSection(level="INFO", json=True))  # again: replaces only its own
    assert [h for h in root.handlers if isinstance(h, NodeLogHandler)] == [handler]
    assert [h for h in root.handlers if not isinstance(h, NodeLogHandler)] == others
    assert root.level == root_level and logging.getLogger("dicomnode").level == logging.INFO
    with caplog.at_level(logging.INFO, logger="dicomnode"):
        logging.getLogger("dicomnode.test").info("still captured")
    assert "still captured" in caplog.text  # pytest's own handler still gets the node's records


def test_a_forged_uid_cannot_make_a_second_line_or_a_terminal_escape() -> None:
    forged = "1.2.3\n2026-11-30 00:00:00,000 INFO dicomnode.pipeline.receiver: FORGED\x1b[31m\x00"
    entry = logging.LogRecord("dicomnode.pipeline.receiver", logging.WARNING, __file__, 1,
                              "C-STORE %s from %s: refused", (forged, "CAM\r\nX"), None)
    entry.__dict__["calling_ae"] = "AE\nINFO"
    text = NodeLogHandler(LoggingSection()).format(entry)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\x00" not in text
    assert "1.2.3\\n2026-11-30" in text and "\\x1b[31m" in text and "calling_ae=AE\\nINFO" in text
    as_json = NodeLogHandler(LoggingSection(json=True)).format(entry)
    assert "\n" not in as_json and json.loads(as_json)["message"].startswith("C-STORE " + forged)


def test_a_traceback_keeps_its_lines_but_cannot_start_one() -> None:
    try:
        raise ValueError("bad value\nINFO forged line")
    except ValueError:
        import sys

        entry = logging.LogRecord("dicomnode", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = NodeLogHandler(LoggingSection()).format(entry).splitlines()
    assert lines[0].endswith("failed") and all(line.startswith("  | ") for line in lines[1:])
    assert any("ValueError" in line for line in lines[1:])


def test_the_handler_follows_stderr_and_never_writes_to_a_closed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    handler = NodeLogHandler(LoggingSection())
    borrowed = io.StringIO()
    monkeypatch.setattr("sys.stderr", borrowed)
    handler.emit(record())
    assert "C-STORE 1.2.3" in borrowed.getvalue()
    borrowed.close()  # what a CLI test runner does with the stream it lent
    current = io.StringIO()
    monkeypatch.setattr("sys.stderr", current)
    handler.emit(record())
    assert "C-STORE 1.2.3" in current.getvalue()


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    __repr__ = __str__


def test_json_lines_stay_valid_json_with_hostile_values() -> None:
    """Whatever a value holds (control characters, quotes, lone surrogates, line separators, NaN,
    bytes, an object that cannot be printed), each record is one line that strict JSON parsing reads
    back, with the message intact."""
    import math

    import numpy as np

    hostile = 'UID"}\n{"level": "CRITICAL", "x": "\\\x00\x1b[2J\u2028\u2029\udcff\ud800\ufeff'
    entry = logging.LogRecord("dicomnode.pipeline.receiver", logging.WARNING, __file__, 1, "C-STORE %s: %s",
                              (hostile, b"\xff\x00"), None)
    entry.__dict__.update(sop_uid=hostile, bsi=float("nan"), ratio=np.float64("inf"), count=np.int64(3),
                          raw=b"\x00\xff", states=["ok", float("-inf"), {"k": math.nan}], odd=_Unprintable())
    line = NodeLogHandler(LoggingSection(json=True)).format(entry)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line and line.isascii()

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    parsed = json.loads(line, parse_constant=strict)
    assert parsed["message"] == "C-STORE " + hostile + ": " + str(b"\xff\x00") and parsed["sop_uid"] == hostile
    assert parsed["level"] == "WARNING"  # the forged '"level": "CRITICAL"' stayed inside a string
    assert (parsed["bsi"], parsed["ratio"], parsed["count"]) == ("nan", "inf", 3)
    assert parsed["states"] == ["ok", "-inf", {"k": "nan"}] and parsed["raw"] == str(b"\x00\xff")
    assert parsed["odd"].startswith("<unprintable _Unprintable")


def test_library_warnings_reach_the_log_without_the_values_they_quote(capsys):
    import warnings

    from pydicom.dataset import Dataset

    logging.captureWarnings(False)  # undo an earlier test's capture, made under pytest's own recorder
    handler = configure_logging(LoggingSection())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            Dataset().PatientBirthDate = "DOE^JOHN^SECRET"  # pydicom logs and warns, quoting the value
    finally:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert "Invalid value for VR DA: '…'" in err and "py.warnings" in err  # both routes reach the log
    assert "SECRET" not in err


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1e"])
def test_every_line_separator_is_escaped_in_text_mode_with_patient_data_too(separator: str) -> None:
    forged = f"1.2.3{separator}2026-11-30 00:00:00,000 INFO dicomnode: FORGED"
    entry = logging.LogRecord("dicomnode.pipeline.receiver", logging.WARNING, __file__, 1, "C-STORE %s", (forged,), None)
    entry.__dict__["patient_id"] = f"P{separator}INFO forged"
    text = NodeLogHandler(LoggingSection(include_patient_data=True)).format(entry)
    assert len(text.splitlines()) == 1 and separator not in text
    assert "FORGED" in text and "patient_id=P\\" in text


def test_a_library_exception_is_redacted_in_json_and_text_unless_patient_data_is_included() -> None:
    import sys

    try:
        raise ValueError("Invalid value for VR UI: '1.2.3\nforged' of 'DOE^JOHN'")
    except ValueError:
        entry = logging.LogRecord("pynetdicom.dsutils", logging.ERROR, __file__, 1, "decode failed", (), sys.exc_info())
    hidden = json.loads(NodeLogHandler(LoggingSection(json=True)).format(entry))["exception"]
    assert "DOE^JOHN" not in hidden and "forged" not in hidden and "'…'" in hidden
    assert 'File "' in hidden  # the frames (code paths) stay
    assert "DOE^JOHN" not in NodeLogHandler(LoggingSection()).format(entry)
    shown = json.loads(NodeLogHandler(LoggingSection(json=True, include_patient_data=True)).format(entry))
    assert "DOE^JOHN" in shown["exception"]
