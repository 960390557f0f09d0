"""What the node is doing: studies, jobs and exports by state, and what needs a person.

Part of docs/architecture.md, "Operations".

:func:`collect` reads the database (nothing else: it works against a node that is down, and from any
host sharing the database) and returns a plain dict, printed as JSON by ``dicomnode status --json``
and as text by :func:`render`. "Needs attention" means:

- *stuck*: a RUNNING job or a SENDING export whose lease has expired (its worker or exporter died;
  the next one to look will reclaim it), a study still RECEIVING well after its last instance
  (assembly is not running), a READY study with no job for its current version;
- *failed jobs* with their error; *refused* and *failed exports* with the destination's last answer;
- (shown, not needing attention) what was received by kind (whole-body, static, tomo, recon-tomo, ct,
  secondary-capture, seg, sr, dose-report, ...: whole-body acquisitions and RECON TOMO volumes with
  their CT are processed, the rest is stored), acquisitions processed and not processable, and the
  latest "not processable" reasons; what the receiver refused (instances, by the status answered, and
  presentation contexts, with the latest refused SOP classes);
- destinations in back-off (pending exports that failed at least once), with the last status they
  gave and since when; shown always, and needing attention once the first failed attempt is older
  than :data:`ATTENTION_AFTER_SECONDS`;
- *disk pressure*: the spool's filesystem below ``[storage] min_free_bytes`` (read with ``statvfs``
  on the configured spool folder, so on the host that runs the command): the receiver answers
  0xA700 and workers pause until space returns. Jobs given back for want of disk space or database
  (``job.waiting_for``) are listed always, and need attention only with the disk below its floor
  (a database that is down cannot be read here at all);
- *labels* (shown): stored corrections examined by :mod:`dicomnode.learn.corrections` by kind
  (positive, negative, ignored) and registered models by state;
- *retention* (shown): the spool's use by the index, what :mod:`dicomnode.store.retention` deletes
  at its next pass and from when the next studies fall due, and how many studies keep their files
  because they are not delivered yet.

No patient names or IDs are shown: studies are named by Study Instance UID.

:func:`retry` is ``dicomnode retry``: failed jobs back to QUEUED (attempts reset, last error kept),
refused / failed exports back to PENDING and due now; optionally pending exports that are waiting
for their back-off are made due now too (after a PACS came back). It writes no state itself: the
queue and the exporter own their state machines, and their transitions do it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, select

from dicomnode.config import RetentionSection
from dicomnode.pipeline.export import reopen
from dicomnode.pipeline.queue import requeue_failed
from dicomnode.store.db import Database
from dicomnode.store.ingest import CONTEXT_REFUSED
from dicomnode.store.retention import survey
from dicomnode.store.spool import free_bytes
from dicomnode.store.models import (
    AcquisitionOutcome,
    AcquisitionState,
    Export,
    ExportAttempt,
    ExportState,
    Instance,
    Job,
    JobState,
    Quarantine,
    RegisteredModel,
    ResultObject,
    SiteLabel,
    Study,
    StudyState,
    as_utc,
    utcnow,
)

LIST_LIMIT = 50  # items listed per "needs attention" section; counts are always complete


#: A destination that has refused or not answered for this long needs a person (30 min: longer than
#: a PACS restart, shorter than a maintenance window nobody announced).
ATTENTION_AFTER_SECONDS = 30 * 60

def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat(timespec="seconds") if value is not None else None


def _counts(session, column, states: Iterable) -> dict[str, int]:
    found = dict(session.execute(select(column, func.count()).group_by(column)).all())
    return {state.value: int(found.get(state, 0)) for state in states}


def disk(spool_root: Path, min_free_bytes: int) -> dict[str, Any]:
    """The spool's filesystem against its floor: ``below_floor`` is what makes the receiver answer
    0xA700 and workers pause (:meth:`dicomnode.store.spool.Spool.has_room`). A spool folder that does
    not exist (yet) is reported with ``free_bytes`` None."""
    try:
        free: int | None = free_bytes(spool_root)
    except OSError:
        free = None
    return {"spool": str(spool_root), "free_bytes": free, "min_free_bytes": min_free_bytes,
            "below_floor": free is not None and free < min_free_bytes}


def collect(database: Database, *, quiet_seconds: float = 10.0, now: datetime | None = None,
            attention_after_seconds: float = ATTENTION_AFTER_SECONDS, spool_root: Path | None = None,
            min_free_bytes: int = 0, retention: RetentionSection | None = None) -> dict[str, Any]:
    """The status report as a JSON-ready dict (see the module docstring). A destination whose
    exports have been failing and backing off for ``attention_after_seconds`` (since the first
    failed attempt of a still-pending export) needs attention. With ``spool_root`` the report has
    the disk against ``min_free_bytes`` (:func:`disk`)."""
    now = now or utcnow()
    with database.session() as session:
        report: dict[str, Any] = {
            "generated_at": _iso(now),
            "studies": _counts(session, Study.state, StudyState),
            "jobs": _counts(session, Job.state, JobState),
            "exports": _counts(session, Export.state, ExportState),
            "instances": {kind: int(count) for kind, count in session.execute(
                select(Instance.kind, func.count()).where(Instance.superseded.is_(False))
                .group_by(Instance.kind).order_by(Instance.kind)).all()},
            "acquisitions": {state.value: int(count) for state, count in session.execute(
                select(AcquisitionOutcome.state, func.count()).group_by(AcquisitionOutcome.state)).all()},
            # -- the site's labels and models (dicomnode.learn) --
            "labels": {kind.value: int(count) for kind, count in session.execute(
                select(SiteLabel.kind, func.count()).group_by(SiteLabel.kind).order_by(SiteLabel.kind)).all()},
            "models": {state.value: int(count) for state, count in session.execute(
                select(RegisteredModel.state, func.count()).group_by(RegisteredModel.state)).all()},
        }
        refused = dict(session.execute(select(Quarantine.status, func.count()).group_by(Quarantine.status)).all())
        contexts = int(refused.pop(CONTEXT_REFUSED, 0))
        report["refused"] = {"instances": {status: int(count) for status, count in sorted(refused.items())},
                             "presentation_contexts": contexts}
        report["refused_contexts"] = [
            {"calling_ae": row.calling_ae, "reason": row.reason, "at": _iso(row.received_at)}
            for row in session.scalars(select(Quarantine).where(Quarantine.status == CONTEXT_REFUSED)
                                       .order_by(Quarantine.id.desc()).limit(LIST_LIMIT)).all()
        ]
        report["not_processable"] = [
            {"study_uid": uid, "job": outcome.job_id, "acquisition": outcome.label, "reason": outcome.reason}
            for outcome, uid in session.execute(
                select(AcquisitionOutcome, Study.study_instance_uid).join(Study)
                .where(AcquisitionOutcome.state == AcquisitionState.NOT_PROCESSABLE)
                .order_by(AcquisitionOutcome.id.desc()).limit(LIST_LIMIT)
            ).all()
        ]
        per_destination = session.execute(
            select(Export.destination, Export.state, func.count()).group_by(Export.destination, Export.state)
        ).all()
        destinations: dict[str, dict[str, int]] = {}
        for name, state, count in per_destination:
            destinations.setdefault(name, {s.value: 0 for s in ExportState})[state.value] = int(count)
        report["destinations"] = destinations
        report["stuck"] = _stuck(session, now, quiet_seconds)
        report["failed_jobs"] = [
            {"job": job.id, "study_uid": uid, "version": job.study_version, "attempts": job.attempts,
             "error": job.error, "finished_at": _iso(job.finished_at)}
            for job, uid in session.execute(
                select(Job, Study.study_instance_uid).join(Study)
                .where(Job.state == JobState.FAILED).order_by(Job.id.desc()).limit(LIST_LIMIT)
            ).all()
        ]
        report["waiting_jobs"] = [
            {"job": job.id, "study_uid": uid, "waiting_for": job.waiting_for, "error": job.error,
             "next_try_at": _iso(job.lease_expires_at), "worker_losses": job.worker_losses}
            for job, uid in session.execute(
                select(Job, Study.study_instance_uid).join(Study)
                .where(Job.state == JobState.QUEUED, Job.waiting_for.is_not(None)).order_by(Job.id).limit(LIST_LIMIT)
            ).all()
        ]
        report["refused_exports"] = _exports(session, ExportState.REFUSED)
        report["failed_exports"] = _exports(session, ExportState.FAILED)
        report["backing_off"] = [
            {"destination": name, "pending": int(count), "next_attempt_at": _iso(next_at),
             **_last_answer(session, name), "since": _iso(since),
             "needs_attention": as_utc(since) is not None and now - as_utc(since) >= timedelta(seconds=attention_after_seconds)}
            for name, count, next_at, since in session.execute(
                select(Export.destination, func.count(func.distinct(Export.id)), func.min(Export.next_attempt_at),
                       func.min(ExportAttempt.at))
                .outerjoin(ExportAttempt, ExportAttempt.export_id == Export.id)
                .where(Export.state == ExportState.PENDING, Export.attempts > 0)
                .group_by(Export.destination).order_by(Export.destination)
            ).all()
        ]
    report["attention_after_seconds"] = attention_after_seconds
    report["disk"] = disk(spool_root, min_free_bytes) if spool_root is not None else None
    report["retention"] = (survey(database, spool_root, retention, min_free_bytes, now).as_dict(retention)
                           if retention is not None and spool_root is not None else None)
    report["needs_attention"] = needs_attention(report)
    return report


def _stuck(session, now: datetime, quiet_seconds: float) -> dict[str, list[dict[str, Any]]]:
    expired_jobs = session.execute(
        select(Job, Study.study_instance_uid).join(Study)
        .where(Job.state == JobState.RUNNING, Job.lease_expires_at < now).limit(LIST_LIMIT)
    ).all()
    expired_exports = session.execute(
        select(Export.id, Export.destination, Export.lease_owner, Export.lease_expires_at)
        .where(Export.state == ExportState.SENDING, Export.lease_expires_at < now).limit(LIST_LIMIT)
    ).all()
    # Twice the quiet period and a minute of slack: assembly should have acted long before.
    overdue = now - timedelta(seconds=2 * quiet_seconds + 60)
    waiting = session.execute(
        select(Study.study_instance_uid, Study.last_instance_at)
        .where(Study.state == StudyState.RECEIVING, Study.last_instance_at < overdue).limit(LIST_LIMIT)
    ).all()
    jobless = session.execute(
        select(Study.study_instance_uid, Study.version)
        .outerjoin(Job, and_(Job.study_id == Study.id, Job.study_version == Study.version))
        .where(Study.state == StudyState.READY, Job.id.is_(None)).limit(LIST_LIMIT)
    ).all()
    return {
        "jobs_with_expired_lease": [
            {"job": job.id, "study_uid": uid, "owner": job.lease_owner, "attempts": job.attempts,
             "lease_expired_at": _iso(job.lease_expires_at)} for job, uid in expired_jobs
        ],
        "exports_with_expired_lease": [
            {"export": row.id, "destination": row.destination, "owner": row.lease_owner,
             "lease_expired_at": _iso(row.lease_expires_at)} for row in expired_exports
        ],
        "studies_not_assembled": [
            {"study_uid": uid, "last_instance_at": _iso(last)} for uid, last in waiting
        ],
        "ready_studies_without_job": [{"study_uid": uid, "version": version} for uid, version in jobless],
    }


def _exports(session, state: ExportState) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Export, ResultObject.kind, ResultObject.sop_instance_uid, Study.study_instance_uid)
        .join(ResultObject, Export.result_id == ResultObject.id).join(Job, ResultObject.job_id == Job.id)
        .join(Study, Job.study_id == Study.id)
        .where(Export.state == state).order_by(Export.id.desc()).limit(LIST_LIMIT)
    ).all()
    return [
        {"export": export.id, "destination": export.destination, "kind": kind.value,
         "sop_instance_uid": sop_uid, "study_uid": study_uid, "attempts": export.attempts,
         "last_status": export.last_status, "last_error": export.last_error}
        for export, kind, sop_uid, study_uid in rows
    ]


def _last_answer(session, destination: str) -> dict[str, str | None]:
    """The latest failed attempt's cause class (``last_status``: TLS certificate, connection refused, …,
    :data:`dicomnode.dicom.scu.CAUSES`, or a status) and its particulars (``last_error``)."""
    row = session.execute(
        select(Export.last_status, Export.last_error).where(Export.destination == destination, Export.attempts > 0,
                                                            Export.state == ExportState.PENDING)
        .order_by(Export.next_attempt_at.desc()).limit(1)
    ).first()
    return {"last_status": row[0] if row else None, "last_error": row[1] if row else None}


def needs_attention(report: dict[str, Any]) -> bool:
    """Whether anything in ``report`` needs a person (stuck, failed or refused items, a destination
    backing off for longer than the report's threshold, the disk below its floor)."""
    return bool(any(report["stuck"].values()) or report["failed_jobs"] or report["refused_exports"]
                or report["failed_exports"] or any(item["needs_attention"] for item in report["backing_off"])
                or (report.get("disk") or {}).get("below_floor"))


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [f"dicomnode status at {report['generated_at']}"]
    for section in ("studies", "jobs", "exports"):
        counts = "  ".join(f"{state} {count}" for state, count in report[section].items())
        lines.append(f"{section:<9} {counts}")
    if report["instances"]:
        lines.append("instances " + "  ".join(f"{kind} {count}" for kind, count in report["instances"].items())
                     + "  (processed: whole-body acquisitions, RECON TOMO volumes with their CT; the rest is stored)")
    refused = report["refused"]
    if refused["instances"] or refused["presentation_contexts"]:
        lines.append("refused   " + "  ".join(f"{status} {count}" for status, count in refused["instances"].items())
                     + f"  presentation contexts {refused['presentation_contexts']}")
    for item in report["refused_contexts"]:
        lines.append(f"refused context from {item['calling_ae']} at {item['at']}: {item['reason']}")
    if report["labels"] or report["models"]:  # dicomnode.learn: corrections examined, registered models
        lines.append("labels    " + ("  ".join(f"{k} {n}" for k, n in report["labels"].items()) or "none")
                     + "   models " + ("  ".join(f"{k} {n}" for k, n in report["models"].items()) or "none"))
    if report["acquisitions"]:
        lines.append("acquisitions " + "  ".join(f"{state} {count}" for state, count in report["acquisitions"].items()))
    for item in report["not_processable"]:
        lines.append(f"not processable: study {item['study_uid']}, {item['acquisition']}: {item['reason']}")
    for name, counts in sorted(report["destinations"].items()):
        lines.append(f"  to {name}: " + "  ".join(f"{s} {n}" for s, n in counts.items() if n))
    space = report.get("disk")
    if space is not None and space["free_bytes"] is not None:
        lines.append(f"disk      {size_text(space['free_bytes'])} free for the spool {space['spool']} "
                     f"(floor {size_text(space['min_free_bytes'])})"
                     + (": BELOW THE FLOOR: C-STORE answers 0xA700 and workers pause until space returns"
                        if space["below_floor"] else ""))
    kept = report.get("retention")
    if kept is not None:
        lines.append(render_retention(kept))
    for item in report["waiting_jobs"]:
        lines.append(f"job {item['job']} (study {item['study_uid']}) waits for {item['waiting_for']} "
                     f"(next try {item['next_try_at']}): {item['error']}")
    for item in report["backing_off"]:
        lines.append(f"backing off: {item['destination']}: {item['pending']} pending since {item['since']}, next "
                     f"attempt {item['next_attempt_at']}, last answer {item['last_status']}"
                     + (f" ({item['last_error']})" if item.get("last_error") else "")
                     + (" (needs attention: is the destination down?)" if item["needs_attention"] else ""))
    stuck = report["stuck"]
    for item in stuck["jobs_with_expired_lease"]:
        lines.append(f"stuck job {item['job']} (study {item['study_uid']}): lease of {item['owner']} "
                     f"expired {item['lease_expired_at']}; it will be reclaimed")
    for item in stuck["exports_with_expired_lease"]:
        lines.append(f"stuck export {item['export']} to {item['destination']}: lease expired "
                     f"{item['lease_expired_at']}; it will be reclaimed")
    for item in stuck["studies_not_assembled"]:
        lines.append(f"study {item['study_uid']} still receiving since {item['last_instance_at']} "
                     "(is the node's assembly running?)")
    for item in stuck["ready_studies_without_job"]:
        lines.append(f"study {item['study_uid']} ready without a job for version {item['version']}")
    for item in report["failed_jobs"]:
        lines.append(f"failed job {item['job']} (study {item['study_uid']} v{item['version']}, "
                     f"{item['attempts']} attempt(s)): {item['error']}")
    for title, key in (("refused", "refused_exports"), ("failed", "failed_exports")):
        for item in report[key]:
            lines.append(f"{title} export {item['export']} ({item['kind']} {item['sop_instance_uid']}) to "
                         f"{item['destination']}: {item['last_status']} {item['last_error'] or ''}".rstrip())
    if not needs_attention(report):
        minutes = report["attention_after_seconds"] / 60
        lines.append(f"nothing needs attention yet (retrying for under {minutes:g} min)" if report["backing_off"]
                     else "nothing needs attention")
    return "\n".join(lines)


def render_retention(kept: dict[str, Any]) -> str:
    """One line: the spool's use by the index and what retention frees now and later."""
    if not kept["enabled"]:
        return f"spool     {size_text(kept['spool_bytes'])} of studies; retention is off ([retention] enabled = false)"
    later = (f", {kept['later_studies']} ({size_text(kept['later_bytes'])}) from {kept['next_purge_at']}"
             if kept["later_studies"] else "")
    return (f"spool     {size_text(kept['spool_bytes'])} of studies; retention ({kept['delete_after_hours']:g} h after "
            f"delivery) frees {kept['due_studies']} studies ({size_text(kept['due_bytes'])}) now{later}"
            + (" (free space short: oldest delivered first)" if kept["early"] else "")
            + f"; {kept['held_studies']} not delivered yet (kept)"
            + (f"; {kept['labelled_studies']} labelled by the site ({size_text(kept['labelled_bytes'])}, kept for learning)"
               if kept["labelled_studies"] else ""))


def size_text(count: int) -> str:
    """``1.5 GiB`` and the like."""
    if count < 1024:
        return f"{count} bytes"
    value, unit = count / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


@dataclass(frozen=True)
class RetryCounts:
    jobs: int
    exports: int


def retry(database: Database, *, jobs: bool = True, export_states: Iterable[ExportState] = (
          ExportState.REFUSED, ExportState.FAILED), waiting: bool = False, destination: str | None = None,
          study_uid: str | None = None, now: datetime | None = None) -> RetryCounts:
    """Put failed work back in line (``dicomnode retry``) through the state machines' own transitions:
    :func:`dicomnode.pipeline.queue.requeue_failed` for jobs, :func:`dicomnode.pipeline.export.reopen`
    for exports (see those for what is touched and what never is).

    ``export_states``: which terminal export states to re-open; ``waiting`` also makes pending
    exports in back-off due now. ``destination`` narrows the exports, ``study_uid`` both.
    """
    job_count = requeue_failed(database, study_uid=study_uid) if jobs else 0
    export_count = reopen(database, states=export_states, waiting=waiting, destination=destination,
                          study_uid=study_uid, now=now)
    return RetryCounts(jobs=job_count, exports=export_count)
