"""Bounded memory for decoding (issue 28): a deflated data set is inflated in steps held from a budget
per instance and per node, compressed pixels are charged their decoded size before decoding; over a
budget the instance is refused with 0xA700 and an Error Comment saying which, before acknowledgement."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from dicomnode.dicom.budget import BudgetExceeded, DecodeBudget
from dicomnode.dicom.scu import parse_peer, send_files
from tests.nm_factory import nm_study, phantom_counts
from tests.receiver_helpers import running_node

MIB = 1 << 20
SMALL = {"decoded_bytes_per_instance": 4 * MIB, "decoded_bytes_per_node": 64 * MIB}  # 2 MiB decoded (x2)


def _write(datasets, directory: Path, syntax) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        if syntax == RLELossless:
            ds.compress(RLELossless)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _send(port: int, files: list[Path]):
    return send_files(files, parse_peer(f"127.0.0.1:{port}:DICOMNODE", "DICOMNODE"), "CAMERA", timeout=30)


@pytest.mark.network
def test_a_deflated_instance_over_the_budget_is_refused_before_it_inflates_and_a_small_one_is_kept(tmp_path):
    big = _write(nm_study(phantom_counts(rows=1024, columns=1024, seed=1)), tmp_path / "big",
                 DeflatedExplicitVRLittleEndian)  # 4 MiB inflated, a few KiB on the wire
    small = _write(nm_study(phantom_counts(rows=256, columns=64, seed=2)), tmp_path / "small",
                   DeflatedExplicitVRLittleEndian)
    assert big[0].stat().st_size < MIB
    with running_node(tmp_path, limits=SMALL) as node:
        (refused,) = _send(node.port, big)
        assert refused.status == 0xA700
        assert "(decoding budget per instance exceeded: the inflated data set" in refused.detail
        (kept,) = _send(node.port, small)
        assert kept.status == 0x0000
        assert [row.sop_instance_uid for row in node.instances()] == [kept.sop_instance_uid]
        assert node.receiver.budget.in_use == 0  # every hold given back
        (quarantined,) = node.quarantined()
        assert quarantined.status == "0xA700" and quarantined.path is None  # the bytes are not the fault


@pytest.mark.network
def test_compressed_pixels_are_charged_their_decoded_size_before_decoding(tmp_path):
    over = _write(nm_study(phantom_counts(rows=1024, columns=768, seed=3)), tmp_path / "rle", RLELossless)  # 3 MiB
    with running_node(tmp_path, limits=SMALL) as node:
        (refused,) = _send(node.port, over)
        assert refused.status == 0xA700 and "(decoding budget per instance exceeded: decoded" in refused.detail
        assert node.instances() == []
        (row,) = node.quarantined()  # the whole reason is kept with the refusal
        assert row.reason.endswith("decoded Pixel Data needs over 6 MiB, limit 4 MiB")  # 3 MiB, held twice


def test_the_node_budget_is_shared_and_given_back() -> None:
    budget = DecodeBudget(per_instance=4 * MIB, per_node=6 * MIB)
    entered, release = threading.Event(), threading.Event()

    def first() -> None:
        with budget.hold() as hold:
            hold.take(4 * MIB, "the inflated data set")
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait(10)
    with budget.hold() as hold, pytest.raises(BudgetExceeded, match=r"^node decoding budget in use, retry later"):
        hold.take(3 * MIB, "the inflated data set")
    release.set()
    thread.join()
    assert budget.in_use == 0
    with budget.hold() as hold:
        hold.take(4 * MIB, "the inflated data set")  # room again
    with budget.hold() as hold, pytest.raises(BudgetExceeded, match=r"^decoding budget per instance exceeded"):
        hold.take(5 * MIB, "decoded Pixel Data")
