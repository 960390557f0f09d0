"""The node's log: one line per event, as text or JSON lines (``[logging]``), without patient data.

:func:`configure_logging` adds the node's own handler (:class:`NodeLogHandler`, stderr, or
:class:`NodeLogFile`) to the root logger, so that warnings of every library reach it too; it replaces only a handler that an earlier
call added. Other handlers (an embedding application's, pytest's) and the root logger's level are
left alone: the node's loggers (``dicomnode``, ``segmentation``) get ``[logging] level``, and chatty
libraries (pynetdicom, alembic, highdicom) warnings only.

Each line holds the message and the structured fields the modules pass with ``extra=`` (job, study
UID, states, statuses). Patient identifiers are only ever passed as such fields, named in
:data:`dicomnode.dicom.validate.PATIENT_FIELDS` (Patient ID, Accession Number), never written into a
message; the handler drops them unless ``[logging] include_patient_data = true``. Patient names are
never logged. See docs/architecture.md, "Operations".

Values from the network (UIDs, AE titles, a peer's error text) reach messages and fields, so a text
line cannot be trusted to be one line: :class:`KeyValues` escapes every control character in the
message and the fields (a newline becomes ``\\n``, ESC ``\\x1b``, NUL ``\\x00``, and so are the Unicode
line separators that some readers split on: NEL U+0085, LINE SEPARATOR U+2028, PARAGRAPH SEPARATOR
U+2029), and a traceback's continuation lines are indented with ``|``, so no value can forge a line or
send a terminal escape.
JSON lines are escaped by the JSON encoder and stay strict JSON for any value (:class:`JsonLines`).

Libraries quote the values they complain about (pydicom: ``Invalid value for VR DA: '19700101'``,
highdicom likewise), and those values can be patient names or birth dates. Python warnings are routed
into the log (``logging.captureWarnings``), never printed raw to stderr, and in records of loggers
other than the node's every quoted value is replaced by ``'…'`` unless ``include_patient_data``
(:class:`LibraryRedaction`); the same redaction applies to the text of a logged exception (its
message lines, not the ``File "…"`` frames), in text and JSON lines alike, since an exception raised by
a library on received data quotes that data too. pydicom logs each of its value warnings as well as
warning it; only the warning is kept (:class:`ValueWarningRecords`).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from dicomnode.config import LoggingSection
from dicomnode.dicom.validate import PATIENT_FIELDS

#: The node's own loggers, which get ``[logging] level``.
NODE_LOGGERS = ("dicomnode",)
#: Libraries that log every association or migration step: warnings only (or the node's level if higher).
CHATTY_LIBRARIES = ("pynetdicom", "alembic", "highdicom")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Library loggers that report at ERROR (with a traceback) what the node itself then refuses or
#: records with its cause, once (pixel decoders failing on received bytes: the receiver answers
#: 0xC000, the worker records "not processable"): demoted to DEBUG (:class:`Demoted`).
DEMOTED = ("pydicom.pixels.decoders.base",)

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is a structured field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class _Structured(logging.Formatter):
    """A formatter that knows which structured fields it may print."""

    def __init__(self, fmt: str | None = None, *, include_patient_data: bool = False) -> None:
        super().__init__(fmt)
        self._hidden = _STANDARD if include_patient_data else _STANDARD | PATIENT_FIELDS
        self._include_patient_data = include_patient_data

    def formatException(self, ei: Any) -> str:
        """The traceback, with quoted values in its message lines redacted unless patient data is
        included (:func:`redact_traceback`)."""
        text = super().formatException(ei)
        return text if self._include_patient_data else redact_traceback(text)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's structured fields, patient identifiers left out unless included."""
        return {key: value for key, value in vars(record).items() if key not in self._hidden}


