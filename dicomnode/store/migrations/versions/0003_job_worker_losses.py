"""Jobs: worker losses counted apart from attempts, and the condition a waiting job waits for.

``job.worker_losses`` (every lease that ran out because its worker died), ``job.recent_losses`` and
``job.recent_losses_since`` (the poison-pill window) and ``job.waiting_for`` ("disk space",
"database"): docs/architecture.md, "The journey of a study" (queue) and "Data model"; the rules in
``dicomnode/pipeline/queue.py``. Existing rows get 0 losses and wait for nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("worker_losses", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("job", sa.Column("recent_losses", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("job", sa.Column("recent_losses_since", sa.DateTime(timezone=True)))
    op.add_column("job", sa.Column("waiting_for", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        for column in ("waiting_for", "recent_losses_since", "recent_losses", "worker_losses"):
            batch.drop_column(column)
