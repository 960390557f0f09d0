"""The node's database: studies, instances, jobs, result objects, exports.

The tables of docs/architecture.md, "Data model".

SQLAlchemy 2 typed ORM. The same schema serves SQLite (embedded default, WAL) and PostgreSQL
(scale-out); the schema itself is created and upgraded by Alembic (``dicomnode/store/migrations``), never
by ``create_all`` in production code. States are enums stored as strings (``native_enum=False``) so
both engines behave the same and a migration can add a state without an ``ALTER TYPE``. Every state
transition is one transaction (the code that changes a state commits it with the rows it depends on).

Times are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dicomnode.dicom.sop import ResultKind

UID = String(64)  # PS3.5 §9.1: a UID is at most 64 characters


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A datetime read back from the database as aware UTC (SQLite returns naive UTC values)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, validate_strings=True,
                values_callable=lambda members: [m.value for m in members])


class StudyState(str, enum.Enum):
    RECEIVING = "receiving"  # instances arriving; not yet ready
    READY = "ready"  # both views present or quiet period over; a job is queued
    PROCESSED = "processed"  # the job for the current version is done
    FAILED = "failed"  # the job for the current version failed terminally


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"  # claimed under a lease
    DONE = "done"
    FAILED = "failed"  # attempts exhausted, permanent error or a poison pill; error kept


class ExportState(str, enum.Enum):
    PENDING = "pending"  # waiting for next_attempt_at
    SENDING = "sending"  # claimed by an exporter under a lease
    DELIVERED = "delivered"  # the destination answered 0x0000 (or a warning)
    REFUSED = "refused"  # permanent refusal (association rejected, SOP class not supported)
    FAILED = "failed"  # gave up after the configured attempts


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.RECEIVING)
    version: Mapped[int] = mapped_column(Integer, default=1)  # +1 when content changes after processing
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Retention (dicomnode.store.retention): when the study's files were last deleted, and whether a
    # deletion was marked but its files may not all be gone yet (finished by the next purge).
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    purge_pending: Mapped[bool] = mapped_column(default=False)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_study_state", "state"),)


class Instance(Base):
    """One received version of a SOP instance. A re-sent instance with different bytes is a new row."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(24), default="whole-body")  # dicomnode.dicom.sop.instance_kind
    views: Mapped[str] = mapped_column(String(32), default="")  # "anterior,posterior" as seen at receive
    path: Mapped[str] = mapped_column(String(512))  # relative to the spool root
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    superseded: Mapped[bool] = mapped_column(default=False)  # a newer version of this SOP instance exists
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # file deleted by retention

    study: Mapped[Study] = relationship(back_populates="instances")

    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "sha256", name="uq_instance_version"),
        Index("ix_instance_study", "study_id"),
    )


class Job(Base):
    """Processing of one version of a study. Claimed under a lease; an expired lease is reclaimed.

    ``attempts`` counts the job's own attempts (the one running and those that ended in an error);
    a lease that ran out because the worker died is not the job's fault and is counted in
    ``worker_losses`` instead, with ``recent_losses`` since ``recent_losses_since`` for the
    poison-pill rule (:mod:`dicomnode.pipeline.queue`). ``waiting_for`` names the condition of the
    environment a QUEUED job waits for ("disk space", "database"), None otherwise.
    """

    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    study_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_losses: Mapped[int] = mapped_column(Integer, default=0)
    recent_losses: Mapped[int] = mapped_column(Integer, default=0)
    recent_losses_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    waiting_for: Mapped[str | None] = mapped_column(String(32))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="jobs")
    results: Mapped[list[ResultObject]] = relationship(back_populates="job")

    __table_args__ = (
        UniqueConstraint("study_id", "study_version", name="uq_job_study_version"),
        Index("ix_job_state_lease", "state", "lease_expires_at"),
    )


class AcquisitionState(str, enum.Enum):
    PROCESSED = "processed"  # segmented; its result objects belong to the same job
    NOT_PROCESSABLE = "not-processable"  # explicitly not segmented, with the reason


class AcquisitionOutcome(Base):
    """What a job did with one whole-body acquisition of its study (docs/architecture.md).

    ``key`` names the acquisition (series and matrix, or the instance holding both views, and a
    phase); ``fingerprint`` is a hash of its instances' contents, so that a later job of the same
    study skips an acquisition already processed unchanged. Written by the job's completion only.
    """

    __tablename__ = "acquisition"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    key: Mapped[str] = mapped_column(String(160))
    label: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[AcquisitionState] = mapped_column(_enum(AcquisitionState))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_acquisition_study", "study_id", "fingerprint"),)