def _printable(value: object) -> str:
    """``str(value)``, or a placeholder naming its type when even that fails."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _json_safe(value: Any) -> Any:
    """``value`` with what strict JSON (RFC 8259) cannot hold turned into text: NaN and ±infinity
    (numpy's too) become ``"nan"``, ``"inf"``, ``"-inf"``; anything not a JSON type becomes its
    text (numpy integers stay numbers)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, dict):
        return {_printable(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    return _printable(value)


class JsonLines(_Structured):
    """One JSON object per line: time, level, logger, message, structured fields. Every line is
    strict JSON whatever the values hold: non-ASCII and control characters are escaped by the encoder
    (``ensure_ascii``), non-finite numbers and foreign objects become text (:func:`_json_safe`)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # an argument that cannot be printed: the template and the failure
            message = f"{record.msg} <arguments unprintable>"
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": message,
                 **_json_safe(self.fields(record))}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, allow_nan=False)


def escape_controls(text: str) -> str:
    """``text`` with every C0/C1 control character and DEL written as a visible escape."""
    return _CONTROLS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class KeyValues(_Structured):
    """Text lines with the structured fields appended as ``key=value``; control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord({**vars(record), "msg": escape_controls(record.getMessage()), "args": None,
                                      "exc_info": None, "exc_text": None, "stack_info": None})
        line = super().format(safe)
        fields = " ".join(f"{key}={escape_controls(str(value))}" for key, value in self.fields(record).items())
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n  | {escape_controls(part)}" for part in trace.splitlines())
        return line


class NodeLogHandler(logging.StreamHandler):
    """The node's handler: the process's current stderr, at ``[logging] level``, formatted as
    ``[logging]`` says. It looks ``sys.stderr`` up at every record (as :data:`logging.lastResort`
    does), so a stream swapped in and closed by whoever embedded the node (a test runner, a CLI
    harness) is never written to after it is gone."""

    def __init__(self, settings: LoggingSection) -> None:
        super().__init__()
        self.setLevel(settings.level)
        self.setFormatter(_formatter(settings))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """StreamHandler assigns the stream it was given; this handler always follows sys.stderr."""


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_FRAME = re.compile(r'^\s*File "')


def redact_traceback(text: str) -> str:
    """``text`` (a formatted traceback) with every quoted value replaced by ``'…'``, except in the
    ``File "…", line n`` lines (paths of the node's and the libraries' code, not data)."""
    blocks: list[list[str]] = [[]]  # runs of non-frame lines (a message may span lines), frames alone
    for line in text.split("\n"):
        if _FRAME.match(line):
            blocks += [[line], []]
        else:
            blocks[-1].append(line)
    return "\n".join(block[0] if len(block) == 1 and _FRAME.match(block[0]) else _QUOTED.sub("'…'", "\n".join(block))
                     for block in blocks if block)


class LibraryRedaction(logging.Filter):
    """Replace quoted values in library records (pydicom, highdicom, Python warnings) by ``'…'``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in NODE_LOGGERS:
            return True
        message = record.getMessage()
        redacted = _QUOTED.sub("'…'", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class Demoted(logging.Filter):
    """Lower a library's records to DEBUG (:data:`DEMOTED`): expected failures the node reports itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class NodeLogFile(logging.FileHandler):
    """The node's handler writing to a file instead of stderr (``dicomnode demo``'s ``node.log``,
    so that the log does not interleave with a person's progress lines and table)."""

    def __init__(self, settings: LoggingSection, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.setLevel(settings.level)
        self.setFormatter(_formatter(settings))


def _formatter(settings: LoggingSection) -> logging.Formatter:
    include = settings.include_patient_data
    return (JsonLines(include_patient_data=include) if settings.json_lines
            else KeyValues(TEXT_FORMAT, include_patient_data=include))


class ValueWarningRecords(logging.Filter):
    """Drops pydicom's log record of a value warning ("The value length (22) exceeds ...", "Invalid
    value for VR ..."): pydicom sends each both to its logger and as a Python warning
    (``pydicom.misc.warn_and_log``); the warning is what the node keeps (the receiver's per-series
    notes, :mod:`dicomnode.dicom.validate`; elsewhere Python's warning filter, once per message), so
    the record would only repeat it once per instance (342 lines for one real CT)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("The value length", "Invalid value for VR"))


def configure_logging(settings: LoggingSection, file: Path | None = None) -> logging.Handler:
    """Route the node's log to stderr, or to ``file``, as ``[logging]`` says (see the module
    docstring); return the handler."""
    root = logging.getLogger()
    for previous in [handler for handler in root.handlers if isinstance(handler, (NodeLogHandler, NodeLogFile))]:
        root.removeHandler(previous)
        previous.close()
    handler: logging.Handler = NodeLogHandler(settings) if file is None else NodeLogFile(settings, file)
    if not settings.include_patient_data:
        handler.addFilter(LibraryRedaction())
    root.addHandler(handler)
    logging.captureWarnings(True)
    for name in NODE_LOGGERS:
        logging.getLogger(name).setLevel(settings.level)
    quieter = max(logging.WARNING, logging.getLevelName(settings.level))
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(quieter)
    for name in DEMOTED:
        library = logging.getLogger(name)
        if not any(isinstance(f, Demoted) for f in library.filters):
            library.addFilter(Demoted())
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(f, ValueWarningRecords) for f in pydicom_logger.filters):
        pydicom_logger.addFilter(ValueWarningRecords())
    return handler
