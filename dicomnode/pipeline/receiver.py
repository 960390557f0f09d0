"""The receiver: a pynetdicom AE answering C-ECHO and C-STORE (PS3.4 Annex A and B).

Step "receive" of docs/architecture.md, "The journey of a study"; what it accepts is
:data:`dicomnode.dicom.sop.RECEIVED`, and the order of its C-STORE checks, its association rules and
its transport are in docs/dicom.md, "Receiving and sending". API (``dicomnode serve`` uses it)::

    receiver = Receiver(config, database, spool)     # or start_receiver(config, database, spool)
    receiver.start()                                  # non-blocking: listens in background threads
    receiver.port                                     # the port actually bound
    receiver.stop()
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections import OrderedDict
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import OperationalError

from dicomnode.config import NodeConfig
from dicomnode.dicom.budget import DecodeBudget
from dicomnode.dicom.sop import RECEIVED
from dicomnode.dicom.status import Status
from dicomnode.dicom.parse import Refusal
from dicomnode.dicom.validate import inspect_instance
from dicomnode.store.db import Database
from dicomnode.store.ingest import CONTEXT_REFUSED, ingest, record_refusal
from dicomnode.store.spool import Spool

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]
ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO (PS3.7 E.1)


class Receiver:
    """The node's Storage SCP and Verification SCP; see the module docstring."""

    def __init__(self, config: NodeConfig, database: Database, spool: Spool) -> None:
        self.config = config
        self.database = database
        self.spool = spool
        self.budget = DecodeBudget(config.limits.decoded_bytes_per_instance, config.limits.decoded_bytes_per_node)
        self._server: Any = None
        node = config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.maximum_pdu_size = node.max_pdu_size
        ae.require_called_aet = True
        ae.require_calling_aet = list(node.allowed_callers)
        ae.add_supported_context(Verification)
        for sop_class in RECEIVED:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.ae = ae
        self._told = OncePerSeries()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen in background threads (returns at once)."""
        node = self.config.node
        ssl_context = node.tls.context() if node.tls is not None else None
        self._server = self.ae.start_server(
            (node.host, node.port), block=False, ssl_context=ssl_context,
            evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay), (evt.EVT_C_STORE, self.handle_store),
                          (evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_REJECTED, _log_rejected),
                          (evt.EVT_ACCEPTED, self.handle_accepted)],
        )
        log.info("receiver %s listening on %s:%d%s", node.ae_title, node.host, self.port,
                 " (TLS)" if ssl_context else "")

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ---------------------------------------------------------------------------------

    def handle_accepted(self, event: Any) -> None:
        """Log and record each presentation context the accepted association refused (module docstring)."""
        calling_ae = str(event.assoc.requestor.ae_title)
        for context in event.assoc.rejected_contexts:
            uid = UID(str(context.abstract_syntax)[:64])
            reason = (f"presentation context refused ({_CONTEXT_RESULTS.get(context.result, context.result)}): "
                      f"SOP class {uid}{f' ({uid.name})' if uid.is_valid and uid.name != uid else ''}")
            log.warning("association from %s: %s", calling_ae, reason)
            try:
                record_refusal(self.database, path=None, reason=reason, status=CONTEXT_REFUSED,
                               calling_ae=calling_ae, claimed_sop_instance_uid=None)
            except Exception:  # best effort, as for a refused instance
                log.exception("association from %s: the refused context could not be recorded", calling_ae)

    def handle_echo(self, event: Any) -> int:
        """C-ECHO (PS3.7 9.1.5): always success."""
        log.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
        return Status.SUCCESS

    def handle_store(self, event: Any) -> int | Dataset:
        """C-STORE: see the module docstring for the order of checks. Never raises."""
        return self.store(event, str(event.assoc.requestor.ae_title))

    def store(self, event: Any, calling_ae: str) -> int | Dataset:
        """Store one C-STORE request's data set sent by ``calling_ae``: the requestor of a C-STORE
        association, or the PACS answering our C-GET with storage sub-operations
        (:mod:`dicomnode.learn.pull`). Never raises."""
        claimed_uid = str(event.request.AffectedSOPInstanceUID or "")[:128]
        data: bytes | None = None
        try:
            data = event.encoded_dataset()  # Part 10: preamble, File Meta, the data set as sent
            if not self.spool.has_room(len(data)):
                raise _Unavailable(f"not enough free space: {len(data)} bytes would leave under "
                                   f"{self.spool.min_free_bytes} free")
            with self.spool.stage(data) as staged:  # written durably in the background meanwhile
                instance = inspect_instance(event.encoded_dataset(include_meta=False),
                                            transfer_syntax=str(event.context.transfer_syntax),
                                            sop_class_uid=str(event.request.AffectedSOPClassUID),
                                            sop_instance_uid=str(event.request.AffectedSOPInstanceUID),
                                            budget=self.budget)
                result = ingest(self.database, self.spool, instance, staged, calling_ae)
        except Refusal as refusal:  # a decoding budget (0xA700) refuses the instance, not its bytes: none kept
            return self._refuse(refusal.status, refusal.reason, data, calling_ae, claimed_uid,
                                keep=refusal.status is not Status.OUT_OF_RESOURCES)
        except _Unavailable as exc:
            return self._refuse(Status.OUT_OF_RESOURCES, str(exc), None, calling_ae, claimed_uid, keep=False)
        except OSError as exc:
            return self._refuse(Status.OUT_OF_RESOURCES, f"spool write failed: {exc.strerror or exc}", None,
                                calling_ae, claimed_uid, keep=False)
        except OperationalError as exc:
            return self._refuse(Status.OUT_OF_RESOURCES, f"database unavailable: {str(exc.orig)[:120]}", None,
                                calling_ae, claimed_uid, keep=False)
        except Exception as exc:  # the promise: no input crashes the receiver
            log.exception("C-STORE %s from %s: unexpected error", claimed_uid, calling_ae)
            return self._refuse(Status.PROCESSING_FAILURE, f"unexpected error: {type(exc).__name__}: {exc}"[:300],
                                data, calling_ae, claimed_uid, keep=True)
        for level, remark in [*((logging.WARNING, w) for w in instance.warnings),
                              *((logging.INFO, n) for n in instance.notes)]:
            if self._told.first(instance.series_instance_uid, remark):
                log.log(level, "C-STORE %s from %s: accepted with %s (once per series): %s", claimed_uid, calling_ae,
                        "warning" if level == logging.WARNING else "note", remark)
        log.info("C-STORE %s from %s: 0x0000 %s (study version %d)", claimed_uid, calling_ae,
                 result.outcome.value, result.study_version,
                 extra={"study_uid": instance.study_instance_uid, **instance.patient_fields})
        return Status.SUCCESS

    def _refuse(self, status: Status, reason: str, data: bytes | None, calling_ae: str, claimed_uid: str,
                *, keep: bool) -> Dataset:
        """Log, quarantine (``keep``: the bytes are the problem), index the refusal, build the response."""
        log.warning("C-STORE %s from %s: %s %s", claimed_uid, calling_ae, status, reason)
        try:
            path = self.spool.quarantine(data if keep else None, reason=reason, status=str(status),
                                         calling_ae=calling_ae, claimed_sop_instance_uid=claimed_uid)
            record_refusal(self.database, path=path, reason=reason, status=str(status), calling_ae=calling_ae,
                           claimed_sop_instance_uid=claimed_uid)
        except Exception:  # quarantine is best effort; the status below is what matters
            log.exception("C-STORE %s from %s: the refusal could not be recorded", claimed_uid, calling_ae)
        response = Dataset()
        response.Status = int(status)
        response.ErrorComment = error_comment(reason)
        return response


def _no_delay(event: Any) -> None:
    """TCP_NODELAY on each accepted connection (``EVT_CONN_OPEN``, before the first PDU is answered).

    A C-STORE response is one small PDU; with Nagle's algorithm it waits for the sender's delayed
    ACK (~40 ms on Linux loopback), which would cap a single association at ~25 instances/s.
    """
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: A-ASSOCIATE-AC presentation context results (PS3.8 Table 9-18).
_CONTEXT_RESULTS = {1: "user rejection", 2: "no reason", 3: "abstract syntax not supported",
                    4: "transfer syntaxes not supported"}


class OncePerSeries:
    """Remembers which remark was logged for which series, so that one line stands for a whole
    series (a CT's 342 slices share their remarks); bounded, thread-safe."""

    def __init__(self, size: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first(self, series_uid: str, remark: str) -> bool:
        key = (series_uid, remark)
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True


class _Unavailable(Exception):
    """Not enough room to accept the instance now (answered 0xA700)."""


_WHERE = re.compile(r"^instance [^:]*: ")  # "instance <UID>[ frame n]: " that view errors lead with


def error_comment(reason: str) -> str:
    """The reason as the sender sees it in Error Comment (0000,0902), an LO value (PS3.7 C.4, PS3.5
    Table 6.2-1): the reason first (the instance's UID, which the sender knows, is dropped: it stays
    in the log and the quarantine record with the whole reason), printable ASCII without backslash,
    at most 64 characters, cut at a word with ``...`` when longer."""
    text = "".join(ch if " " <= ch <= "~" and ch != "\\" else "?" for ch in _WHERE.sub("", reason))
    if len(text) <= ERROR_COMMENT_LENGTH:
        return text
    cut = text[: ERROR_COMMENT_LENGTH - 3]
    if " " in cut[ERROR_COMMENT_LENGTH // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:(") + "..."


def _log_rejected(event: Any) -> None:
    log.warning("association from %s (%s) rejected", event.assoc.requestor.ae_title,
                event.assoc.requestor.address)


def start_receiver(config: NodeConfig, database: Database, spool: Spool) -> Receiver:
    """Create and start a :class:`Receiver` (non-blocking)."""
    receiver = Receiver(config, database, spool)
    receiver.start()
    return receiver
