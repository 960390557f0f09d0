"""Retention: when a study's, an instance's, a result's and a refused instance's files were deleted.

``study.purged_at`` / ``purge_pending``, ``instance.purged_at``, ``result_object.size`` /
``purged_at``, ``quarantine.purged_at`` / ``purge_pending``: docs/architecture.md, "Retention"; the
rules in ``dicomnode/store/retention.py``. Rows are never deleted: the index keeps what was received,
processed and sent, with sizes and the deletion time. Existing rows are not purged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("study", sa.Column("purged_at", sa.DateTime(timezone=True)))
    op.add_column("study", sa.Column("purge_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("instance", sa.Column("purged_at", sa.DateTime(timezone=True)))
    op.add_column("result_object", sa.Column("size", sa.BigInteger()))
    op.add_column("result_object", sa.Column("purged_at", sa.DateTime(timezone=True)))
    op.add_column("quarantine", sa.Column("purged_at", sa.DateTime(timezone=True)))
    op.add_column("quarantine", sa.Column("purge_pending", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    for table, columns in (("quarantine", ("purge_pending", "purged_at")), ("result_object", ("purged_at", "size")),
                           ("instance", ("purged_at",)), ("study", ("purge_pending", "purged_at"))):
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_column(column)
