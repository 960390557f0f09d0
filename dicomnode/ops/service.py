"""``dicomnode serve`` and ``dicomnode worker``: the node's parts running together.

The whole of docs/architecture.md, "The journey of a study", in one process tree.

``serve`` runs, in one process: the receiver (:mod:`dicomnode.pipeline.receiver`, pynetdicom server
threads), the assembly loop, the corrections pass (:mod:`dicomnode.learn.corrections`: stored SEG/SR
examined as site labels), retention (:mod:`dicomnode.store.retention`, every
``[retention] interval_seconds``), one worker and the exporter, each a thread, all coordinated through the
database only. Nothing is held in memory that the database does not also hold, so the process may be killed
at any moment (SIGKILL, power loss) and lose nothing it acknowledged: on restart, jobs whose worker
died are reclaimed when their lease expires, SENDING exports likewise, pending exports resume, and
receiving studies are assembled again.

``worker`` runs only a worker (and, with ``--export``, an exporter) against the same database and
spool, on this host or another: the scale-out of docs/architecture.md, "The journey of a study"
(PostgreSQL and a shared spool volume).

Shutdown on SIGTERM or SIGINT: the receiver stops accepting first (nothing new is acknowledged),
then the loops finish what they are doing and stop. A job still running after ``grace_seconds`` is
abandoned: its lease expires and another worker (or this node after a restart) takes it over.

Logging is :mod:`dicomnode.ops.logs` (configured by the command line before the parts start).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from dicomnode.config import NodeConfig
from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
from dicomnode.pipeline.export import Exporter, ExportPolicy
from dicomnode.pipeline.queue import QueuePolicy, environment_problem
from dicomnode.store.db import Database, connect
from dicomnode.store.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """Which parts a process runs."""

    receive: bool = True
    assemble: bool = True
    work: bool = True
    export: bool = True


def queue_policy(config: NodeConfig) -> QueuePolicy:
    queue = config.queue
    return QueuePolicy(lease_seconds=queue.lease_seconds, max_attempts=queue.max_attempts,
                       max_worker_losses=queue.max_worker_losses,
                       worker_loss_window_seconds=queue.worker_loss_window_seconds,
                       environment_retry_seconds=queue.environment_retry_seconds)


def export_policy(config: NodeConfig) -> ExportPolicy:
    """``[export]``; the exporter's lease covers one association set-up and one C-STORE (each
    bounded by ``[node] dimse_timeout``) and is renewed after every object."""
    return ExportPolicy(backoff_initial_seconds=config.export.backoff_initial_seconds,
                        backoff_max_seconds=config.export.backoff_max_seconds,
                        lease_seconds=2 * config.node.dimse_timeout + 5)


class ListenError(OSError):
    """A listener's address cannot be bound; the message names the listener, the address and the port."""


