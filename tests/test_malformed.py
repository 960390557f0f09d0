"""The malformed-input corpus against a running receiver: exact status per kind, nothing crashes or leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicomnode.dicom.scu import echo, parse_peer
from tests.malformed_corpus import KINDS, SUCCESS, send_raw, study, views_of
from tests.receiver_helpers import NODE_AE, running_node, storescu, write_files

pytestmark = pytest.mark.network


def test_corpus_has_at_least_thirty_kinds_of_each_decision() -> None:
    names = [kind.name for kind in KINDS]
    assert len(names) == len(set(names)) >= 30
    assert {kind.status for kind in KINDS} == {0x0000, 0xA700, 0xA900, 0xC000}  # 0xA700: the decoding budget


@pytest.mark.slow
def test_every_kind_gets_its_status_and_nothing_else_is_disturbed(tmp_path: Path) -> None:
    held = study("split", seed=1)
    with running_node(tmp_path) as node:
        assert storescu(node.port, write_files(held, tmp_path / "held")).statuses == [0x0000, 0x0000]
        mismatches = []
        accepted: dict[str, int] = {}
        refused = 0
        for kind in KINDS:
            before = len(node.instances())
            answer = send_raw(node.port, NODE_AE, kind.build(held), tmp_path / "wire")
            rows = node.instances()
            if answer.status != kind.status:
                mismatches.append(f"{kind.name}: expected 0x{kind.status:04X}, got "
                                  f"{'no answer' if answer.status is None else f'0x{answer.status:04X}'} "
                                  f"({answer.error_comment})")
                continue
            if kind.status == SUCCESS:
                if len(rows) != before + 1:
                    mismatches.append(f"{kind.name}: accepted but not indexed")
                    continue
                accepted[kind.name] = rows[-1].id
                if tuple(filter(None, rows[-1].views.split(","))) != views_of(kind.name):
                    mismatches.append(f"{kind.name}: views {rows[-1].views!r}, expected {views_of(kind.name)}")
                continue
            refused += 1
            refusal = node.quarantined()[-1]
            if len(rows) != before:
                mismatches.append(f"{kind.name}: refused but indexed")
            if refusal.status != f"0x{kind.status:04X}" or (refusal.path is None) != (kind.status == 0xA700):
                mismatches.append(f"{kind.name}: quarantine row {refusal.status} {refusal.path}")
                continue
            if refusal.path is None:  # 0xA700 (out of resources): the bytes are not at fault, none kept
                if kind.reason not in refusal.reason or not answer.error_comment:
                    mismatches.append(f"{kind.name}: reason {refusal.reason!r} or Error Comment missing")
                continue
            kept = node.spool.absolute(refusal.path)
            note = json.loads(kept.with_suffix(".json").read_text())
            if not kept.exists() or note["reason"] != refusal.reason or not answer.error_comment:
                mismatches.append(f"{kind.name}: quarantined copy, note or Error Comment missing")
            if kind.reason not in refusal.reason:
                mismatches.append(f"{kind.name}: reason {refusal.reason!r} does not mention {kind.reason!r}")
        assert mismatches == [], "\n".join(mismatches)
        assert len(node.quarantined()) == refused == sum(kind.status != SUCCESS for kind in KINDS)

        # Nothing else is disturbed: the receiver still answers, a good study still stores,
        # no file landed outside the spool, no half-written file is left behind.
        peer = parse_peer(f"127.0.0.1:{node.port}", default_ae_title=NODE_AE)
        assert echo(peer, "CAMERA").ok
        fresh = study("multiframe", seed=2)
        assert storescu(node.port, write_files(fresh, tmp_path / "after")).statuses == [0x0000]
        assert node.instances()[-1].sop_instance_uid == fresh[0].SOPInstanceUID
        assert not list(tmp_path.rglob("x")) and not list(tmp_path.rglob("etc"))
        assert list((node.spool.root / "tmp").iterdir()) == []
        assert {p.parts[0] for p in (q.relative_to(node.spool.root) for q in node.spool.root.iterdir())} == {
            "instances", "results", "quarantine", "tmp"}


def test_garbage_on_the_wire_does_not_hurt_the_receiver(tmp_path: Path) -> None:
    """Raw bytes no SCU would send: not a PDU, a PDU claiming 4 GiB, a half A-ASSOCIATE-RQ, P-DATA first."""
    import socket
    import struct

    wires = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01\x00" + struct.pack(">I", 0xFFFFFFFF) + b"\x00\x01",  # A-ASSOCIATE-RQ of 4 GiB, 2 bytes sent
        b"\x01\x00" + struct.pack(">I", 68) + b"\x00\x01\x00\x00" + b"DICOMNODE".ljust(16),  # cut short
        b"\x04\x00" + struct.pack(">I", 6) + struct.pack(">I", 2) + b"\x01\x03",  # P-DATA before association
    ]
    with running_node(tmp_path, node={"acse_timeout": 2, "network_timeout": 2}) as node:
        for wire in wires:
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as connection:
                connection.sendall(wire)
                connection.shutdown(socket.SHUT_WR)
                try:
                    while connection.recv(4096):  # until the receiver aborts / closes
                        pass
                except OSError:
                    pass
        peer = parse_peer(f"127.0.0.1:{node.port}", default_ae_title=NODE_AE)
        assert echo(peer, "CAMERA").ok
        good = study("split", seed=3)
        assert storescu(node.port, write_files(good, tmp_path / "good")).statuses == [0x0000, 0x0000]
        assert len(node.instances()) == 2 and node.quarantined() == []
