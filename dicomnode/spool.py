"""The spool: durable files under one root, at paths built only from validated UIDs (DESIGN §1.1).

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
    spool.absolute(rel)                               # Path under the root (refuses escapes)
    spool.quarantine(data, reason=..., status=..., ...)  # -> relative path of the kept copy

Durability (what "written" means before the receiver answers 0x0000): the bytes go to a new file in
``tmp/`` (created exclusively), are flushed and ``fsync``'ed, the file is renamed over its final name
with ``os.replace`` (atomic on POSIX), and the destination directory is ``fsync``'ed so the rename
itself survives a crash; directories created on the way are ``fsync``'ed into their parents. A reader
therefore sees either no file or the complete file, never a partial one.

UIDs (PS3.5 §9.1): only ``0-9`` and ``.``, components without leading zeros, at most 64 characters.
Anything else (``../../x``, ``1.2/3``, an empty string, a 65-character UID) raises :class:`UIDError`
and no path is built from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_MAX_LENGTH = 64
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
AREAS = ("instances", "results", "quarantine", "tmp")


class UIDError(ValueError):
    """A value that is not a valid DICOM UID (PS3.5 §9.1); the message says why."""


class SpoolError(RuntimeError):
    """The spool refused a path or a write (outside the root, name clash with different content)."""


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


def make_directories(directory: Path) -> None:
    """``mkdir -p`` that also ``fsync``s each parent whose entry list changed."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:  # another thread made it meanwhile
            continue
        _fsync_directory(created.parent)


class Spool:
    """The node's file store rooted at ``root``; see the module docstring for the layout and API."""

    def __init__(self, root: str | Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_bytes
        for area in AREAS:
            make_directories(self.root / area)

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
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def has_room(self, incoming: int = 0) -> bool:
        """Whether ``incoming`` more bytes still leave ``min_free_bytes`` free."""
        return self.free_bytes() - incoming >= self.min_free_bytes

    # -- writing -------------------------------------------------------------------------------

    def write(self, relative: str, data: bytes, sha256: str | None = None) -> StoredFile:
        """Write ``data`` durably at ``relative`` (see the module docstring); idempotent.

        If a file is already there with the same SHA-256 nothing is written (``created=False``); a
        different file at the same name raises :class:`SpoolError` (names carry the content hash or a
        unique UID, so that means a bug or tampering, never something to overwrite silently).
        """
        digest = sha256 or sha256_hex(data)
        final = self.absolute(relative)
        if final.exists():
            if _file_sha256(final) == digest:
                return StoredFile(relative, digest, len(data), created=False)
            raise SpoolError(f"{relative} exists with different content")
        make_directories(final.parent)
        temporary = self.root / "tmp" / f"{secrets.token_hex(8)}.part"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(final.parent)
        return StoredFile(relative, digest, len(data), created=True)

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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

