"""Patient and study attributes made safe to copy into result objects, with a note of every repair.

Result objects copy the source's Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1; highdicom
does the copying). Real cameras send values those modules' rules forbid, and a result object that
repeats them fails highdicom's checks or a PACS's, so no result would ever be delivered. Before results
are built, :func:`repair_sources` gives copies of the source data sets with:

* dates (DA, PS3.5 Table 6.2-1) that are not real calendar dates (``00000000``, ``20261345``) and times
  (TM) that are not times emptied — Patient's Birth Date and Study Date are Type 2, so they stay,
  empty;
* strings longer than their VR allows truncated: PN 64 characters per component group, LO 64, SH 16;
* Type 2 attributes that are missing (Study ID, Referring Physician's Name, Accession Number, Patient
  ID, Patient's Name, Birth Date, Sex, Study Date and Time) written empty;
* Patient's Sex other than M, F or O emptied (C.7.1.1);
* a Specific Character Set (0008,0005) that this node cannot decode replaced by UTF-8 (``ISO_IR 192``,
  PS3.3 C.12.1.1.2), text decoded with the default repertoire where it could not be.

Each repair is one note naming the attribute, never its value (the notes go into the SR and the log).
The received files are never changed.
"""

from __future__ import annotations

import copy
import datetime as dt
import warnings
from collections.abc import Sequence

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset

#: Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1).
TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")

#: Maximum lengths (PS3.5 Table 6.2-1) of the copied text attributes; PN per component group.
MAX_LENGTH = {"PatientName": 64, "ReferringPhysicianName": 64, "PatientID": 64, "StudyDescription": 64,
              "StudyID": 16, "AccessionNumber": 16, "IssuerOfPatientID": 64}

_DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_TIMES = ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "PatientBirthTime")
_SEXES = frozenset({"M", "F", "O", ""})
UTF8 = "ISO_IR 192"


def repair_sources(datasets: Sequence[Dataset]) -> tuple[list[Dataset], list[str]]:
    """Copies of ``datasets`` safe for result building, and one note per kind of repair."""
    notes: dict[str, None] = {}
    repaired = []
    for dataset in datasets:
        copied = copy.deepcopy(dataset)
        for note in _repair(copied):
            notes[note] = None
        repaired.append(copied)
    return repaired, list(notes)


def _repair(ds: Dataset) -> list[str]:
    notes = []
    charset = _charset_terms(ds)
    if any(term not in python_encoding for term in charset if term):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns with the undecodable value itself
            for element in ds:
                _ = element.value  # decode every text value now, with the fallback repertoire
        ds.SpecificCharacterSet = UTF8
        notes.append("Specific Character Set (0008,0005) not supported here; replaced by ISO_IR 192 (UTF-8)")
    for keyword in _DATES:
        value = _text(ds, keyword)
        if value and not _valid_date(value):
            _replace(ds, keyword, "")
            notes.append(f"{_name(keyword)} was not a valid date (PS3.5 DA); left empty")
    for keyword in _TIMES:
        value = _text(ds, keyword)
        if value and not _valid_time(value):
            _replace(ds, keyword, "")
            notes.append(f"{_name(keyword)} was not a valid time (PS3.5 TM); left empty")
    for keyword, limit in MAX_LENGTH.items():
        if keyword not in ds:
            continue
        value = _text(ds, keyword)
        groups = value.split("=") if keyword.endswith("Name") else [value]
        if any(len(group) > limit for group in groups):
            _replace(ds, keyword, "=".join(group[:limit] for group in groups))
            notes.append(f"{_name(keyword)} was longer than {limit} characters (PS3.5); truncated")
        elif ds[keyword].VR == "UN":  # e.g. written as UN because it was too long for its VR's length field
            _replace(ds, keyword, value)
    if _text(ds, "PatientSex").upper() not in _SEXES:
        _replace(ds, "PatientSex", "")
        notes.append("Patient's Sex was not M, F or O (PS3.3 C.7.1.1); left empty")
    for keyword in TYPE_2:
        if keyword not in ds:
            _replace(ds, keyword, "")
            notes.append(f"{_name(keyword)} (Type 2) was missing; written empty")
    return notes


def _text(ds: Dataset, keyword: str) -> str:
    """An element's value as text, also when it arrived as UN (bytes, decoded as Latin-1)."""
    value = ds.get(keyword)
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return str(value or "")


def _replace(ds: Dataset, keyword: str, value: str) -> None:
    """A new element with the dictionary VR (an existing element would keep its VR, perhaps UN)."""
    if keyword in ds:
        delattr(ds, keyword)
    setattr(ds, keyword, value)


def _charset_terms(ds: Dataset) -> list[str]:
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return []
    return [str(term).strip() for term in ([value] if isinstance(value, str) else list(value))]


def _valid_date(value: str) -> bool:
    try:
        dt.datetime.strptime(value.strip(), "%Y%m%d")
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    text = value.strip()
    digits, _, fraction = text.partition(".")
    if not digits.isdigit() or len(digits) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return False
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    return hours < 24 and minutes < 60 and seconds < 61


def _name(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return dictionary_description(tag) if tag is not None else keyword
