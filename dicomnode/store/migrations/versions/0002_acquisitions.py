"""Instance kinds and acquisition outcomes (issue "Real cameras").

``instance.kind`` records what each received instance is (``dicomnode.dicom.sop.instance_kind``:
whole-body, static, tomo, recon-tomo, ..., ct, secondary-capture, seg, sr); rows from before are NM
whole-body images or SEGs, so existing rows get ``whole-body`` and SEG rows ``seg``. The ``acquisition``
table keeps what each job did with each whole-body acquisition (docs/architecture.md, "Data model").

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.add_column(sa.Column("kind", sa.String(24), nullable=False, server_default="whole-body"))
    op.execute(sa.text("UPDATE instance SET kind = 'seg' WHERE sop_class_uid = :seg")
               .bindparams(seg=_SEGMENTATION_STORAGE))
    with op.batch_alter_table("instance") as batch:
        batch.alter_column("kind", server_default=None)
    op.create_table(
        "acquisition",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id"), nullable=False),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("study.id"), nullable=False),
        sa.Column("key", sa.String(160), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.Enum("processed", "not-processable", name="acquisitionstate",
                                   native_enum=False, length=16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_acquisition_study", "acquisition", ["study_id", "fingerprint"])


def downgrade() -> None:
    op.drop_index("ix_acquisition_study", table_name="acquisition")
    op.drop_table("acquisition")
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("kind")
