"""What a View Code or a description says about the view: CID 26 codes, private schemes, ANT/POST words.

The ``VIEW_CODE``, ``VENDOR_CODE``, ``ROOT_VIEW_CODE`` and ``DESCRIPTION`` rules of
:class:`~dicomnode.segmentation.scan.ViewRule` read a frame's words through these functions; a vendor's
private view code is added here (docs/dicom.md, "Views").
"""

from __future__ import annotations

import logging
import re

from pydicom.dataset import Dataset

from dicomnode.segmentation.scan import NotWholeBodyView, View

log = logging.getLogger(__name__)

# CID 26 "Nuclear Medicine Projection" (PS3.16); SRT and SNM3 are the legacy designators of the same
# SNOMED concepts that older cameras still send.
VIEW_CODES: dict[tuple[str, str], View] = {
    ("SCT", "399321004"): View.ANTERIOR,
    ("SCT", "399001007"): View.POSTERIOR,
    ("SRT", "G-5215"): View.ANTERIOR,
    ("SRT", "G-5216"): View.POSTERIOR,
    ("SNM3", "G-5215"): View.ANTERIOR,
    ("SNM3", "G-5216"): View.POSTERIOR,
}

DESCRIPTION_KEYWORDS = (
    "ImageID",
    "SeriesDescription",
    "ImageComments",
    "DerivationDescription",
    "AcquisitionDeviceProcessingDescription",
    "ProtocolName",
)
_ANTERIOR_WORD = re.compile(r"(?<![A-Z])ANT(ERIOR)?(?![A-Z])")
_POSTERIOR_WORD = re.compile(r"(?<![A-Z])POST(ERIOR)?(?![A-Z])")

def coded_view(item: Dataset, where: str) -> View | None:
    """ViewRule.VIEW_CODE: a CID 26 code (private schemes are ViewRule.VENDOR_CODE's)."""
    codes = list(item.get("ViewCodeSequence", []))
    if not codes:
        return None
    code = codes[0]
    key = (str(code.get("CodingSchemeDesignator", "")).upper(), str(code.get("CodeValue", "")))
    if key in VIEW_CODES:
        return VIEW_CODES[key]
    if not key[0].startswith(_PRIVATE_SCHEME_PREFIX):
        log.warning("%s: View Code Sequence (0054,0220) code %s is not a CID 26 projection", where,
                    (key[0][:16], key[1][:16]))
    return None


#: Private coding schemes start with "99" (PS3.16 §8.2, "Private Coding Schemes").
_PRIVATE_SCHEME_PREFIX = "99"
_ANTERIOR_WORDS = frozenset({"ANT", "ANTERIOR"})
_POSTERIOR_WORDS = frozenset({"POST", "POSTERIOR"})
_OBLIQUE_WORDS = frozenset({"LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE", "LAT", "LATERAL", "LLAT", "RLAT"})


def vendor_view(item: Dataset, where: str) -> View | None:
    """ViewRule.VENDOR_CODE: a private-scheme View Code read by its words (module docstring)."""
    codes = list(item.get("ViewCodeSequence", []))
    if not codes:
        return None
    code = codes[0]
    if not str(code.get("CodingSchemeDesignator", "")).upper().startswith(_PRIVATE_SCHEME_PREFIX):
        return None
    text = f"{code.get('CodeValue', '')} {code.get('CodeMeaning', '')}".upper()
    words = set(re.findall(r"[A-Z]+", text))
    if words & _OBLIQUE_WORDS:
        raise NotWholeBodyView(
            f"{where}: View Code {sorted(words & _OBLIQUE_WORDS)[0]} is an oblique or lateral view, "
            "not an anterior or posterior whole-body view"
        )
    anterior, posterior = bool(words & _ANTERIOR_WORDS), bool(words & _POSTERIOR_WORDS)
    if anterior != posterior:
        return View.ANTERIOR if anterior else View.POSTERIOR
    return None


def described_view(ds: Dataset) -> View | None:
    found: set[View] = set()
    for keyword in DESCRIPTION_KEYWORDS:
        text = str(ds.get(keyword, "") or "").upper()
        if _ANTERIOR_WORD.search(text):
            found.add(View.ANTERIOR)
        if _POSTERIOR_WORD.search(text):
            found.add(View.POSTERIOR)
    return found.pop() if len(found) == 1 else None
