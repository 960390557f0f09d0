"""dicomnode.dicom.status: one policy for what the receiver answers and what a peer's answer means."""

from __future__ import annotations

from pynetdicom.status import code_to_category

from dicomnode.dicom.status import Status, as_text, describe, permanent, stored


def test_what_the_receiver_answers_means_the_same_to_a_sender():
    """Our refusals are pynetdicom Failures; out of resources may pass later (a sender retries), a
    wrong SOP class, a data set that does not match it or one the peer cannot understand never will."""
    assert stored(Status.SUCCESS) and str(Status.SUCCESS) == as_text(0) == "0x0000"
    for status in set(Status) - {Status.SUCCESS}:
        assert code_to_category(status) == "Failure" and not stored(status)
    assert permanent(Status.SOP_CLASS_NOT_SUPPORTED) and permanent(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert permanent(Status.CANNOT_UNDERSTAND) and not permanent(Status.OUT_OF_RESOURCES)
    assert describe(Status.OUT_OF_RESOURCES) == "Failure: Refused: Out of Resources"


def test_every_warning_is_a_kept_object_and_never_a_permanent_failure():
    for code in (0x0001, 0x0107, 0x0116, 0xB000, 0xB123, 0xBFFF):
        assert stored(code) and not permanent(code)


def test_cannot_understand_is_permanent_and_out_of_resources_is_not():
    """PS3.4 Table B.2-1: 0xCxxx "cannot understand" (pynetdicom's 0xC211 included) and 0xA9xx are
    about the object, 0xA7xx about the moment."""
    for code in (0xC000, 0xC123, 0xC211, 0xCFFF, 0xA900, 0xA9FF, 0x0122):
        assert permanent(code) and not stored(code)
    for code in (0xA700, 0xA701, 0xA7FF, 0x0110, 0x0213):
        assert not permanent(code) and not stored(code)
