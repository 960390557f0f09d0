"""Health and Prometheus metrics over HTTP: ``GET /healthz`` and ``GET /metrics``.

Part of docs/architecture.md, "Operations".

Started by :class:`dicomnode.ops.service.Node` when ``[http] port`` is set. Every value is computed from
the database when it is scraped, so the numbers are the same whichever process of a scale-out site
(``serve`` or any ``worker``) answers, they survive restarts, and no module keeps counters of its own:

=======================================  ==========  ==============================================
Metric                                   Type        Source
=======================================  ==========  ==============================================
``dicomnode_instances_received_total``   counter     ``instance`` rows (every stored version)
``dicomnode_instances_refused_total``    counter     ``quarantine`` rows (C-STORE answered non-zero)
``dicomnode_studies{state}``             gauge       ``study.state``
``dicomnode_jobs{state}``                gauge       ``job.state``
``dicomnode_queue_depth``                gauge       jobs ``queued`` (waiting for a worker)
``dicomnode_job_duration_seconds``       histogram   finished jobs, ``started_at`` → ``finished_at``
``dicomnode_job_wait_seconds``           histogram   started jobs, ``created_at`` → ``started_at``
``dicomnode_exports{destination,state}`` gauge       ``export.state`` per destination
``dicomnode_export_attempts_total``      counter     ``export_attempt`` rows per destination
``dicomnode_export_failed_attempts_total`` counter   attempts that did not deliver (attempts minus
                                                     delivered exports; a delivery is one attempt)
``dicomnode_export_failing{destination,     gauge       exports pending after a failed attempt or
cause}``                                             refused, by ``export.last_status``: the cause
                                                     class (``TLS certificate``, ``TLS handshake``,
                                                     ``connection refused``, ``timeout``,
                                                     ``association rejected (…)``) or the status
``dicomnode_jobs_waiting{reason}``       gauge       jobs given back for want of ``disk space`` or
                                                     the ``database`` (``job.waiting_for``)
``dicomnode_job_worker_losses_total``    counter     leases that ran out because the worker died
                                                     (``job.worker_losses``; not attempts)
``dicomnode_database_up``                gauge       1 when the queries above succeeded
``dicomnode_spool_free_bytes``           gauge       ``statvfs`` of the spool (this host), also when
                                                     the database is down
``dicomnode_spool_min_free_bytes``       gauge       ``[storage] min_free_bytes``
``dicomnode_disk_below_floor``           gauge       1 while free < floor: C-STORE answers 0xA700
                                                     and workers pause until space returns
=======================================  ==========  ==============================================

The histograms' sums and bucket counts are aggregated in SQL (one query each), so a scrape costs
the same with ten jobs or a million. Exposition is prometheus_client's text format 0.0.4.

``/healthz`` answers 200 with a JSON body when the database answers and every part of this process
(receiver, assembly, worker, exporter threads) is alive, else 503 with the failing checks named, so
a container orchestrator restarts a node whose worker thread died. No patient data is ever served.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import Float, and_, case, func, or_, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from dicomnode import __version__
from dicomnode.pipeline.queue import WAITING_REASONS
from dicomnode.store.db import Database
from dicomnode.store.spool import Spool
from dicomnode.store.models import (
    Export,
    ExportAttempt,
    ExportState,
    Instance,
    Job,
    JobState,
    Quarantine,
    Study,
    StudyState,
)

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the job histograms: from a GPU's sub-second study to a stuck CPU job.
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

Parts = Callable[[], Mapping[str, bool]]


class seconds_between(FunctionElement):  # noqa: N801 - SQL function style, as sqlalchemy.func
    """``end - start`` in seconds, for both database engines (SQLite stores times as ISO text)."""

    type = Float()
    inherit_cache = True


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(seconds_between, "postgresql")
def _seconds_postgresql(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


class NodeMetrics:
    """A prometheus_client collector whose every value is read from the database (and the spool's
    filesystem, when given) at scrape time."""

    def __init__(self, database: Database, spool: Spool | None = None) -> None:
        self.database = database
        self.spool = spool

    def describe(self) -> list[Metric]:
        return []  # no fixed description: collect() queries, so registering must not

    def collect(self) -> Iterator[Metric]:
        if self.spool is not None:
            yield from self._disk(self.spool)
        up = GaugeMetricFamily("dicomnode_database_up", "1 when the node's database answered this scrape.")
        try:
            metrics = self._from_database()
        except Exception as exc:  # a scrape must answer, also (especially) when the database does not
            log.warning("metrics: database query failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    @staticmethod
    def _disk(spool: Spool) -> list[Metric]:
        free = spool.free_bytes()
        free_metric = GaugeMetricFamily("dicomnode_spool_free_bytes", "Bytes free on the spool's filesystem.")
        free_metric.add_metric([], free)
        floor = GaugeMetricFamily("dicomnode_spool_min_free_bytes", "The free-space floor ([storage] min_free_bytes).")
        floor.add_metric([], spool.min_free_bytes)
        below = GaugeMetricFamily("dicomnode_disk_below_floor", "1 while the spool is below its free-space "
                                  "floor: C-STORE answers 0xA700 and workers pause.")
        below.add_metric([], 0 if spool.has_room() else 1)
        return [free_metric, floor, below]

    def _from_database(self) -> list[Metric]:
        with self.database.session() as session:
            instances = session.scalar(select(func.count()).select_from(Instance))
            refused = session.scalar(select(func.count()).select_from(Quarantine))
            studies = dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            waiting = dict(session.execute(
                select(Job.waiting_for, func.count()).where(Job.state == JobState.QUEUED, Job.waiting_for.is_not(None))
                .group_by(Job.waiting_for)).all())
            losses = session.scalar(select(func.coalesce(func.sum(Job.worker_losses), 0)))
            exports = session.execute(
                select(Export.destination, Export.state, func.count()).group_by(Export.destination, Export.state)
            ).all()
            failing = session.execute(
                select(Export.destination, Export.last_status, func.count())
                .where(or_(and_(Export.state == ExportState.PENDING, Export.attempts > 0),
                           Export.state == ExportState.REFUSED))
                .group_by(Export.destination, Export.last_status)).all()
            attempts = dict(session.execute(
                select(Export.destination, func.count()).join(ExportAttempt).group_by(Export.destination)
            ).all())
            duration = _histogram(session, seconds_between(Job.started_at, Job.finished_at),
                                  Job.started_at.is_not(None) & Job.finished_at.is_not(None))
            wait = _histogram(session, seconds_between(Job.created_at, Job.started_at), Job.started_at.is_not(None))

        received = CounterMetricFamily("dicomnode_instances_received",
                                       "SOP instance versions received and stored (C-STORE 0x0000).")
        received.add_metric([], instances or 0)
        refused_metric = CounterMetricFamily("dicomnode_instances_refused",
                                             "C-STORE requests refused (quarantined) with a non-success status.")
        refused_metric.add_metric([], refused or 0)
        study_metric = GaugeMetricFamily("dicomnode_studies", "Studies by state.", labels=["state"])
        for state in StudyState:
            study_metric.add_metric([state.value], studies.get(state, 0))
        job_metric = GaugeMetricFamily("dicomnode_jobs", "Processing jobs by state.", labels=["state"])
        for state in JobState:
            job_metric.add_metric([state.value], jobs.get(state, 0))
        depth = GaugeMetricFamily("dicomnode_queue_depth", "Jobs queued and not yet claimed by a worker.")
        depth.add_metric([], jobs.get(JobState.QUEUED, 0))
        waiting_metric = GaugeMetricFamily("dicomnode_jobs_waiting", "Jobs given back until the disk or the "
                                           "database is available again.", labels=["reason"])
        for reason in WAITING_REASONS:
            waiting_metric.add_metric([reason], waiting.get(reason, 0))
        losses_metric = CounterMetricFamily("dicomnode_job_worker_losses", "Job leases that ran out because the "
                                            "worker died (not counted as attempts).")
        losses_metric.add_metric([], int(losses or 0))

        export_metric = GaugeMetricFamily("dicomnode_exports", "Result exports (outbox rows) by destination "
                                          "and state.", labels=["destination", "state"])
        delivered: dict[str, int] = {}
        by_destination: dict[str, dict[ExportState, int]] = {}
        for destination, state, count in exports:
            by_destination.setdefault(destination, {})[state] = count
        for destination, states in sorted(by_destination.items()):
            delivered[destination] = states.get(ExportState.DELIVERED, 0)
            for state in ExportState:
                export_metric.add_metric([destination, state.value], states.get(state, 0))
        attempt_metric = CounterMetricFamily("dicomnode_export_attempts", "C-STORE attempts of result "
                                             "exports.", labels=["destination"])
        failed_metric = CounterMetricFamily("dicomnode_export_failed_attempts", "C-STORE attempts of result "
                                            "exports that did not deliver.", labels=["destination"])
        for destination in sorted(set(attempts) | set(delivered)):
            tried = attempts.get(destination, 0)
            attempt_metric.add_metric([destination], tried)
            failed_metric.add_metric([destination], max(tried - delivered.get(destination, 0), 0))

        failing_metric = GaugeMetricFamily("dicomnode_export_failing", "Exports waiting after a failed attempt "
                                           "or refused, by destination and cause (the last answer: TLS "
                                           "certificate, connection refused, timeout, a status, …).",
                                           labels=["destination", "cause"])
        for destination, cause, count in failing:
            failing_metric.add_metric([destination, cause or "unknown"], count)

        duration_metric = HistogramMetricFamily("dicomnode_job_duration_seconds",
                                                "Seconds from a worker claiming a job to its end (done or failed).")
        duration_metric.add_metric([], *duration)
        wait_metric = HistogramMetricFamily("dicomnode_job_wait_seconds",
                                            "Seconds a job waited in the queue before a worker claimed it.")
        wait_metric.add_metric([], *wait)
        return [received, refused_metric, study_metric, job_metric, depth, waiting_metric, losses_metric,
                export_metric, attempt_metric, failed_metric, failing_metric, duration_metric, wait_metric]


def _histogram(session: Any, seconds: ColumnElement, where: ColumnElement) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts (with ``+Inf``) and the sum of ``seconds`` over rows ``where`` holds."""
    columns = [func.count(), func.coalesce(func.sum(seconds), 0.0)]
    columns += [func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in DURATION_BUCKETS]
    count, total, *cumulative = session.execute(select(*columns).select_from(Job).where(where)).one()
    buckets = [(repr(bound), int(n)) for bound, n in zip(DURATION_BUCKETS, cumulative)] + [("+Inf", int(count))]
    return buckets, float(total)


