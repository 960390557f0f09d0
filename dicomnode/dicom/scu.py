"""C-ECHO and C-STORE as a service user: ``dicomnode echo``, ``dicomnode send``, and export (PS3.4 A, B; PS3.8).

API (stable)::

    peer = parse_peer("pacs.example.org:104:PACS", default_ae_title="DICOMNODE")  # -> Destination
    result = echo(peer, calling_ae="DICOMNODE")            # EchoResult(ok, status, detail, seconds)
    with associate(peer, "DICOMNODE", contexts) as assoc:  # pynetdicom Association, or AssociationFailed
        ...
    results = send_files(paths, peer, calling_ae="DICOMNODE", on_result=callback)  # list[FileResult]

:class:`AssociationFailed` says why no association came about, and whether that is *permanent*
(A-ASSOCIATE-RJ with result "rejected-permanent", PS3.8 §9.3.4, e.g. an unknown AE title; or no
presentation context accepted, PS3.8 §9.3.2.2) or worth retrying (transient rejection, connection
refused, timeout, A-ABORT). Its ``status`` is the cause class an operator acts on (:data:`CAUSES`:
TLS certificate, TLS handshake, connection refused, association rejected, timeout, …) and ``detail``
the particulars (the certificate's verification error, the rejection's source and reason).
pynetdicom reports a failed connect only in two ERROR log lines of its DUL thread;
:class:`_ConnectErrors` takes that error (the exception itself for TLS) for the association that
failed and drops the two lines, so a PACS that is down costs one WARNING per retry (the exporter's).

:func:`send_files` expands folders recursively (sorted, files that are not DICOM are reported and
skipped), proposes one presentation context per (SOP Class, transfer syntax) found — native syntaxes
also offer Explicit and Implicit VR Little Endian so the receiver may choose — and uses as few
associations as the 128-context limit allows (PS3.8 §9.3.2.2: at most 128 presentation contexts).
Each file gets the status the receiver answered, with its Error Comment when there is one.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID
from pynetdicom import AE, build_role
from pynetdicom.sop_class import Verification

from dicomnode.dicom.peers import Destination, validate_ae_title
from dicomnode.dicom.status import as_text, describe, stored

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1-255
DEFAULT_TIMEOUT = 30.0
_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


#: Why no association came about, as ``AssociationFailed.status`` (shown by ``dicomnode status``,
#: ``dicomnode_export_failing{cause}`` in ``/metrics``).
TLS_CERTIFICATE = "TLS certificate"  # the peer's certificate did not verify (CERTIFICATE_VERIFY_FAILED)
TLS_HANDSHAKE = "TLS handshake"  # any other TLS failure (protocol, cipher, a client certificate refused)
CONNECTION_REFUSED = "connection refused"  # nothing listens there (or a firewall says no)
TIMEOUT = "timeout"  # no TCP connection, A-ASSOCIATE answer or C-STORE response in time
NO_CONNECTION = "no connection"  # any other network error (no route, name not resolved)
ABORTED = "association aborted"  # connected, then A-ABORT or the connection closed before an answer
CAUSES = (TLS_CERTIFICATE, TLS_HANDSHAKE, CONNECTION_REFUSED, TIMEOUT, NO_CONNECTION, ABORTED,
          "association rejected (permanent)", "association rejected (transient)", "no presentation context",
          "association lost")


class _ConnectErrors(logging.Filter):
    """Keeps the connect error pynetdicom's transport logs in a DUL thread, by thread, and drops the line.

    ``pynetdicom.transport`` catches the ``OSError`` of a failed connect (``ssl.SSLError`` included)
    and only logs it ("Association request failed: unable to connect to remote", "TCP Initialisation
    Error: …", and for TLS the exception with its traceback). :func:`associate` reads what the DUL
    thread of its association left here (:meth:`take`) and raises it as :class:`AssociationFailed`.
    """

    _MARKERS = ("Association request failed: unable to connect", "TCP Initialisation Error")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._errors: dict[int, tuple[str, BaseException | None]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if not (message.startswith(self._MARKERS) or isinstance(error, ssl.SSLError)):
            return True
        with self._lock:
            text, known = self._errors.get(threading.get_ident(), ("", None))
            if message.startswith("TCP Initialisation Error: "):
                text = message.removeprefix("TCP Initialisation Error: ")
            self._errors[threading.get_ident()] = (text, error or known)
        return False

    def take(self, thread: threading.Thread | None) -> tuple[str, BaseException | None] | None:
        if thread is None or thread.ident is None:
            return None
        with self._lock:
            return self._errors.pop(thread.ident, None)


_CONNECT_ERRORS = _ConnectErrors()
logging.getLogger("pynetdicom.transport").addFilter(_CONNECT_ERRORS)


def connect_cause(text: str, error: BaseException | None) -> tuple[str, str]:
    """The cause class (:data:`CAUSES`) and a short detail of a failed connect."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return TLS_CERTIFICATE, f"{error.reason or 'CERTIFICATE_VERIFY_FAILED'}: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return TLS_HANDSHAKE, f"{error.reason or type(error).__name__}: {error}"[:200]
    if isinstance(error, ConnectionRefusedError) or "refused" in text.lower():
        return CONNECTION_REFUSED, text or "connection refused"
    if isinstance(error, TimeoutError) or "timed out" in text.lower():
        return TIMEOUT, text or "timed out"
    return NO_CONNECTION, text or (f"{type(error).__name__}: {error}" if error else "unknown network error")


class AssociationFailed(Exception):
    """No association (or it was lost); ``permanent`` when retrying cannot help."""

    def __init__(self, status: str, detail: str, permanent: bool) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.permanent = status, detail, permanent


def parse_peer(text: str, default_ae_title: str, name: str = "command line") -> Destination:
    """``HOST:PORT[:AET]`` (IPv6 as ``[::1]:PORT[:AET]``) → :class:`~dicomnode.dicom.peers.Destination`.

    Without an AE title the peer is addressed as ``default_ae_title``. Raises ``ValueError`` with
    the reason for anything else.
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT[:AET]")
        rest = rest[1:]
    else:
        host, sep, rest = text.partition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected HOST:PORT[:AET]")
    port_text, _, ae_title = rest.partition(":")
    if not host:
        raise ValueError(f"{text!r}: the host is empty")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    ae_title = validate_ae_title(ae_title) if ae_title else default_ae_title
    return Destination(name=name.replace(" ", "-"), host=host, port=int(port_text), ae_title=ae_title)


@contextmanager
def associate(peer: Destination, calling_ae: str, contexts: Sequence[tuple[str, Sequence[str]]],
              timeout: float = DEFAULT_TIMEOUT, *, scp_roles: Sequence[str] = (),
              evt_handlers: Sequence[tuple[Any, Any]] = ()) -> Iterator[Any]:
    """An established association proposing ``contexts`` ((abstract syntax, transfer syntaxes) pairs).

    ``scp_roles``: SOP classes of ``contexts`` for which we also offer the SCP role (SCP/SCU Role
    Selection, PS3.7 D.3.3.4), so a C-GET's storage sub-operations can come back on this association
    (PS3.4 C.4.3), to ``evt_handlers``. Released when the block ends (aborted if the block raised).
    Raises :class:`AssociationFailed`.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for abstract_syntax, syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, list(syntaxes))
    kwargs: dict[str, Any] = {"ae_title": peer.ae_title}
    if scp_roles:
        kwargs["ext_neg"] = [build_role(uid, scp_role=True) for uid in scp_roles]
    if evt_handlers:
        kwargs["evt_handlers"] = list(evt_handlers)
    if peer.tls is not None:
        kwargs["tls_args"] = peer.tls.arguments(peer.host)
    started = time.monotonic()
    try:
        assoc = ae.associate(peer.host, peer.port, **kwargs)
    except (OSError, ssl.SSLError) as exc:  # raised here only before the DUL thread runs (TLS set-up)
        cause, detail = connect_cause(str(exc), exc)
        raise AssociationFailed(cause, f"{_where(peer)}: {detail}", permanent=False) from None
    if not assoc.is_established:
        raise _why_not(assoc, peer, waited=time.monotonic() - started >= timeout)
    try:
        yield assoc
    except BaseException:
        assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()


