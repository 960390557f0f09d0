"""The spool: durable files under one root, at paths built only from validated UIDs.

The first half of "receive" in docs/architecture.md, "The journey of a study" (the index is
:mod:`dicomnode.store.ingest`).

Layout (all paths stored in the database are relative to the spool root, with ``/`` separators)::

    instances/<StudyUID>/<SeriesUID>/<SOPUID>.<sha256[:12]>.dcm   received instances, one file per version
    results/<StudyUID>/<SeriesUID>/<SOPUID>.dcm                    objects the node wrote (SEG, GSPS, SR, SC)
    quarantine/<UTC timestamp>-<random>.dcm  (+ .json)             refused input, with the reason beside it
    tmp/                                                           half-written files (same filesystem)

API (stable; other modules depend on it)::

    spool = Spool(config.storage.spool_path, min_free_bytes=config.storage.min_free_bytes)
    spool.has_room(incoming_bytes)                    # False below the floor -> answer 0xA700
    rel = spool.instance_path(study, series, sop, sha256_hex)  # raises UIDError for a bad UID
    stored = spool.write(rel, data)                   # durable; returns StoredFile(path, sha256, size)
    stored = spool.write(spool.result_path(study, series, sop), data)
    with spool.stage(data) as staged:                 # the same write, started in the background ...
        ...                                           # ... while the caller checks the data
        stored = staged.place(rel)                    # waits for it, then renames (as write does)
    spool.absolute(rel)                               # Path under the root (refuses escapes)
    spool.quarantine(data, reason=..., status=..., ...)  # -> relative path of the kept copy
    spool.close()                                     # when done (or ``with Spool(...) as spool:``)

Durability (what "written" means before the receiver answers 0x0000), each sync needed because
POSIX makes a file's data and a directory's entries durable separately (``fsync(2)``: "does not
necessarily ensure that the entry in the directory containing the file has also reached disk"):

1. the bytes go to a new file in ``tmp/`` (created exclusively) opened with ``O_DSYNC`` — the data
   (and the size and blocks needed to read it back) are on stable storage when ``write`` returns,
   as ``fdatasync`` would make them;
2. the file is renamed over its final name with ``os.replace`` (atomic on POSIX) and the destination
   directory is ``fsync``'ed — the new name (without it a crash can lose the name of a file whose
   index row is committed);
3. only for a directory created on the way (a new study or series): its parent is ``fsync``'ed — the
   directory's own entry. A directory this spool made durable, or found and made durable once, is
   remembered, so the common case (another instance of a known series) costs steps 1 and 2 only.
   Creating a directory and syncing its parent happen under one lock, so a concurrent association
   never sees a directory "exist" before it is durable.

A reader therefore sees either no file or the complete file, never a partial one. :meth:`Spool.stage`
runs step 1 in a background thread while the receiver validates the same bytes; the file and its
hash come from the bytes given, so nothing read back is trusted.

Every UID in a path passes :func:`dicomnode.dicom.uids.check_uid` (PS3.5 §9.1) first; anything else
raises :class:`~dicomnode.dicom.uids.UIDError` and no path is built from it.

Threads: :meth:`Spool.stage` writes in a pool of up to :data:`WRITER_THREADS` background threads,
started as concurrent writes need them. The spool owns them: whoever creates a spool closes it
(:meth:`Spool.close`, or ``with Spool(...) as spool:``), which waits for writes under way and stops
the threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from dicomnode.dicom.uids import check_uid

log = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
AREAS = ("instances", "results", "quarantine", "tmp")
# Background writers per spool (Spool.stage), started only as concurrent writes need them; writes of
# more concurrent associations than this (the receiver's default limit is 10) wait for a free one.
WRITER_THREADS = 32
# Areas whose names come from what a job computes, not from the bytes: a retried job rewrites them (Spool.write).
_REGENERATED_AREAS = ("results",)
_REMEMBERED_DIRECTORIES = 100_000  # known-durable directories kept before the memory is reset


class SpoolError(RuntimeError):
    """The spool refused a path or a write (outside the root, name clash with different content)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    """A file the spool holds: its path relative to the spool root, its SHA-256 and size."""

    path: str
    sha256: str
    size: int
    created: bool  # False when an identical file was already there


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(directory: Path, data: bytes) -> Path:
    """Write ``data`` to a new file in ``directory``, durably (step 1); return the file.

    The file is opened with ``O_DSYNC``, so ``write`` returns only once the data and the metadata
    needed to read it back (size, blocks) are on stable storage: POSIX "synchronized I/O data
    integrity completion", what ``fdatasync`` after the write gives, in the same system call (one
    GIL release for the whole step, which matters in :meth:`Spool.stage`'s background thread). On
    failure the file is removed and the error raised.
    """
    temporary = directory / f"{secrets.token_hex(8)}.part"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DSYNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temporary