class MonitoringServer:
    """``/healthz`` and ``/metrics`` on ``host:port`` (port 0: any free port), in a background thread."""

    def __init__(self, database: Database, host: str, port: int, parts: Parts = dict,
                 spool: Spool | None = None) -> None:
        self.database = database
        self.parts = parts
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeMetrics(database, spool))
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MonitoringServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http:{self.port}", daemon=True)
        self._thread.start()
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self._server.server_address[0],
                 self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, report): the database answers and every part of this process is alive."""
        checks: dict[str, str] = {}
        try:
            with self.database.session() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        for name, alive in sorted(self.parts().items()):
            checks[name] = "ok" if alive else "stopped"
        healthy = all(value == "ok" for value in checks.values())
        return healthy, {"status": "ok" if healthy else "unhealthy", "version": __version__, "checks": checks}

    def metrics(self) -> bytes:
        return generate_latest(self.registry)


def _handler(server: MonitoringServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"dicomnode/{__version__}"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                healthy, report = server.health()
                self._reply(200 if healthy else 503, "application/json", json.dumps(report).encode())
            elif path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, server.metrics())
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            log.debug("http %s %s", self.address_string(), format % args)

    return Handler


def start_monitoring(database: Database, host: str, port: int, parts: Parts = dict,
                     spool: Spool | None = None) -> MonitoringServer:
    """Create and start a :class:`MonitoringServer` (raises ``OSError`` if the port is taken)."""
    return MonitoringServer(database, host, port, parts, spool).start()

