"""The spool: UID-only paths, durable atomic writes, quarantine, free-space floor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dicomnode.spool import Spool, SpoolError, UIDError, check_uid, sha256_hex

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"


@pytest.mark.parametrize("uid", ["0", "1.2", "1.2.840.10008.5.1.4.1.1.20", "2.25." + "1" * 59])
def test_valid_uids(uid: str) -> None:
    assert check_uid(uid) == uid


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        ("../../x", "not a UID"),
        ("1.2/3", "not a UID"),
        ("1.02", "not a UID"),  # leading zero in a component
        ("1..2", "not a UID"),
        ("1.2.", "not a UID"),
        (" 1.2", "not a UID"),
        ("1.2\x00", "not a UID"),
        ("1.2\n3", "not a UID"),
        ("", "empty"),
        ("1." + "2" * 63, "65 characters"),
        (None, "missing"),
        (12, "missing"),
    ],
)
def test_invalid_uids_are_refused(uid: object, reason: str) -> None:
    with pytest.raises(UIDError, match=reason):
        check_uid(uid, "SOP Instance UID")


def test_instance_path_only_from_valid_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    digest = sha256_hex(b"x")
    assert spool.instance_path(STUDY, SERIES, SOP, digest) == f"instances/{STUDY}/{SERIES}/{SOP}.{digest[:12]}.dcm"
    assert spool.result_path(STUDY, SERIES, SOP) == f"results/{STUDY}/{SERIES}/{SOP}.dcm"
    for bad in ("../../x", "1.2/../../etc", "/abs"):
        with pytest.raises(UIDError):
            spool.instance_path(STUDY, bad, SOP, digest)
        with pytest.raises(UIDError):
            spool.result_path(bad, SERIES, SOP)
    with pytest.raises(ValueError, match="sha256"):
        spool.instance_path(STUDY, SERIES, SOP, "../" + digest[3:])
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["instances", "quarantine", "results", "tmp"]
    assert not any((tmp_path / "spool" / "instances").iterdir())


@pytest.mark.parametrize("relative", ["../outside.dcm", "/etc/passwd", "instances/../../x.dcm", "other/x.dcm", ""])
def test_paths_cannot_leave_the_spool(tmp_path: Path, relative: str) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError):
        spool.write(relative, b"data")
    assert not (tmp_path / "outside.dcm").exists()


def test_write_is_complete_and_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data = os.urandom(300_000)
    relative = spool.instance_path(STUDY, SERIES, SOP, sha256_hex(data))
    stored = spool.write(relative, data)
    assert (stored.path, stored.sha256, stored.size, stored.created) == (relative, sha256_hex(data), len(data), True)
    assert spool.absolute(relative).read_bytes() == data
    again = spool.write(relative, data)
    assert again.created is False and again.sha256 == stored.sha256
    with pytest.raises(SpoolError, match="different content"):
        spool.write(relative, data[:-1] + b"!")
    assert spool.absolute(relative).read_bytes() == data
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_write_fsyncs_file_then_renames_then_fsyncs_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source: str, destination: str) -> None:
        events.append(("replace", str(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    relative = spool.result_path(STUDY, SERIES, SOP)
    spool.write(relative, b"DICM")
    final = spool.absolute(relative)
    kinds = [kind for kind, _ in events]
    tmp_fsync = next(i for i, (kind, path) in enumerate(events) if kind == "fsync" and path.endswith(".part"))
    rename = kinds.index("replace")
    assert tmp_fsync < rename and events[rename][1] == str(final)
    assert ("fsync", str(final.parent)) in events[rename + 1:]  # the rename itself is made durable
    # the three directories created on the way (study, series under results/) were synced into parents
    assert ("fsync", str(spool.root / "results")) in events[:rename]
    assert ("fsync", str(spool.root / "results" / STUDY)) in events[:rename]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    relative = spool.result_path(STUDY, SERIES, SOP)
    with pytest.raises(OSError, match="Input/output"):
        spool.write(relative, b"data")
    monkeypatch.undo()
    assert not spool.absolute(relative).exists()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_free_space_floor(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    free = spool.free_bytes()
    assert free > 0 and spool.has_room(1000)
    assert not spool.has_room(free + 1)
    spool.min_free_bytes = free + (1 << 40)
    assert not spool.has_room(0)


def test_quarantine_keeps_bytes_and_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.quarantine(b"not dicom", reason="not readable", status="0xC000", calling_ae="CAM",
                            claimed_sop_instance_uid="../../x")
    assert kept is not None and kept.startswith("quarantine/") and kept.endswith(".dcm")
    assert "x" not in Path(kept).name.split("-")[0]  # the claimed UID is not part of the name
    assert spool.absolute(kept).read_bytes() == b"not dicom"
    note = json.loads(spool.absolute(kept).with_suffix(".json").read_text())
    assert note["reason"] == "not readable" and note["status"] == "0xC000"
    assert note["claimed_sop_instance_uid"] == "../../x" and note["sha256"] == sha256_hex(b"not dicom")
    assert spool.quarantine(None, reason="r", status="0xA700", calling_ae=None, claimed_sop_instance_uid=None) is None
    spool.min_free_bytes = spool.free_bytes() + (1 << 40)
    assert spool.quarantine(b"x", reason="r", status="0xC000", calling_ae=None, claimed_sop_instance_uid=None) is None
    assert len(list((spool.root / "quarantine").glob("*.dcm"))) == 1
