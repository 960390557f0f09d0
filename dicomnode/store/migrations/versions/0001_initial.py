"""Initial schema: study, instance, job, result_object, export, export_attempt, quarantine.

Mirrors ``dicomnode/store/models.py`` as first written (docs/architecture.md, "Data model");
``tests/test_db.py`` checks with ``alembic.autogenerate.compare_metadata`` that upgrading an empty
SQLite or PostgreSQL database to head gives exactly the models' schema. States are strings (``native_enum=False``), so adding a state
later needs no ``ALTER TYPE``.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _state(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=16)


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("accession_number", sa.String(16)),
        sa.Column("state", _state("studystate", "receiving", "ready", "processed", "failed"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("last_instance_at", _utc(), nullable=False),
        sa.Column("ready_at", _utc()),
        sa.Column("processed_at", _utc()),
    )
    op.create_index("ix_study_state", "study", ["state"])

    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("study.id"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("views", sa.String(32), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("superseded", sa.Boolean(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.UniqueConstraint("sop_instance_uid", "sha256", name="uq_instance_version"),
    )
    op.create_index("ix_instance_study", "instance", ["study_id"])

    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("study.id"), nullable=False),
        sa.Column("study_version", sa.Integer(), nullable=False),
        sa.Column("state", _state("jobstate", "queued", "running", "done", "failed"), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", _utc()),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("started_at", _utc()),
        sa.Column("finished_at", _utc()),
        sa.UniqueConstraint("study_id", "study_version", name="uq_job_study_version"),
    )
    op.create_index("ix_job_state_lease", "job", ["state", "lease_expires_at"])

    op.create_table(
        "result_object",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id"), nullable=False),
        sa.Column("kind", _state("resultkind", "SEG", "GSPS", "SR", "SC"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
    )

    op.create_table(
        "export",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("result_object.id"), nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("state", _state("exportstate", "pending", "sending", "delivered", "refused", "failed"),
                  nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _utc(), nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", _utc()),
        sa.Column("last_status", sa.String(64)),
        sa.Column("last_error", sa.Text()),
        sa.Column("delivered_at", _utc()),
        sa.UniqueConstraint("result_id", "destination", name="uq_export_result_destination"),
    )
    op.create_index("ix_export_state_next", "export", ["state", "next_attempt_at"])

    op.create_table(
        "export_attempt",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("export_id", sa.Integer(), sa.ForeignKey("export.id"), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text()),
    )

    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("path", sa.String(512)),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("claimed_sop_instance_uid", sa.String(128)),
        sa.Column("received_at", _utc(), nullable=False),
    )


def downgrade() -> None:
    for table in ("quarantine", "export_attempt", "export", "result_object", "job", "instance", "study"):
        op.drop_table(table)
