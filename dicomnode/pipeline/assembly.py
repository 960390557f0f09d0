"""Study assembly: decide when a study that is still receiving is ready to process.

Step "assemble" of docs/architecture.md, "The journey of a study".

A whole-body bone scan is ready the moment both views are present among its current (non-superseded)
whole-body NM instances — one two-frame instance, or one instance per view; the views of each instance are
recorded by the receiver in ``Instance.views``. A study that lacks a view is processed after a quiet
period (no new instance for ``quiet_seconds``, default 10 s) with what arrived; the results say which
view is missing. Either way the study goes READY and a job for its current version is queued in the
same transaction (:func:`dicomnode.pipeline.queue.enqueue`).

A study that changes after processing is processed again: the receiver (:mod:`dicomnode.store.ingest`)
bumps ``Study.version`` and puts the study back to RECEIVING when new content arrives; assembly then
treats it like any receiving study and queues a job for the new version (one job per version,
``uq_job_study_version``), whose results go into new series.

A study that holds a tomographic series (CT, or NM TOMO / RECON TOMO) is ready only after the quiet
period, also when both whole-body views are present: such a series is complete only when it has
been quiet for the assembly window (a SPECT/CT's CT sends hundreds of slices, and a study that went
ready between two of them was re-opened once per burst: 13 times for one real exam). An acquisition
whose inputs did not change is not processed again by the new version's job (its fingerprint,
:mod:`dicomnode.pipeline.worker`), so a late CT slice never re-runs a planar acquisition.

Only whole-body NM instances count for the views (``Instance.kind``): statics, TOMO, reconstructions, CT, screen
captures and a SEG or SR sent back by a viewer are kept with the study, not segmented. A study that
holds none of them still becomes ready after the quiet period, so that its job can record why
nothing in it is processable (:mod:`dicomnode.pipeline.worker`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from dicomnode.dicom.sop import SEGMENTED_KIND, ObjectKind
from dicomnode.pipeline.queue import enqueue
from dicomnode.store.db import Database
from dicomnode.store.models import Instance, Study, StudyState, as_utc, utcnow
from dicomnode.dicom.acquisitions import NMImageKind

log = logging.getLogger(__name__)

BOTH_VIEWS = frozenset({"anterior", "posterior"})
#: Kinds of series that arrive slice by slice (or volume by volume): complete only when quiet.
TOMOGRAPHIC_KINDS = frozenset({ObjectKind.CT.value, NMImageKind.TOMO.value, NMImageKind.GATED_TOMO.value,
                               NMImageKind.RECON_TOMO.value, NMImageKind.RECON_GATED_TOMO.value})


@dataclass(frozen=True)
class AssemblyPolicy:
    """Config ``[assembly]``."""

    quiet_seconds: float = 10.0


def views_present(session, study_id: int) -> frozenset[str]:
    """The views covered by the study's current whole-body instances (``Instance.views`` as received)."""
    recorded = session.scalars(
        select(Instance.views).where(Instance.study_id == study_id, Instance.superseded.is_(False),
                                     Instance.purged_at.is_(None),
                                     Instance.kind == SEGMENTED_KIND)
    ).all()
    return frozenset(view for value in recorded for view in value.split(",") if view)


def tomographic_present(session, study_id: int) -> bool:
    """Whether the study holds a current CT or NM tomographic instance (module docstring)."""
    return session.scalar(
        select(Instance.id).where(Instance.study_id == study_id, Instance.superseded.is_(False),
                                  Instance.kind.in_(TOMOGRAPHIC_KINDS)).limit(1)
    ) is not None


def ready_reason(views: frozenset[str], last_instance_at: datetime, now: datetime,
                 policy: AssemblyPolicy, tomographic: bool = False) -> str | None:
    """Why a receiving study is ready now, or ``None`` if it should wait for more instances.

    ``tomographic``: the study holds a CT or NM tomographic series, complete only when quiet.
    """
    if BOTH_VIEWS <= views and not tomographic:
        return "both views present"
    quiet = now - last_instance_at
    if quiet >= timedelta(seconds=policy.quiet_seconds):
        missing = ", ".join(sorted(BOTH_VIEWS - views)) or "none"
        return (f"quiet for {quiet.total_seconds():.0f} s"
                + ("; tomographic series complete" if tomographic else "") + f"; missing view(s): {missing}")
    return None


def assemble(database: Database, policy: AssemblyPolicy, now: datetime | None = None) -> list[int]:
    """One pass over the receiving studies: mark the ready ones READY and queue their jobs.

    Each study is decided in its own write transaction, re-reading its state there (the receiver may
    have touched it since the candidates were listed). Returns the ids of the studies queued.
    """
    now = now or utcnow()
    with database.session() as session:
        candidates = session.scalars(
            select(Study.id).where(Study.state == StudyState.RECEIVING).order_by(Study.id)
        ).all()
    queued = []
    for study_id in candidates:
        with database.session(write=True) as session:
            study = session.get(Study, study_id, with_for_update=True)  # the receiver may be bumping it
            if study is None or study.state is not StudyState.RECEIVING:
                continue
            reason = ready_reason(views_present(session, study_id), as_utc(study.last_instance_at), now, policy,
                                  tomographic_present(session, study_id))
            if reason is None:
                continue
            job = enqueue(session, study, now)
            log.info("study ready", extra={"study_uid": study.study_instance_uid,
                                           "study_version": study.version, "reason": reason,
                                           "job": job.id if job else None})
            queued.append(study_id)
    return queued
