"""Every refusal's Error Comment (0000,0902) says what is wrong within its 64 characters (issue 28):
the whole malformed corpus, and hostile inputs whose long values once pushed the reason out (a
hostile Study Instance UID, a data-set SOP Instance UID other than the command's), through the real
receiver."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomnode.pipeline.receiver import ERROR_COMMENT_LENGTH
from tests.malformed_corpus import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    KINDS,
    SUCCESS,
    Kind,
    Sample,
    one,
    sample,
    send_raw,
    study,
)
from tests.receiver_helpers import NODE_AE, running_node, storescu, write_files

pytestmark = pytest.mark.network

HOSTILE_UID = "1.2." + "9" * 40 + "/../../" + "A" * 150


def _hostile_study_uid(_held) -> Sample:
    ds = one()
    ds.StudyInstanceUID = HOSTILE_UID
    return sample(ds)


def _other_sop_instance(_held) -> Sample:
    ds = one()
    return sample(ds, sop_instance=generate_uid(prefix="1.2.826.0.1.3680043.8.498.99999999999999999999."))


HOSTILE = [
    Kind("hostile_study_uid", CANNOT_UNDERSTAND, "characters long", _hostile_study_uid),
    Kind("sop_instance_differs_long_uids", DOES_NOT_MATCH, "SOP Instance UID (0008,0018) differs from the command",
         _other_sop_instance),
]


def test_every_error_comment_leads_with_what_is_wrong(tmp_path: Path) -> None:
    held = study("split", seed=1)
    with running_node(tmp_path) as node:
        assert storescu(node.port, write_files(held, tmp_path / "held")).statuses == [0x0000, 0x0000]
        wrong = []
        for kind in [k for k in KINDS if k.status != SUCCESS] + HOSTILE:
            answer = send_raw(node.port, NODE_AE, kind.build(held), tmp_path / "wire")
            comment = answer.error_comment
            if answer.status != kind.status:
                wrong.append(f"{kind.name}: status {answer.status}, comment {comment!r}")
            elif not comment or len(comment) > ERROR_COMMENT_LENGTH:
                wrong.append(f"{kind.name}: comment {comment!r} empty or over {ERROR_COMMENT_LENGTH}")
            elif kind.reason and kind.reason.lower() not in comment.lower():
                wrong.append(f"{kind.name}: {comment!r} does not say {kind.reason!r}")
            elif comment[0].isdigit() or comment.startswith(("1.", "'")):  # a value, not what is wrong
                wrong.append(f"{kind.name}: {comment!r} starts with a value")
        assert not wrong, "\n".join(wrong)
