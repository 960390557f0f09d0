"""Retention: a delivered study's files leave the spool; its index rows stay (docs/architecture.md, "Retention").

A study is *settled* when it is PROCESSED, no job of it is queued or running, and every result
object of it that still has a file has at least one export row and all of them DELIVERED (a study
with no result objects, every acquisition not processable, is settled when processed). Its files
(received instances and results) are deleted ``[retention] delete_after_hours`` after it settled
(the later of ``processed_at`` and the last ``delivered_at``), oldest first; earlier, still oldest
first and still only settled studies, while the spool's free space is under
``min_free_bytes + early_free_bytes``. Nothing that is not delivered is ever deleted: a study whose
export was refused, a FAILED study, results with no destination configured, and everything still
receiving or queued keep their files. With ``[retention] keep_labelled`` (the default) a study the
site has labelled keeps its files too, even when space is short: a positive or negative
:class:`~dicomnode.store.models.SiteLabel` (a physician's correction, the training data of
``dicomnode learn``, which reads the images and the correction from the spool), or a stored SEG, SR
or Key Object Selection that the corrections pass has not examined yet (it may be one). Refused
instances (quarantine) are deleted the same period after they arrived.

Crash safety (the order is the point): deleting a study is two transactions.

1. *mark*: one write transaction re-checks that the study is still settled at the same version and
   sets ``purged_at`` on the study, its instances and its results, and ``study.purge_pending``. From
   this commit on, the index no longer counts the files as present (the worker reads only instances
   with ``purged_at`` NULL).
2. *delete*: one write transaction locks the study's rows still marked, unlinks their files
   (missing ones are fine: idempotent) and clears ``purge_pending``.

A kill between or during these leaves rows marked and some files still there, never a row counted
as present whose file is gone; every purge begins by finishing pending studies (:func:`purge`). The
delete transaction holds the write lock (SQLite) or the rows' locks (PostgreSQL) while it unlinks,
so a receiver bringing the same bytes back (:mod:`dicomnode.store.ingest` un-marks the row in its own
transaction) sees either the file still there (and the delete then skips the un-marked row) or gone
(and answers 0xA700, so the sender sends it again and the file is written anew).

A study that arrives again after its files were deleted is processed as new: new content re-opens it
as any new content does (a new version), the same bytes again un-mark their instance and re-open it
too, and the worker ignores acquisition outcomes from before the purge (``Study.purged_at``).

API::

    plan = survey(database, spool_root, settings, min_free_bytes)   # what would go, and when
    report = purge(database, spool, settings, dry_run=True)           # ``dicomnode purge`` (dry run)
    report = purge(database, spool, settings, dry_run=False)          # ``serve`` every interval
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, exists, func, select, update

from dicomnode.config import RetentionSection
from dicomnode.dicom.sop import CORRECTION_KINDS
from dicomnode.store.db import Database
from dicomnode.store.models import (
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    LabelKind,
    Quarantine,
    ResultObject,
    SiteLabel,
    Study,
    StudyState,
    as_utc,
    utcnow,
)
from dicomnode.store.spool import Spool, free_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettledStudy:
    """A settled study with files in the spool."""

    study_id: int
    study_uid: str
    version: int
    settled_at: datetime
    bytes: int  # its instances' and results' sizes still in the spool


@dataclass
class Plan:
    """What retention sees now (``dicomnode status``, ``dicomnode purge``)."""

    spool_bytes: int  # instances, results and quarantine still in the spool (by the index)
    due: list[SettledStudy]  # settled longer than the period: deleted at the next purge
    later: list[SettledStudy]  # settled, not yet old enough
    held_studies: int  # studies with files that are not settled (not delivered, failed, in work)
    early: bool  # free space under floor + early_free_bytes: settled studies go oldest first now
    quarantine_due: list[int] = field(default_factory=list)  # quarantine row ids
    labelled: list[SettledStudy] = field(default_factory=list)  # settled, kept for learning (``keep_labelled``)

    @property
    def next_at(self) -> datetime | None:
        return self.later[0].settled_at if self.later else None

    def as_dict(self, settings: RetentionSection) -> dict[str, object]:
        hours = timedelta(hours=settings.delete_after_hours)
        return {
            "enabled": settings.enabled, "delete_after_hours": settings.delete_after_hours,
            "spool_bytes": self.spool_bytes,
            "due_studies": len(self.due), "due_bytes": sum(c.bytes for c in self.due),
            "later_studies": len(self.later), "later_bytes": sum(c.bytes for c in self.later),
            "next_purge_at": (self.later[0].settled_at + hours).isoformat(timespec="seconds") if self.later else None,
            "held_studies": self.held_studies, "early": self.early, "quarantine_due": len(self.quarantine_due),
            "labelled_studies": len(self.labelled), "labelled_bytes": sum(c.bytes for c in self.labelled),
        }


def _settled_studies(session) -> list[tuple[int, str, int, datetime | None, datetime | None, int, int, bool]]:
    """(id, uid, version, processed_at, last delivered_at, instance bytes, result bytes, labelled) of
    settled studies that still have files; ``labelled``: the site labelled it, or a correction of it
    waits for the corrections pass (the module docstring)."""
    job_of_study = Job.study_id == Study.id
    live_result = and_(ResultObject.job_id == Job.id, job_of_study, ResultObject.purged_at.is_(None))
    undelivered = exists().where(live_result, Export.result_id == ResultObject.id,
                                 Export.state != ExportState.DELIVERED)
    unexported = exists().where(live_result, ~exists().where(Export.result_id == ResultObject.id))
    working = exists().where(job_of_study, Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
    instance_bytes = (select(func.coalesce(func.sum(Instance.size), 0))
                      .where(Instance.study_id == Study.id, Instance.purged_at.is_(None)).scalar_subquery())
    result_bytes = (select(func.coalesce(func.sum(ResultObject.size), 0)).join(Job)
                    .where(job_of_study, ResultObject.purged_at.is_(None)).scalar_subquery())
    delivered = (select(func.max(Export.delivered_at)).join(ResultObject).join(Job)
                 .where(job_of_study).scalar_subquery())
    has_files = (exists().where(Instance.study_id == Study.id, Instance.purged_at.is_(None))
                 | exists().where(live_result))
    labelled = (exists().where(SiteLabel.study_id == Study.id,
                               SiteLabel.kind.in_([LabelKind.POSITIVE, LabelKind.NEGATIVE]))
                | exists().where(Instance.study_id == Study.id, Instance.kind.in_(CORRECTION_KINDS),
                                 Instance.purged_at.is_(None), Instance.superseded.is_(False),
                                 Instance.id.not_in(select(SiteLabel.instance_id))))
    rows = session.execute(
        select(Study.id, Study.study_instance_uid, Study.version, Study.processed_at, delivered,
               instance_bytes, result_bytes, labelled)
        .where(Study.state == StudyState.PROCESSED, Study.purge_pending.is_(False), has_files,
               ~undelivered, ~unexported, ~working)
    ).all()
    return [tuple(row) for row in rows]


def _held_studies(session) -> int:
    """Studies with files in the spool that are not settled."""
    return int(session.scalar(
        select(func.count(func.distinct(Instance.study_id))).where(Instance.purged_at.is_(None))) or 0)


def survey(database: Database, spool_root: Path, settings: RetentionSection, min_free_bytes: int,
           now: datetime | None = None) -> Plan:
    """What retention would delete now and later (reads only)."""
    now = now or utcnow()
    period = timedelta(hours=settings.delete_after_hours)
    with database.session() as session:
        settled, labelled = [], []
        for study_id, uid, version, processed, delivered, inst, res, site_labelled in _settled_studies(session):
            times = [t for t in (processed, delivered) if t is not None]
            settled_at = as_utc(max(times)) if times else now
            study = SettledStudy(study_id, uid, version, settled_at, int(inst) + int(res))
            (labelled if site_labelled and settings.keep_labelled else settled).append(study)
        with_files = _held_studies(session)
        spool_bytes = int(session.scalar(select(func.coalesce(func.sum(Instance.size), 0))
                                         .where(Instance.purged_at.is_(None))) or 0)
        spool_bytes += int(session.scalar(select(func.coalesce(func.sum(ResultObject.size), 0))
                                          .where(ResultObject.purged_at.is_(None))) or 0)
        quarantine_due = list(session.scalars(
            select(Quarantine.id).where(Quarantine.purged_at.is_(None), Quarantine.path.is_not(None),
                                        Quarantine.received_at <= now - period)))
    settled.sort(key=lambda c: c.settled_at)
    try:
        early = free_bytes(spool_root) < min_free_bytes + settings.early_free_bytes
    except OSError:
        early = False
    due = [c for c in settled if early or c.settled_at <= now - period]
    later = [c for c in settled if c not in due]
    return Plan(spool_bytes, due, later, max(with_files - len(settled) - len(labelled), 0), early, quarantine_due,
                labelled)


@dataclass
class PurgeReport:
    plan: Plan
    dry_run: bool
    studies: int = 0  # deleted (or that would be)
    bytes: int = 0
    finished: int = 0  # pending deletions of an interrupted purge completed
    quarantined: int = 0


def purge(database: Database, spool: Spool, settings: RetentionSection, *, dry_run: bool = True,
          now: datetime | None = None, stop_early: bool = True) -> PurgeReport:
    """Delete what :func:`survey` finds due (see the module docstring); ``dry_run`` only reports.

    With early deletion (free space short) studies go oldest first until the free space is back
    above the floor plus ``early_free_bytes`` (``stop_early``), not all of them.
    """
    now = now or utcnow()
    plan = survey(database, spool.root, settings, spool.min_free_bytes, now)
    report = PurgeReport(plan, dry_run)
    if dry_run:
        report.studies, report.bytes = len(plan.due), sum(c.bytes for c in plan.due)
        report.quarantined = len(plan.quarantine_due)
        return report
    report.finished = finish_pending(database, spool)
    period_end = now - timedelta(hours=settings.delete_after_hours)
    for candidate in plan.due:
        if (stop_early and plan.early and candidate.settled_at > period_end
                and spool.free_bytes() >= spool.min_free_bytes + settings.early_free_bytes):
            break
        if _mark(database, spool, candidate, now, settings.keep_labelled):
            _delete(database, spool, candidate.study_id)
            report.studies += 1
            report.bytes += candidate.bytes
            log.info("retention deleted the files of study %s", candidate.study_uid,
                     extra={"study_uid": candidate.study_uid, "bytes": candidate.bytes})
    report.quarantined = _purge_quarantine(database, spool, plan.quarantine_due, now)
    return report


def _mark(database: Database, spool: Spool, candidate: SettledStudy, now: datetime, keep_labelled: bool) -> bool:
    """Step 1: mark the study's rows deleted, if it is still settled at the same version (and, with
    ``keep_labelled``, still unlabelled: a correction may have come since the survey)."""
    with database.session(write=True) as session:
        still = any(row[0] == candidate.study_id and not (row[7] and keep_labelled)
                    for row in _settled_studies(session))
        marked = still and session.execute(
            update(Study).where(Study.id == candidate.study_id, Study.version == candidate.version,
                                Study.state == StudyState.PROCESSED, Study.purge_pending.is_(False))
            .values(purged_at=now, purge_pending=True).execution_options(synchronize_session=False)
        ).rowcount == 1
        if not marked:
            return False
        session.execute(update(Instance).where(Instance.study_id == candidate.study_id, Instance.purged_at.is_(None))
                        .values(purged_at=now).execution_options(synchronize_session=False))
        results = session.execute(
            select(ResultObject).join(Job).where(Job.study_id == candidate.study_id, ResultObject.purged_at.is_(None))
        ).scalars().all()
        for result in results:
            if result.size is None:  # rows of older versions: the size from the file, kept in the index
                try:
                    result.size = spool.absolute(result.path).stat().st_size
                except OSError:
                    result.size = 0
            result.purged_at = now
    return True


def _delete(database: Database, spool: Spool, study_id: int) -> None:
    """Step 2: unlink the marked rows' files under their locks, then clear ``purge_pending``."""
    with database.session(write=True) as session:
        if session.scalar(select(Study.purge_pending).where(Study.id == study_id).with_for_update()) is not True:
            return
        paths = list(session.scalars(select(Instance.path).where(
            Instance.study_id == study_id, Instance.purged_at.is_not(None)).with_for_update()))
        paths += session.scalars(select(ResultObject.path).join(Job).where(
            Job.study_id == study_id, ResultObject.purged_at.is_not(None)).with_for_update(of=ResultObject))
        live = set(session.scalars(select(Instance.path).where(Instance.study_id == study_id,
                                                               Instance.purged_at.is_(None))))
        for path in paths:
            if path not in live:  # a re-sent instance shares its name with the purged row
                _unlink(spool, path)
        session.execute(update(Study).where(Study.id == study_id).values(purge_pending=False)
                        .execution_options(synchronize_session=False))
    _remove_empty_directories(spool, paths)


