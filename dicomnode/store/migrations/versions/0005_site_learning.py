"""The site learns: the model registry (``model``, ``model_activation``) and the site's labels (``site_label``).

docs/architecture.md, "Data model"; the rules in ``dicomnode/learn/``. Weights live under
``[storage] var_dir``/models, never in the database or the repository.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    now = sa.DateTime(timezone=True)
    op.create_table(
        "model",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False, unique=True),
        sa.Column("weights_path", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("card", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", now, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("activated_at", now),
        sa.Column("activated_by", sa.String(64)),
    )
    op.create_index("ix_model_task_state", "model", ["task", "state"])
    op.create_table(
        "model_activation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("model.id")),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("by", sa.String(64), nullable=False),
        sa.Column("at", now, nullable=False),
    )
    op.create_table(
        "site_label",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("instance_id", sa.Integer(), sa.ForeignKey("instance.id"), nullable=False, unique=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("study.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("corrects_result_id", sa.Integer(), sa.ForeignKey("result_object.id")),
        sa.Column("creator", sa.String(64)),
        sa.Column("content_at", sa.String(32)),
        sa.Column("recorded_at", now, nullable=False),
    )
    op.create_index("ix_site_label_study", "site_label", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_site_label_study", "site_label")
    op.drop_table("site_label")
    op.drop_table("model_activation")
    op.drop_index("ix_model_task_state", "model")
    op.drop_table("model")
