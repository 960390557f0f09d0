"""The spool: UID-only paths, durable atomic writes, quarantine, free-space floor."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from dicomnode.dicom.uids import UIDError, check_uid
from dicomnode.store.spool import Spool, SpoolError, sha256_hex

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"


@pytest.mark.parametrize("uid", ["0", "1.2", "1.2.840.10008.5.1.4.1.1.20", "2.25." + "1" * 59])
def test_valid_uids(uid: str) -> None:
    assert check_uid(uid) == uid


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        ("../../x", "not a UID"),
        ("1.2/3", "not a UID"),
        ("1..2", "not a UID"),  # an empty component
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


def test_instance_path_only_from_valid_uids(tmp_path: Path, spool: Spool) -> None:
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
def test_paths_cannot_leave_the_spool(tmp_path: Path, relative: str, spool: Spool) -> None:
    with pytest.raises(SpoolError):
        spool.write(relative, b"data")
    assert not (tmp_path / "outside.dcm").exists()


def test_write_is_complete_and_idempotent(tmp_path: Path, spool: Spool) -> None:
    data = os.urandom(300_000)
    relative = spool.instance_path(STUDY, SERIES, SOP, sha256_hex(data))
    stored = spool.write(relative, data)
    assert (stored.path, stored.sha256, stored.size, stored.created) == (relative, sha256_hex(data), len(data), True)
    assert spool.absolute(relative).read_bytes() == data
    again = spool.write(relative, data)
    assert again.created is False and again.sha256 == stored.sha256
    with pytest.raises(SpoolError, match="different content"):
        spool.write(relative, data[:-1] + bytes([data[-1] ^ 0xFF]))  # another last byte, always
    assert spool.absolute(relative).read_bytes() == data
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


class SyscallLog:
    """Records the spool's file-system calls (and the thread making them) through ``monkeypatch``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str, str]] = []
        real_open, real_write, real_fsync, real_replace = os.open, os.write, os.fsync, os.replace

        def record(kind: str, path: str) -> None:
            self.events.append((kind, path, threading.current_thread().name))

        def open_(path: str | Path, flags: int, *args: int, **kwargs: object) -> int:
            fd = real_open(path, flags, *args, **kwargs)
            record("open-dsync" if flags & os.O_DSYNC else "open", str(path))
            return fd

        def write(fd: int, data: bytes) -> int:
            written = real_write(fd, data)
            record("write", os.readlink(f"/proc/self/fd/{fd}"))
            return written

        def fsync(fd: int) -> None:
            record("fsync", os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        def replace(source: str | Path, destination: str | Path) -> None:
            record("replace", str(destination))
            real_replace(source, destination)

        for name, function in (("open", open_), ("write", write), ("fsync", fsync), ("replace", replace)):
            monkeypatch.setattr(os, name, function)

    def calls(self) -> list[tuple[str, str]]:
        return [(kind, path) for kind, path, _ in self.events]

    def check_durable_order(self, spool: Spool, final: Path, new_directories: list[Path]) -> None:
        """Step 1 (O_DSYNC write of a .part file) before the rename, the directory fsync after it,
        each new directory's parent fsync'ed before the rename."""
        calls = self.calls()
        (opened,) = [path for kind, path in calls if kind.startswith("open") and path.endswith(".part")]
        assert ("open-dsync", opened) in calls  # write() returns once the data are on stable storage
        rename = calls.index(("replace", str(final)))
        writes = [index for index, call in enumerate(calls) if call == ("write", opened)]
        assert writes and max(writes) < rename
        assert ("fsync", str(final.parent)) in calls[rename + 1:]  # the rename itself is made durable
        for directory in new_directories:
            assert ("fsync", str(directory.parent)) in calls[:rename]


def test_write_syncs_file_then_renames_then_fsyncs_directory(monkeypatch: pytest.MonkeyPatch,
                                                             spool: Spool) -> None:
    log = SyscallLog(monkeypatch)
    relative = spool.result_path(STUDY, SERIES, SOP)
    spool.write(relative, b"DICM")
    final = spool.absolute(relative)
    # the directories created on the way (study, series under results/) were synced into their parents
    log.check_durable_order(spool, final, [final.parent.parent, final.parent])


def test_a_retried_jobs_result_replaces_the_leftover_of_its_interrupted_attempt(spool: Spool) -> None:
    """Result names are derived from the job's inputs; a retry after a crash writes them again with
    new bytes (creation times). Instance names carry the content hash: there, other bytes stay an error."""
    relative = spool.result_path(STUDY, SERIES, SOP)
    spool.write(relative, b"attempt 1, killed before the job completed")
    again = spool.write(relative, b"attempt 2")
    assert again.created is True and spool.absolute(relative).read_bytes() == b"attempt 2"
    assert again.sha256 == sha256_hex(b"attempt 2")
    instance = spool.instance_path(STUDY, SERIES, SOP, sha256_hex(b"x"))
    spool.write(instance, b"x")
    with pytest.raises(SpoolError, match="different content"):
        spool.write(instance, b"y")
    assert list((spool.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("call", ["write", "fsync"])  # the file's data (step 1), a directory (steps 2, 3)
def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str,
                                     spool: Spool) -> None:
    def broken(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, call, broken)
    relative = spool.result_path(STUDY, SERIES, SOP)
    with pytest.raises(OSError, match="Input/output"):
        spool.write(relative, b"data")
    monkeypatch.undo()
    assert not spool.absolute(relative).exists()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_staged_write_is_the_same_durable_write(monkeypatch: pytest.MonkeyPatch, spool: Spool) -> None:
    """Spool.stage + place: step 1 in the background, then the same rename and syncs as Spool.write."""
    log = SyscallLog(monkeypatch)
    data = os.urandom(200_000)
    relative = spool.instance_path(STUDY, SERIES, SOP, sha256_hex(data))
    with spool.stage(data) as staged:
        assert staged.sha256 == sha256_hex(data) and staged.size == len(data)
        stored = staged.place(relative)
    assert (stored.path, stored.sha256, stored.size, stored.created) == (relative, sha256_hex(data), len(data), True)
    final = spool.absolute(relative)
    assert final.read_bytes() == data
    log.check_durable_order(spool, final, [final.parent.parent, final.parent])
    part_writers = {thread for kind, path, thread in log.events if kind == "write" and path.endswith(".part")}
    assert len(part_writers) == 1 and part_writers.pop().startswith("spool-writer")  # off the caller's thread
    with spool.stage(data) as again:  # the same bytes again: nothing is replaced, the staged copy goes
        assert again.place(relative).created is False
    with spool.stage(b"other") as other:
        with pytest.raises(SpoolError, match="different content"):
            other.place(relative)
    with spool.stage(b"refused"):
        pass  # left without placing: the temporary file is removed
    assert final.read_bytes() == data
    assert list((spool.root / "tmp").iterdir()) == []


def test_failed_staged_write_is_raised_by_place_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     spool: Spool) -> None:
    def broken_write(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", broken_write)
    relative = spool.result_path(STUDY, SERIES, SOP)
    with spool.stage(b"data") as staged, pytest.raises(OSError, match="No space"):
        staged.place(relative)
    with spool.stage(b"data"):  # refused before placing: the write's error is not the caller's problem
        pass
    monkeypatch.undo()
    assert not spool.absolute(relative).exists()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_known_directories_cost_no_sync_and_unknown_ones_are_synced_once(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          spool: Spool) -> None:
    series = tmp_path / "spool" / "instances" / STUDY / SERIES
    series.mkdir(parents=True)  # left by an earlier run that may have stopped before syncing
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool.write(spool.instance_path(STUDY, SERIES, SOP, sha256_hex(b"one")), b"one")
    directories = [path for path in synced if not path.endswith(".part")]
    assert directories == [str(series.parent.parent), str(series.parent), str(series)]  # entries, then rename
    synced.clear()
    spool.write(spool.instance_path(STUDY, SERIES, SOP + "1", sha256_hex(b"two")), b"two")
    assert [path for path in synced if not path.endswith(".part")] == [str(series)]  # the rename only


def test_a_directory_is_durable_before_a_concurrent_writer_may_use_it(monkeypatch: pytest.MonkeyPatch,
                                                                       spool: Spool) -> None:
    """A second association must not find a new directory and answer 0x0000 before its entry is synced."""
    study_synced, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(spool.root / "instances"):  # the new study's entry
            release.wait(10)
            study_synced.set()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    first = threading.Thread(target=spool.write, args=(spool.instance_path(STUDY, SERIES, SOP, sha256_hex(b"a")), b"a"))
    first.start()
    deadline = time.monotonic() + 10
    while not (spool.root / "instances" / STUDY).exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    second_done = threading.Event()
    second = threading.Thread(target=lambda: (spool.write(spool.instance_path(STUDY, SERIES, SOP + "2",
                                                                              sha256_hex(b"b")), b"b"),
                                              second_done.set()))
    second.start()
    assert not second_done.wait(0.3)  # the directory exists but is not durable yet: the second writer waits
    release.set()
    first.join(10)
    second.join(10)
    assert second_done.is_set() and study_synced.is_set()


def test_close_waits_for_the_writes_then_stops_the_writer_threads(tmp_path: Path) -> None:
    def writers() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.name.startswith("spool-writer")}

    before = writers()
    with Spool(tmp_path / "spool") as spool:
        staged = [spool.stage(os.urandom(100_000)) for _ in range(4)]
        assert writers() - before  # the writes run in the spool's own threads ...
    assert not writers() - before  # ... which closing stopped
    for number, item in enumerate(staged):  # after each write had finished
        with item:
            assert item.place(spool.instance_path(STUDY, SERIES, f"{SOP}{number}", item.sha256)).created
    with pytest.raises(RuntimeError):
        spool.stage(b"after close")
    spool.close()  # idempotent


def test_free_space_floor(spool: Spool) -> None:
    free = spool.free_bytes()
    assert free > 0 and spool.has_room(1000)
    assert not spool.has_room(free + 1)
    spool.min_free_bytes = free + (1 << 40)
    assert not spool.has_room(0)


def test_quarantine_keeps_bytes_and_reason(spool: Spool) -> None:
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
