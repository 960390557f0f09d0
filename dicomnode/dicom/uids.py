"""DICOM UIDs (PS3.5 §9.1): the one check behind every path and folder name built from a UID.

Only ``0-9`` and ``.``, components without leading zeros, at most 64 characters. Anything else
(``../../x``, ``1.2/3``, an empty string, a 65-character UID) raises :class:`UIDError`, so no path
is ever built from it (docs/architecture.md, "The journey of a study").
"""

from __future__ import annotations

import re

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_MAX_LENGTH = 64


class UIDError(ValueError):
    """A value that is not a valid DICOM UID (PS3.5 §9.1); the message says why."""


def check_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` if it is a valid UID (PS3.5 §9.1), else raise :class:`UIDError` naming ``what``."""
    if not isinstance(value, str):
        raise UIDError(f"{what} is missing or not text")
    if not value:
        raise UIDError(f"{what} is empty")
    if len(value) > UID_MAX_LENGTH:
        raise UIDError(f"{what} is {len(value)} characters long; a UID has at most {UID_MAX_LENGTH} (PS3.5 §9.1)")
    if not UID_PATTERN.match(value):
        raise UIDError(
            f"{what} {value[:UID_MAX_LENGTH]!r} is not a UID (digits and dots, no leading zeros; PS3.5 §9.1)"
        )
    return value