def finish_pending(database: Database, spool: Spool) -> int:
    """Complete deletions that an interrupted purge marked; return how many studies."""
    with database.session() as session:
        pending = list(session.scalars(select(Study.id).where(Study.purge_pending.is_(True))))
        quarantine = list(session.scalars(select(Quarantine.id).where(Quarantine.purge_pending.is_(True))))
    for study_id in pending:
        _delete(database, spool, study_id)
    _delete_quarantine(database, spool, quarantine)
    if pending:
        log.info("retention finished %d interrupted deletion(s)", len(pending))
    return len(pending)


def _purge_quarantine(database: Database, spool: Spool, ids: list[int], now: datetime) -> int:
    if not ids:
        return 0
    with database.session(write=True) as session:
        session.execute(update(Quarantine).where(Quarantine.id.in_(ids), Quarantine.purged_at.is_(None))
                        .values(purged_at=now, purge_pending=True).execution_options(synchronize_session=False))
    _delete_quarantine(database, spool, ids)
    return len(ids)


def _delete_quarantine(database: Database, spool: Spool, ids: list[int]) -> None:
    if not ids:
        return
    with database.session(write=True) as session:
        for path in session.scalars(select(Quarantine.path).where(Quarantine.id.in_(ids),
                                                                  Quarantine.purge_pending.is_(True))):
            if path:
                _unlink(spool, path)
                _unlink(spool, path.removesuffix(".dcm") + ".json")
        session.execute(update(Quarantine).where(Quarantine.id.in_(ids)).values(purge_pending=False)
                        .execution_options(synchronize_session=False))


def _unlink(spool: Spool, relative: str) -> None:
    try:
        spool.absolute(relative).unlink(missing_ok=True)
    except OSError as exc:  # a file that cannot be removed stays; its row says deleted: log it
        log.warning("retention could not delete %s: %s", relative, exc.strerror or exc)


def _remove_empty_directories(spool: Spool, paths: list[str]) -> None:
    """Remove the series and study folders the deletion left empty (a folder still used is kept)."""
    folders = {spool.absolute(path).parent for path in paths}
    for folder in sorted(folders | {f.parent for f in folders}, key=lambda f: len(f.parts), reverse=True):
        if folder.parent.parent == spool.root or folder.parent.parent.parent == spool.root:
            try:
                os.rmdir(folder)
            except OSError:
                pass
            spool.forget_directory(folder)