class ResultObject(Base):
    """A DICOM object the worker wrote for a job (stored under the spool's results area)."""

    __tablename__ = "result_object"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"))
    kind: Mapped[ResultKind] = mapped_column(_enum(ResultKind))
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))  # relative to the spool root
    size: Mapped[int | None] = mapped_column(BigInteger)  # bytes of the file (None in rows of older versions)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # file deleted by retention

    job: Mapped[Job] = relationship(back_populates="results")
    exports: Mapped[list[Export]] = relationship(back_populates="result")


class Export(Base):
    """The outbox: one row per (result object, destination)."""

    __tablename__ = "export"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result_object.id"))
    destination: Mapped[str] = mapped_column(String(64))  # name of a configured destination
    state: Mapped[ExportState] = mapped_column(_enum(ExportState), default=ExportState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[str | None] = mapped_column(String(64))  # e.g. "0x0000", "0xA700", "association rejected"
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    result: Mapped[ResultObject] = relationship(back_populates="exports")
    attempts_log: Mapped[list[ExportAttempt]] = relationship(back_populates="export")

    __table_args__ = (
        UniqueConstraint("result_id", "destination", name="uq_export_result_destination"),
        Index("ix_export_state_next", "state", "next_attempt_at"),
    )


class ExportAttempt(Base):
    """Every C-STORE attempt of an export, with what the destination said."""

    __tablename__ = "export_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("export.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)

    export: Mapped[Export] = relationship(back_populates="attempts_log")


class Quarantine(Base):
    """An instance we refused, kept with the reason (the file is under the spool's quarantine area)."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str | None] = mapped_column(String(512))  # None when nothing could be kept (e.g. disk floor)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8))  # the DIMSE status we answered, e.g. "0xC000"
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    claimed_sop_instance_uid: Mapped[str | None] = mapped_column(String(128))  # as sent, unvalidated, truncated
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # files deleted by retention
    purge_pending: Mapped[bool] = mapped_column(default=False)  # marked; the files may not all be gone yet


# -- the site's own model and labels (dicomnode.learn; docs/training.md, "Site labels") --------------


class ModelState(str, enum.Enum):
    ACTIVE = "active"  # the one model of its task the worker reads studies with
    CANDIDATE = "candidate"  # trained here, not (or not yet) activated
    RETIRED = "retired"  # was active; replaced by another activation or a rollback


class RegisteredModel(Base):
    """A model of the registry (:mod:`dicomnode.learn.registry`): weights under ``[storage] var_dir``/models.

    ``version`` is the Algorithm Version every result it reads carries (PS3.3 C.8.20.2), so a study
    traces back to this row. ``card``, ``data`` and ``metrics`` are JSON text.
    """

    __tablename__ = "model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(32))  # the card's task, e.g. "planar-lesions"
    version: Mapped[str] = mapped_column(String(64), unique=True)
    weights_path: Mapped[str] = mapped_column(String(512))  # relative to [storage] var_dir
    sha256: Mapped[str] = mapped_column(String(64))
    card: Mapped[str] = mapped_column(Text)
    data: Mapped[str] = mapped_column(Text, default="{}")  # training data summary
    metrics: Mapped[str] = mapped_column(Text, default="{}")  # the gate's report, when there was one
    state: Mapped[ModelState] = mapped_column(_enum(ModelState), default=ModelState.CANDIDATE)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    activated_by: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_model_task_state", "task", "state"),)


class ModelActivation(Base):
    """Every switch of a task's active model, in order: who, when, which model (None: back to the
    configured ``[model] weights``). ``rollback`` walks this log back."""

    __tablename__ = "model_activation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("model.id"))
    action: Mapped[str] = mapped_column(String(16))  # "activate", "rollback"
    by: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelKind(str, enum.Enum):
    POSITIVE = "positive"  # a drawn or edited lesion mask
    NEGATIVE = "negative"  # no lesion: a SEG with empty segments, or findings rejected
    IGNORED = "ignored"  # examined, not a label (``reason`` says why)


class SiteLabel(Base):
    """A stored SEG or SR examined as a correction (:mod:`dicomnode.learn.corrections`), one row per
    instance version, with its provenance: who (Content Creator's Name), when (Content Date/Time),
    which study and which of our results it corrects."""

    __tablename__ = "site_label"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    kind: Mapped[LabelKind] = mapped_column(_enum(LabelKind))
    reason: Mapped[str] = mapped_column(Text)
    corrects_result_id: Mapped[int | None] = mapped_column(ForeignKey("result_object.id"))
    creator: Mapped[str | None] = mapped_column(String(64))  # Content Creator's Name, checked PN text
    content_at: Mapped[str | None] = mapped_column(String(32))  # Content Date + Time as stored (DA TM)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_site_label_study", "study_id"),)