class StagedFile:
    """Bytes being written durably to the spool's ``tmp/`` in the background (:meth:`Spool.stage`).

    Use as a context manager: :meth:`place` gives the file its final name; leaving the block without
    placing it removes the temporary file. :meth:`place` waits for the write and raises its
    ``OSError`` if it failed.
    """

    def __init__(self, spool: Spool, size: int, sha256: str, written: Future[Path]) -> None:
        self._spool = spool
        self.size = size
        self.sha256 = sha256
        self._written = written
        self._settled = False  # placed or discarded

    def place(self, relative: str) -> StoredFile:
        """Rename the written file to ``relative`` (steps 2 and 3 of the module docstring); idempotent
        like :meth:`Spool.write`."""
        temporary = self._written.result()
        self._settled = True
        try:
            final = self._spool.absolute(relative)
            existing = self._spool._existing(final, relative, self.sha256, self.size)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if existing is not None:
            temporary.unlink(missing_ok=True)
            return existing
        return self._spool._place(temporary, final, relative, self.sha256, self.size)

    def discard(self) -> None:
        """Remove the temporary file (after the write ends; a failed write has removed it already)."""
        if self._settled:
            return
        self._settled = True
        try:
            temporary = self._written.result()
        except OSError:
            return
        temporary.unlink(missing_ok=True)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class Spool:
    """The node's file store rooted at ``root``; see the module docstring for the layout and API."""

    def __init__(self, root: str | Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_bytes
        self._durable_directories: set[Path] = set()  # made or checked durable (step 3)
        self._directory_lock = threading.Lock()
        self._writers = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="spool-writer")
        for area in AREAS:
            self._make_directories(self.root / area)

    def close(self) -> None:
        """Wait for the background writes under way, then stop the writer threads. Idempotent; a
        closed spool still writes (:meth:`write`), but :meth:`stage` raises ``RuntimeError``."""
        self._writers.shutdown(wait=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths ---------------------------------------------------------------------------------

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        """``instances/<study>/<series>/<sop>.<sha256[:12]>.dcm`` from validated UIDs."""
        check_uid(study_uid, "Study Instance UID")
        check_uid(series_uid, "Series Instance UID")
        check_uid(sop_uid, "SOP Instance UID")
        if not _SHA256_HEX.match(sha256):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return f"instances/{study_uid}/{series_uid}/{sop_uid}.{sha256[:12]}.dcm"

    def result_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """``results/<study>/<series>/<sop>.dcm`` from validated UIDs."""
        check_uid(study_uid, "Study Instance UID")
        check_uid(series_uid, "Series Instance UID")
        check_uid(sop_uid, "SOP Instance UID")
        return f"results/{study_uid}/{series_uid}/{sop_uid}.dcm"

    def absolute(self, relative: str) -> Path:
        """The absolute path of a spool-relative path; refuses anything that leaves the root."""
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or pure.parts[0] not in AREAS:
            raise SpoolError(f"{relative!r} is not a path inside the spool")
        return self.root.joinpath(*pure.parts)

    # -- space ---------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes available to this (unprivileged) process on the spool's filesystem."""
        return free_bytes(self.root)

    def has_room(self, incoming: int = 0) -> bool:
        """Whether ``incoming`` more bytes still leave ``min_free_bytes`` free."""
        return self.free_bytes() - incoming >= self.min_free_bytes

    # -- writing -------------------------------------------------------------------------------

    def write(self, relative: str, data: bytes, sha256: str | None = None) -> StoredFile:
        """Write ``data`` durably at ``relative`` (see the module docstring); idempotent.

        If a file is already there with the same SHA-256 nothing is written (``created=False``); a
        different file at the same name raises :class:`SpoolError` (names carry the content hash or a
        unique UID, so that means a bug or tampering, never something to overwrite silently) — except
        under ``results/``, where it is replaced (atomically, as any write): result names are derived
        from the job's inputs (:mod:`dicomnode.pipeline.results.common`), so a job retried after a crash writes
        the same names again with new bytes (new creation times), and what it finds there is the
        leftover of its own interrupted attempt, which nothing references yet.
        """
        final = self.absolute(relative)
        digest = sha256 or sha256_hex(data)
        existing = self._existing(final, relative, digest, len(data))
        if existing is not None:
            return existing
        temporary = _write_durably(self.root / "tmp", data)
        return self._place(temporary, final, relative, digest, len(data))

    def stage(self, data: bytes) -> StagedFile:
        """Start writing ``data`` durably to ``tmp/`` in a background thread (step 1); return at once.

        The caller checks the data meanwhile, then :meth:`StagedFile.place` s it (or leaves the ``with``
        block, which removes it): what :meth:`write` does, with the write overlapped. The SHA-256 is
        computed here; hashlib releases the GIL on large buffers, which lets the background thread
        start its write (one system call, no GIL) before the caller's CPU-bound checks begin.
        """
        written = self._writers.submit(_write_durably, self.root / "tmp", data)
        return StagedFile(self, len(data), sha256_hex(data), written)

    def _existing(self, final: Path, relative: str, digest: str, size: int) -> StoredFile | None:
        """The file already at ``final`` if it holds these bytes; None if there is none (or a stale
        result to replace, see :meth:`write`); :class:`SpoolError` if other bytes."""
        if not final.exists():
            return None
        if _file_sha256(final) == digest:
            return StoredFile(relative, digest, size, created=False)
        if PurePosixPath(relative).parts[0] in _REGENERATED_AREAS:
            log.warning("replacing %s, left by an interrupted attempt with other bytes", relative)
            return None
        raise SpoolError(f"{relative} exists with different content")

    def _place(self, temporary: Path, final: Path, relative: str, digest: str, size: int) -> StoredFile:
        """Steps 2 and 3 of the module docstring for a durably written temporary file."""
        try:
            self._make_directories(final.parent)
            try:
                os.replace(temporary, final)
            except FileNotFoundError:  # its folder was removed meanwhile (retention): make it again
                self.forget_directory(final.parent)
                self.forget_directory(final.parent.parent)
                self._make_directories(final.parent)
                os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(final.parent)
        return StoredFile(relative, digest, size, created=True)

    def _make_directories(self, directory: Path) -> None:
        """``mkdir -p`` that makes every directory's entry durable before anyone may use it (step 3).

        Directories known durable cost nothing (no system call). Otherwise, under the lock, each
        directory up to the first known one is created if missing and its parent ``fsync``'ed, then
        remembered. That includes directories that exist but are not known yet (made by an earlier
        run that may have stopped before its sync: one ``fsync`` each, once per process). The spool
        root, when it exists, and everything above it are the operator's and taken as durable.
        """
        if directory in self._durable_directories:
            return
        with self._directory_lock:
            if len(self._durable_directories) > _REMEMBERED_DIRECTORIES:
                self._durable_directories.clear()  # forgetting costs one more fsync per directory
            chain = []
            current = directory
            while current not in self._durable_directories:
                if current.is_dir() and (current == self.root or not current.is_relative_to(self.root)):
                    break
                chain.append(current)
                current = current.parent
            for created in reversed(chain):
                try:
                    created.mkdir()
                except FileExistsError:
                    if not created.is_dir():
                        raise
                _fsync_directory(created.parent)
                self._durable_directories.add(created)

    def forget_directory(self, directory: Path) -> None:
        """Forget that ``directory`` is known durable (it was removed: :mod:`dicomnode.store.retention`)."""
        with self._directory_lock:
            self._durable_directories.discard(directory)

    def quarantine(self, data: bytes | None, *, reason: str, status: str, calling_ae: str | None,
                   claimed_sop_instance_uid: str | None) -> str | None:
        """Keep refused input with its reason; return the relative path, or None if nothing was kept.

        The copy is ``quarantine/<UTC timestamp>-<random>.dcm`` with a ``.json`` beside it holding
        the reason, the status answered, the calling AE and the SOP Instance UID as claimed
        (unvalidated, truncated, never used in a path). Nothing is written when there are no bytes
        or the filesystem is below the free-space floor.
        """
        if data is None or not self.has_room(len(data)):
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"quarantine/{stamp}-{secrets.token_hex(4)}"
        note = {
            "reason": reason,
            "status": status,
            "calling_ae": calling_ae,
            "claimed_sop_instance_uid": claimed_sop_instance_uid,
            "size": len(data),
            "sha256": sha256_hex(data),
            "received_at": datetime.now(UTC).isoformat(),
        }
        kept = self.write(f"{name}.dcm", data).path
        self.write(f"{name}.json", json.dumps(note, indent=2).encode())
        return kept


def free_bytes(path: Path) -> int:
    """Bytes available to an unprivileged process on the filesystem holding ``path`` (``statvfs``);
    also what ``dicomnode status`` reads, without opening a spool."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

