"""Events get ``recorded_at``: when the catalog stored them, stamped by the server.

Workers tail the events table by this column (``at`` is the client's time and may be
backdated, so it cannot order arrivals), and a training run reads exactly the events recorded
up to its cutoff. Rows from before this revision keep NULL: they count as recorded before
every cutoff. Nullable, so adding it rewrites nothing, which matters on a large table.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("events", sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_events_recorded_at", "events", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_events_recorded_at", "events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("recorded_at")