def _where(peer: Destination) -> str:
    return f"{peer.ae_title}@{peer.host}:{peer.port}"


def _why_not(assoc: Any, peer: Destination, waited: bool) -> AssociationFailed:
    """Why ``assoc`` was not established; ``waited``: the ACSE timeout ran out (pynetdicom then aborts)."""
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        permanent = primitive.result == 0x01
        kind = "permanent" if permanent else "transient"
        return AssociationFailed(f"association rejected ({kind})",
                                 f"{_where(peer)}: {primitive.source_str}: {primitive.reason_str}", permanent)
    if primitive is not None and primitive.result == 0x00:
        return AssociationFailed("no presentation context",
                                 f"{_where(peer)} accepted none of the proposed SOP classes", permanent=True)
    connect_error = _CONNECT_ERRORS.take(getattr(assoc, "dul", None))
    if connect_error is not None:
        cause, detail = connect_cause(*connect_error)
        return AssociationFailed(cause, f"{_where(peer)}: {detail}", permanent=False)
    if waited:
        return AssociationFailed(TIMEOUT, f"{_where(peer)}: no A-ASSOCIATE answer within the ACSE timeout",
                                 permanent=False)
    return AssociationFailed(ABORTED, f"{_where(peer)}: A-ABORT or the connection closed before an "
                             "A-ASSOCIATE answer", permanent=False)


# -- C-ECHO -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EchoResult:
    peer: Destination
    ok: bool
    status: str  # "0x0000", or why there was no answer
    detail: str
    seconds: float


