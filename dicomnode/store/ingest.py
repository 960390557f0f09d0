"""Index a received instance: the one DB transaction behind every 0x0000 the receiver answers.

The second half of "receive" in docs/architecture.md, "The journey of a study"; the rows in "Data
model".

:func:`ingest` is called with an instance that :mod:`dicomnode.dicom.validate` accepted and the exact bytes
received. It places the file durably in the spool (:meth:`dicomnode.store.spool.StagedFile.place`), then in
one write transaction: creates the study if new (``INSERT … ON CONFLICT``, so concurrent first
instances of one study do not collide), inserts the instance row, marks older versions of the same
SOP Instance UID ``superseded``, and updates the study's bookkeeping. Only after that commit may the
receiver answer success. A crash between the file write and the commit leaves an unindexed file
whose name holds its content hash; the sender, having no success status, sends again, and the same
bytes land on the same name (no duplicate file, the row is then written).

Duplicates (PS3.4 B.4.1 leaves it to the SCP): the same SOP Instance UID with the same bytes
(SHA-256) is a no-op — no new row, no study change — and still success. The same SOP Instance UID with
different bytes is a new version: a new row, the previous ones ``superseded``. The same bytes after
retention deleted their file are received as new (the row counts as present again, the study
re-opens: :func:`_restore`). Note that "the same
bytes" is literal: a re-send in another transfer syntax is a new version.

Every instance is indexed with its kind (``Instance.kind``, :func:`dicomnode.dicom.sop.instance_kind`).
Contract with assembly (:mod:`dicomnode.pipeline.assembly`), for whole-body NM images only (statics,
TOMO, reconstructions, CT, screen captures, a SEG or SR sent back by a viewer are stored with the
study but are never a reason to process it again):

* every new whole-body instance sets ``Study.last_instance_at`` (the quiet period restarts);
* if the study is not RECEIVING (READY with a job queued or running, PROCESSED or FAILED), the new
  content bumps ``Study.version`` and puts the study back to RECEIVING with ``ready_at`` cleared;
  assembly then queues a job for the new version (one job per version), and a job still running
  for the old version settles without touching the study (:func:`dicomnode.pipeline.queue` checks the
  version). Results of the new version go into new series.

A SEG is accepted only if it references at least one current instance of the same study held here;
otherwise :class:`~dicomnode.dicom.parse.Refusal` 0xC000 (documented in :mod:`dicomnode.dicom.validate`).
"""

from __future__ import annotations

import enum
import functools
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Executable, Row, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dicomnode.dicom.status import Status
from dicomnode.dicom.parse import Refusal
from dicomnode.dicom.validate import ReceivedInstance
from dicomnode.store.db import Database
from dicomnode.store.models import Instance, Quarantine, Study, StudyState, utcnow
from dicomnode.store.spool import Spool, StagedFile

log = logging.getLogger(__name__)


class StorageOutcome(str, enum.Enum):
    """What storing a received instance did to the index (PS3.4 B.4.1: a re-sent SOP Instance UID)."""

    STORED = "stored"  # first version of this SOP instance
    NEW_VERSION = "new-version"  # same SOP Instance UID, different bytes
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changed


@dataclass(frozen=True)
class Ingested:
    outcome: StorageOutcome
    instance_id: int
    study_id: int
    study_version: int
    path: str  # relative to the spool root
    sha256: str


def ingest(database: Database, spool: Spool, instance: ReceivedInstance, staged: StagedFile,
           calling_ae: str | None, now: datetime | None = None) -> Ingested:
    """Store the received bytes durably and index them in one transaction; see the module docstring.

    ``staged`` holds the bytes exactly as received, their write to the spool already under way
    (:meth:`dicomnode.store.spool.Spool.stage`, started before validation); here they get their final name.

    Raises :class:`~dicomnode.dicom.parse.Refusal` (SEG without a known source), ``OSError`` (spool) or
    SQLAlchemy errors (database); nothing is committed in those cases.

    The transaction is four prepared Core statements (:class:`_Statements`; no ORM unit of work on this
    hot path): upsert the study (which also locks its row on PostgreSQL), insert the instance (``ON
    CONFLICT DO NOTHING`` on the (SOP Instance UID, SHA-256) unique constraint answers "duplicate?"
    without a SELECT), mark older versions superseded, touch the study.
    """
    digest = staged.sha256
    path = spool.instance_path(instance.study_instance_uid, instance.series_instance_uid,
                               instance.sop_instance_uid, digest)
    if instance.is_seg:
        _check_seg_sources(database, instance)
    staged.place(path)  # same bytes again: the file is there already, the staged copy is dropped
    now = now or utcnow()
    statements = _statements(database.dialect)
    with database.transaction(write=True) as connection:
        study = connection.execute(statements.upsert_study, {
            "study_uid": instance.study_instance_uid, "patient_id": instance.patient_id,
            "accession_number": instance.accession_number, "now": now}).one()
        inserted = connection.execute(statements.insert_instance, {
            "study_id": study.id, "sop_uid": instance.sop_instance_uid, "sop_class_uid": instance.sop_class_uid,
            "series_uid": instance.series_instance_uid, "kind": instance.kind,
            "views": ",".join(instance.views), "path": path,
            "sha256": digest, "size": staged.size, "calling_ae": calling_ae, "now": now}).scalar()
        if inserted is None:  # these bytes are indexed already (earlier, or by a concurrent association)
            duplicate = connection.execute(statements.existing, {"sop_uid": instance.sop_instance_uid,
                                                                 "sha256": digest}).one()
            if duplicate.purged_at is None:
                return Ingested(StorageOutcome.DUPLICATE, duplicate.id, duplicate.study_id, duplicate.version,
                                duplicate.path, digest)
            version = _restore(connection, statements, spool, study, duplicate, instance, now)
            return Ingested(StorageOutcome.STORED, duplicate.id, study.id, version, path, digest)
        previous = connection.execute(statements.supersede, {"sop_uid": instance.sop_instance_uid,
                                                             "row_id": inserted}).rowcount
        version = study.version
        if instance.segmented:
            version = _touch_study(connection, statements, study, instance.study_instance_uid, now)
        outcome = StorageOutcome.NEW_VERSION if previous else StorageOutcome.STORED
    return Ingested(outcome, inserted, study.id, version, path, digest)