def check_listenable(listener: str, host: str, port: int) -> None:
    """Bind ``host:port`` once and release it, so a port in use is reported as such (naming the
    listener and where to change it) before anything slow starts. The listener itself binds again
    right after, with the same ``SO_REUSEADDR`` pynetdicom and ``http.server`` use."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"{listener}: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ListenError(f"{listener}: cannot listen on {host}:{port}: {exc.strerror}") from None


class Node:
    """The chosen parts of the node, started as threads of this process."""

    def __init__(self, config: NodeConfig, parts: Parts = Parts()) -> None:
        self.config = config
        self.parts = parts
        self.stop_event = threading.Event()
        self.database: Database | None = None
        self.spool: Spool | None = None  # owned: closed by stop()
        self.receiver = None
        self.monitoring = None  # dicomnode.ops.http.MonitoringServer when [http] port is set
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Check the listening ports, open the database (migrating it), load the model, start the
        parts. Raises on bad setup; a port that cannot be bound is found before the model loads."""
        config = self.config
        if self.parts.receive:
            check_listenable("DICOM receiver ([node] host, port)", config.node.host, config.node.port)
        if config.http.port is not None:
            check_listenable("HTTP monitoring ([http] host, port)", config.http.host, config.http.port)
        self.database = database = connect(config.database_url)
        database.migrate()
        self.spool = spool = Spool(config.storage.spool_path, min_free_bytes=config.storage.min_free_bytes)
        poll = config.queue.poll_seconds
        loops: list[tuple[str, Callable[[], None]]] = []
        if self.parts.work:
            # torch only where a worker runs
            from dicomnode.learn.active import ActiveSegmenter
            from dicomnode.pipeline.models import PLANAR, NodeModels, load_registry_model
            from dicomnode.pipeline.worker import Worker

            models = NodeModels(config.model)
            models.load_all()  # each logged with its operating point; a bad card fails the start
            # the planar lesion model: the registry's active one (dicomnode learn), else [model]
            configured = models.get(PLANAR)  # kept: the worker's models.use() replaces what get() returns
            active = ActiveSegmenter(database, config.storage.var_dir, lambda: configured,
                                     lambda card: load_registry_model(card, config.model))
            worker = Worker(database, spool, models, config.results,
                            [d.name for d in config.destinations], queue_policy(config),
                            active_planar=active.current)
            loops.append(("worker", lambda: worker.run(self.stop_event, poll)))
        if self.parts.work and not config.destinations:
            log.warning("no [[destinations]] configured: results are kept in the spool and sent nowhere")
        if self.parts.export and config.destinations:
            exporter = Exporter(database, spool, config.destinations, config.node.ae_title, export_policy(config),
                                timeout=config.node.dimse_timeout)
            loops.append(("exporter", lambda: exporter.run(self.stop_event, poll)))
        if self.parts.assemble:
            policy = AssemblyPolicy(quiet_seconds=config.assembly.quiet_seconds)
            loops.append(("assembly", lambda: self._repeat(lambda: assemble(database, policy), poll)))
        if self.parts.assemble:  # stored SEG/SR/KO examined as corrections (dicomnode.learn.corrections)
            from dicomnode.learn.corrections import examine_new

            loops.append(("corrections", lambda: self._repeat(
                lambda: examine_new(database, spool, config.results.manufacturer), poll, "corrections pass")))
        if self.parts.assemble and config.retention.enabled:  # dicomnode.store.retention, with assembly
            from dicomnode.store.retention import purge

            loops.append(("retention", lambda: self._repeat(
                lambda: purge(database, spool, config.retention, dry_run=False),
                config.retention.interval_seconds, "retention pass")))
        if self.parts.receive:
            from dicomnode.pipeline.receiver import start_receiver

            self.receiver = start_receiver(config, database, spool)
        for name, target in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        # -- [http]: health and Prometheus metrics (dicomnode.ops.http), computed from the database --
        if config.http.port is not None:
            from dicomnode.ops.http import start_monitoring

            self.monitoring = start_monitoring(database, config.http.host, config.http.port, self.parts_alive, spool)
        # -- end [http] --
        log.info("node started", extra={"parts": [name for name, _ in loops] + (["receiver"] if self.receiver else []),
                                        "database": database.url})

    def parts_alive(self) -> dict[str, bool]:
        """Each running part of this process and whether it is alive (for ``/healthz``)."""
        alive = {thread.name: thread.is_alive() and not self.stop_event.is_set() for thread in self._threads}
        if self.parts.receive:
            alive["receiver"] = self.receiver is not None
        return alive

    def _repeat(self, step: Callable[[], object], interval: float, what: str = "assembly pass") -> None:
        while not self.stop_event.is_set():
            try:
                step()
            except Exception as exc:
                problem = environment_problem(exc)  # a full disk, no database: one line, not a traceback
                if problem is None:
                    log.exception("%s failed", what)
                else:
                    log.warning("%s waits for %s", what, problem, extra={"error": type(exc).__name__})
            self.stop_event.wait(interval)

    def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop accepting, then let the loops finish (see the module docstring)."""
        if self.monitoring is not None:
            self.monitoring.stop()
            self.monitoring = None
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        self.stop_event.set()
        for thread in self._threads:
            thread.join(grace_seconds)
            if thread.is_alive():
                log.warning("%s still busy after %.0f s; its lease will expire and be reclaimed",
                            thread.name, grace_seconds)
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self.database is not None:
            self.database.dispose()
        log.info("node stopped")


def run_until_signalled(config: NodeConfig, parts: Parts) -> None:
    """Start ``parts`` and block until SIGTERM or SIGINT, then stop cleanly."""
    node = Node(config, parts)
    signalled = threading.Event()

    def on_signal(number: int, _frame) -> None:
        log.info("signal %s: stopping", signal.Signals(number).name)
        signalled.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        while not signalled.wait(1.0):
            pass
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
