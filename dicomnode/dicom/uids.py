"""DICOM UIDs (PS3.5 §9.1): the one check behind every path and folder name built from a UID.

Only ``0-9`` and ``.``, no empty component, at most 64 characters. Anything else (``../../x``,
``1.2/3``, ``1..2``, an empty string, a 65-character UID) raises :class:`UIDError`, so no path is ever
built from it (docs/architecture.md, "The journey of a study").

PS3.5 §9.1 also forbids leading zeros in a component (``1.02``), but cameras in the field write them
(a Mediso UID holding ``…20140305.091120…``); such a UID is as safe in a path and is accepted, with
:func:`uid_remark` saying what is non-conformant.
"""

from __future__ import annotations

import re

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STRICT_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
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
            f"{what} is not a UID (digits and dots, no empty component; PS3.5 §9.1): {value[:UID_MAX_LENGTH]!r}"
        )
    return value


def uid_remark(value: str, what: str = "UID") -> str | None:
    """A warning for a UID that :func:`check_uid` accepts but PS3.5 §9.1 does not (leading zeros)."""
    if STRICT_UID_PATTERN.match(value):
        return None
    return f"{what} has a component with a leading zero (PS3.5 §9.1); accepted as cameras write them"