def _restore(connection: Connection, statements: _Statements, spool: Spool, study: Row, duplicate: Row,
             instance: ReceivedInstance, now: datetime) -> int:
    """The same bytes again after retention deleted them (:mod:`dicomnode.store.retention`): the row
    counts as present again and the study is processed as new. Its file was placed just before this
    transaction; if a purge deleted it in between (the purge unlinks under the rows' lock), raise
    ``OSError`` so that the receiver answers 0xA700 and the sender's next try writes it again."""
    connection.execute(statements.restore, {"row_id": duplicate.id})
    connection.execute(statements.supersede, {"sop_uid": instance.sop_instance_uid, "row_id": duplicate.id})
    if not spool.absolute(duplicate.path).is_file():
        raise FileNotFoundError(f"{duplicate.path} was deleted by retention meanwhile; send it again")
    log.info("instance received again after retention deleted it", extra={"study_uid": instance.study_instance_uid})
    if instance.segmented:
        return _touch_study(connection, statements, study, instance.study_instance_uid, now)
    return study.version


def _touch_study(connection: Connection, statements: _Statements, study: Row, study_uid: str,
                 now: datetime) -> int:
    """New whole-body content: restart the quiet period; re-open a study that was already past RECEIVING.

    Returns the study's version after the change.
    """
    if study.state is StudyState.RECEIVING:
        connection.execute(statements.touch_study, {"row_id": study.id, "now": now})
        return study.version
    log.info("study changed after %s; version %d -> %d", study.state.value, study.version, study.version + 1,
             extra={"study_uid": study_uid})
    connection.execute(statements.reopen_study, {"row_id": study.id, "now": now, "new_version": study.version + 1})
    return study.version + 1


@dataclass(frozen=True)
class _Statements:
    """The ingest transaction's statements for one dialect, built once (SQLAlchemy then reuses their
    compiled form; building and cache-keying them per instance cost more CPU than running them)."""

    upsert_study: Executable
    insert_instance: Executable
    existing: Executable
    supersede: Executable
    touch_study: Executable
    reopen_study: Executable
    restore: Executable


@functools.cache
def _statements(dialect: str) -> _Statements:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    study, instance = Study.__table__, Instance.__table__
    new_study = insert(study).values(
        study_instance_uid=bindparam("study_uid"), patient_id=bindparam("patient_id"),
        accession_number=bindparam("accession_number"), state=StudyState.RECEIVING, version=1,
        received_at=bindparam("now"), last_instance_at=bindparam("now"))
    return _Statements(
        # A new study is created; a known one gets a Patient ID / Accession Number it still lacks. DO
        # UPDATE (not DO NOTHING) so that RETURNING always yields the row and PostgreSQL locks it.
        upsert_study=new_study.on_conflict_do_update(
            index_elements=[study.c.study_instance_uid],
            set_={"patient_id": func.coalesce(study.c.patient_id, new_study.excluded.patient_id),
                  "accession_number": func.coalesce(study.c.accession_number,
                                                    new_study.excluded.accession_number)},
        ).returning(study.c.id, study.c.version, study.c.state),
        insert_instance=insert(instance).values(
            study_id=bindparam("study_id"), sop_instance_uid=bindparam("sop_uid"),
            sop_class_uid=bindparam("sop_class_uid"), series_instance_uid=bindparam("series_uid"),
            kind=bindparam("kind"), views=bindparam("views"), path=bindparam("path"), sha256=bindparam("sha256"), size=bindparam("size"),
            calling_ae=bindparam("calling_ae"), superseded=False, received_at=bindparam("now"),
        ).on_conflict_do_nothing(index_elements=[instance.c.sop_instance_uid, instance.c.sha256])
        .returning(instance.c.id),
        existing=select(instance.c.id, instance.c.study_id, instance.c.path, instance.c.purged_at, study.c.version)
        .join(study, study.c.id == instance.c.study_id)
        .where(instance.c.sop_instance_uid == bindparam("sop_uid"), instance.c.sha256 == bindparam("sha256")),
        supersede=update(instance)
        .where(instance.c.sop_instance_uid == bindparam("sop_uid"), instance.c.id != bindparam("row_id"),
               instance.c.superseded.is_(False))
        .values(superseded=True),
        touch_study=update(study).where(study.c.id == bindparam("row_id")).values(last_instance_at=bindparam("now")),
        reopen_study=update(study).where(study.c.id == bindparam("row_id")).values(
            last_instance_at=bindparam("now"), version=bindparam("new_version"), state=StudyState.RECEIVING,
            ready_at=None),
        restore=update(instance).where(instance.c.id == bindparam("row_id")).values(purged_at=None, superseded=False),
    )


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


#: ``Quarantine.status`` of a presentation context an association refused (no DIMSE status: no data
#: set was sent), recorded by the receiver so that ``dicomnode status`` counts it.
CONTEXT_REFUSED = "context"


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
