"""DIMSE statuses: the ones the receiver answers, and what a peer's answer means to a sender.

One policy for both directions, built on pynetdicom's status categories
(:func:`pynetdicom.status.code_to_category`, PS3.7 Annex C):

- :class:`Status` is every C-STORE status the receiver answers (PS3.4 Table B.2-1, PS3.7 Annex C);
  which one is decided by the kind of refusal (:class:`dicomnode.dicom.parse.Refusal` and the
  receiver's own checks), never by the wording of a message.
- :func:`stored`: the peer kept the object — category *Success* or *Warning* (PS3.7 C.1.2, C.1.3:
  a warning means the operation was performed). ``dicomnode send`` reports such a file as stored and
  the exporter marks it delivered.
- :func:`permanent`: a *Failure* that sending the same object again will meet again —
  :data:`PERMANENT_FAILURES` (invalid SOP instance, SOP class not supported, not authorised,
  unrecognised operation, mistyped argument; PS3.7 C.4), 0xA900–0xA9FF (data set does not match
  SOP class) and 0xC000–0xCFFF (cannot understand; PS3.4 Table B.2-1: the peer could not parse
  this object, and it will parse the same bytes the same way next time; pynetdicom's 0xC211, an
  SCP whose handler raised, is in that range and is treated alike). Every other failure (0xA700–
  0xA7FF out of resources, 0x0110 processing failure, 0x0213 resource limitation, anything unknown)
  may pass later.

The exporter's verdicts built on these are in :mod:`dicomnode.pipeline.export`; the rules with their
sections in docs/dicom.md.
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import (
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

#: Failures that do not depend on the moment (PS3.7 C.4): 0x0117 invalid SOP instance, 0x0122 SOP
#: class not supported, 0x0124 not authorised, 0x0211 unrecognised operation, 0x0212 mistyped argument.
PERMANENT_FAILURES = frozenset({0x0117, 0x0122, 0x0124, 0x0211, 0x0212})
#: Error: Data Set does not match SOP Class (PS3.4 Table B.2-1): the object itself is at fault.
DATASET_MISMATCH = range(0xA900, 0xAA00)
#: Error: Cannot understand (PS3.4 Table B.2-1): the peer cannot parse the object.
CANNOT_UNDERSTAND = range(0xC000, 0xD000)


class Status(IntEnum):
    """C-STORE response statuses the receiver answers (PS3.4 Table B.2-1, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: our own fault, not the data's; the sender may retry
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000

    def __str__(self) -> str:
        return as_text(self)


def as_text(status: int) -> str:
    """``0xA700`` and the like: how statuses are logged, stored and shown."""
    return f"0x{status:04X}"


def stored(status: int) -> bool:
    """Whether the peer kept the object: category Success or Warning (PS3.7 C.1.2, C.1.3)."""
    return code_to_category(status) in (STATUS_SUCCESS, STATUS_WARNING)


def permanent(status: int) -> bool:
    """Whether a failure will recur when the same object is sent again (see the module docstring)."""
    return code_to_category(status) == STATUS_FAILURE and (status in PERMANENT_FAILURES
                                                           or status in DATASET_MISMATCH
                                                           or status in CANNOT_UNDERSTAND)


def describe(status: int) -> str:
    """``"Failure: Refused: Out of Resources"`` and the like (PS3.4 Table B.2-1, PS3.7 Annex C)."""
    category = code_to_category(status)
    known = STORAGE_SERVICE_CLASS_STATUS.get(status)
    return f"{category}: {known[1]}" if known and known[1] else category