def echo(peer: Destination, calling_ae: str, timeout: float = DEFAULT_TIMEOUT) -> EchoResult:
    """C-ECHO (PS3.7 §9.1.5) to ``peer``; never raises for network trouble."""
    start = time.monotonic()
    try:
        with associate(peer, calling_ae, [(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])],
                       timeout) as assoc:
            response = assoc.send_c_echo()
    except AssociationFailed as exc:
        return EchoResult(peer, False, exc.status, exc.detail, time.monotonic() - start)
    elapsed = time.monotonic() - start
    if "Status" not in response:
        return EchoResult(peer, False, "no response", "the association was aborted or timed out", elapsed)
    status = int(response.Status)
    return EchoResult(peer, status == 0x0000, as_text(status), describe(status), elapsed)


# -- C-STORE ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResult:
    path: Path
    sop_instance_uid: str | None
    status: int | None  # the C-STORE response status; None when nothing was answered
    detail: str  # status meaning and Error Comment, or why the file was not sent
    skipped: bool = False  # found in a folder but not DICOM: reported, not a failure

    @property
    def ok(self) -> bool:
        """Success or warning (the receiver kept the instance, PS3.4 B.2.3)."""
        return self.status is not None and stored(self.status)

    @property
    def status_text(self) -> str:
        if self.status is not None:
            return as_text(self.status)
        return "skipped" if self.skipped else "not sent"


def find_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, bool]]:
    """Yield (file, explicitly named) for files and, recursively and sorted, the files in folders."""
    for item in paths:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name, False
        else:
            yield path, True


@dataclass(frozen=True)
class _Header:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _read_header(path: Path) -> _Header:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not syntax or "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise InvalidDicomError("no Transfer Syntax UID, SOP Class UID or SOP Instance UID")
    return _Header(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(syntax))


def _syntaxes(transfer_syntax: str) -> tuple[str, ...]:
    if UID(transfer_syntax) in _NATIVE:
        return (transfer_syntax, *(s for s in _NATIVE if s != transfer_syntax))
    return (transfer_syntax,)


def _batches(headers: Sequence[_Header]) -> Iterator[tuple[list[tuple[str, tuple[str, ...]]], list[_Header]]]:
    """Group files so that no association needs more than :data:`MAX_CONTEXTS` contexts."""
    contexts: dict[tuple[str, str], None] = {}
    batch: list[_Header] = []
    for header in headers:
        key = (header.sop_class_uid, header.transfer_syntax)
        if key not in contexts and len(contexts) == MAX_CONTEXTS:
            yield [(c, _syntaxes(t)) for c, t in contexts], batch
            contexts, batch = {}, []
        contexts.setdefault(key, None)
        batch.append(header)
    if batch:
        yield [(c, _syntaxes(t)) for c, t in contexts], batch


def send_files(paths: Iterable[str | os.PathLike[str]], peer: Destination, calling_ae: str,
               on_result: Callable[[FileResult], None] | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> list[FileResult]:
    """C-STORE every DICOM file in ``paths`` to ``peer``; return one :class:`FileResult` per file.

    Files found inside folders that are not DICOM are reported with ``skipped=True``; a named file
    that is not DICOM is a failure (status None).
    """
    results: list[FileResult] = []

    def report(result: FileResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    headers = []
    for path, named in find_files(paths):
        try:
            headers.append(_read_header(path))
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError) as exc:
            why = "not a DICOM file" if isinstance(exc, InvalidDicomError) else f"cannot be read ({exc})"
            report(FileResult(path, None, None, why, skipped=not named))
    for contexts, batch in _batches(headers):
        _send_batch(batch, contexts, peer, calling_ae, timeout, report)
    return results


def _send_batch(batch: Sequence[_Header], contexts: list[tuple[str, tuple[str, ...]]], peer: Destination,
                calling_ae: str, timeout: float, report: Callable[[FileResult], None]) -> None:
    pending = list(batch)
    try:
        with associate(peer, calling_ae, contexts, timeout) as assoc:
            while pending:
                header = pending[0]
                report(_store_one(assoc, header))
                pending.pop(0)
                if not assoc.is_established:
                    raise AssociationFailed("association lost", f"{_where(peer)} ended the association",
                                            permanent=False)
    except AssociationFailed as exc:
        for header in pending:
            report(FileResult(header.path, header.sop_instance_uid, None, f"{exc.status}: {exc.detail}"))


def _store_one(assoc: Any, header: _Header) -> FileResult:
    try:
        ds = pydicom.dcmread(header.path)
    except Exception as exc:  # a file that changed or broke since its header was read
        return FileResult(header.path, header.sop_instance_uid, None, f"cannot be read ({exc})")
    try:
        response = assoc.send_c_store(ds)
    except ValueError as exc:  # no accepted presentation context for this SOP class / transfer syntax
        return FileResult(header.path, header.sop_instance_uid, None, f"not accepted by the receiver: {exc}")
    if "Status" not in response:
        return FileResult(header.path, header.sop_instance_uid, None, "no response (aborted or timed out)")
    status = int(response.Status)
    detail = describe(status)
    comment = response.get("ErrorComment")
    if comment:
        detail = f"{detail} ({comment})"
    return FileResult(header.path, header.sop_instance_uid, status, detail)
