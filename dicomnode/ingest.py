"""Index a received instance: the one DB transaction behind every 0x0000 the receiver answers (DESIGN §1.1, §3).

:func:`ingest` is called with an instance that :mod:`dicomnode.validate` accepted and the exact bytes
received. It writes the file durably into the spool (:meth:`dicomnode.spool.Spool.write`), then in
one write transaction: creates the study if new (``INSERT … ON CONFLICT DO NOTHING``, so concurrent
first instances of one study do not collide), inserts the instance row, marks older versions of the
same SOP Instance UID ``superseded``, and updates the study's bookkeeping. Only after that commit may
the receiver answer success. A crash between the file write and the commit leaves an unindexed file
whose name holds its content hash; the sender, having no success status, sends again, and the same
bytes land on the same name (no duplicate file, the row is then written).

Duplicates (PS3.4 B.4.1 leaves it to the SCP): the same SOP Instance UID with the same bytes
(SHA-256) is a no-op — no new row, no study change — and still success. The same SOP Instance UID with
different bytes is a new version: a new row, the previous ones ``superseded``. Note that "the same
bytes" is literal: a re-send in another transfer syntax is a new version.

Contract with assembly (:mod:`dicomnode.assembly`), for NM images (a SEG sent back by a viewer is a
label for training, stored and indexed but never a reason to process again):

* every new NM instance sets ``Study.last_instance_at`` (the quiet period restarts);
* if the study is not RECEIVING (READY with a job queued or running, PROCESSED or FAILED), the new
  content bumps ``Study.version`` and puts the study back to RECEIVING with ``ready_at`` cleared;
  assembly then queues a job for the new version (one job per version), and a job still running
  for the old version settles without touching the study (:func:`dicomnode.queue` checks the
  version). Results of the new version go into new series.

A SEG is accepted only if it references at least one current instance of the same study held here;
otherwise :class:`~dicomnode.validate.Refusal` 0xC000 (documented in :mod:`dicomnode.validate`).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicomnode.db import Database
from dicomnode.models import Instance, Quarantine, Study, StudyState, utcnow
from dicomnode.spool import Spool, sha256_hex
from dicomnode.validate import ReceivedInstance, Refusal, Status

log = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    STORED = "stored"  # first version of this SOP instance
    NEW_VERSION = "new-version"  # same SOP Instance UID, different bytes
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changed


@dataclass(frozen=True)
class Ingested:
    outcome: Outcome
    instance_id: int
    study_id: int
    study_version: int
    path: str  # relative to the spool root
    sha256: str


def ingest(database: Database, spool: Spool, instance: ReceivedInstance, data: bytes,
           calling_ae: str | None, now: datetime | None = None) -> Ingested:
    """Store ``data`` durably and index it in one transaction; see the module docstring.

    Raises :class:`~dicomnode.validate.Refusal` (SEG without a known source), ``OSError`` (spool) or
    SQLAlchemy errors (database); nothing is committed in those cases.
    """
    digest = sha256_hex(data)
    path = spool.instance_path(instance.study_instance_uid, instance.series_instance_uid,
                               instance.sop_instance_uid, digest)
    if not instance.is_image:
        _check_seg_sources(database, instance)
    spool.write(path, data, digest)  # same bytes again: the file is there already, nothing is written
    now = now or utcnow()
    with database.session(write=True) as session:
        study = _study_for_update(session, database, instance, now)
        inserted = _insert_instance(session, database, study, instance, path, digest, len(data), calling_ae, now)
        if inserted is None:  # these bytes are indexed already (earlier, or by a concurrent association)
            duplicate = _existing_in(session, instance.sop_instance_uid, digest)
            assert duplicate is not None
            return duplicate
        previous = session.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == instance.sop_instance_uid, Instance.id != inserted,
                   Instance.superseded.is_(False))
            .values(superseded=True)
        ).rowcount
        if instance.is_image:
            _touch_study(study, now)
        outcome = Outcome.NEW_VERSION if previous else Outcome.STORED
        result = Ingested(outcome, inserted, study.id, study.version, path, digest)
    return result


def _touch_study(study: Study, now: datetime) -> None:
    """New NM content: restart the quiet period; re-open a study that was already past RECEIVING."""
    study.last_instance_at = now
    if study.state is not StudyState.RECEIVING:
        log.info("study changed after %s; version %d -> %d", study.state.value, study.version, study.version + 1,
                 extra={"study_uid": study.study_instance_uid})
        study.version += 1
        study.state = StudyState.RECEIVING
        study.ready_at = None


def _existing_in(session: Session, sop_uid: str, digest: str) -> Ingested | None:
    row = session.execute(
        select(Instance.id, Instance.study_id, Instance.path, Study.version)
        .join(Study, Study.id == Instance.study_id)
        .where(Instance.sop_instance_uid == sop_uid, Instance.sha256 == digest)
    ).first()
    if row is None:
        return None
    return Ingested(Outcome.DUPLICATE, row.id, row.study_id, row.version, row.path, digest)


def _dialect_insert(database: Database):
    return postgresql.insert if database.dialect == "postgresql" else sqlite.insert


def _study_for_update(session: Session, database: Database, instance: ReceivedInstance, now: datetime) -> Study:
    """The study row, created if new, locked for this transaction (SQLite: by BEGIN IMMEDIATE)."""
    insert = _dialect_insert(database)
    session.execute(
        insert(Study)
        .values(study_instance_uid=instance.study_instance_uid, patient_id=instance.patient_id,
                accession_number=instance.accession_number, state=StudyState.RECEIVING, version=1,
                received_at=now, last_instance_at=now)
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
    )
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == instance.study_instance_uid).with_for_update()
    ).one()
    if study.patient_id is None and instance.patient_id:
        study.patient_id = instance.patient_id
    if study.accession_number is None and instance.accession_number:
        study.accession_number = instance.accession_number
    return study


def _insert_instance(session: Session, database: Database, study: Study, instance: ReceivedInstance,
                     path: str, digest: str, size: int, calling_ae: str | None, now: datetime) -> int | None:
    """Insert the instance row; ``None`` if the same (SOP Instance UID, SHA-256) is already indexed."""
    insert = _dialect_insert(database)
    return session.execute(
        insert(Instance)
        .values(study_id=study.id, sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid, series_instance_uid=instance.series_instance_uid,
                views=",".join(instance.views), path=path, sha256=digest, size=size,
                calling_ae=calling_ae, superseded=False, received_at=now)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid", "sha256"])
        .returning(Instance.id)
    ).scalar()


def _check_seg_sources(database: Database, instance: ReceivedInstance) -> None:
    with database.session() as session:
        held = session.scalar(
            select(Instance.id)
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.sop_instance_uid.in_(instance.referenced_sop_instance_uids),
                   Instance.superseded.is_(False),
                   Study.study_instance_uid == instance.study_instance_uid)
            .limit(1)
        )
    if held is None:
        raise Refusal(Status.CANNOT_UNDERSTAND,
                      "the SEG references no instance of its study that this node holds")


def record_refusal(database: Database, *, path: str | None, reason: str, status: str, calling_ae: str | None,
                   claimed_sop_instance_uid: str | None) -> int:
    """Index a refused instance (its quarantined copy, if any, is at ``path``); return the row id.

    ``claimed_sop_instance_uid`` is the command's Affected SOP Instance UID as sent: unvalidated, so
    it is truncated to the column and never used to build a path.
    """
    with database.session(write=True) as session:
        row = Quarantine(path=path, reason=reason, status=status, calling_ae=(calling_ae or None),
                         claimed_sop_instance_uid=(claimed_sop_instance_uid or "")[:128] or None)
        session.add(row)
        session.flush()
        return row.id
