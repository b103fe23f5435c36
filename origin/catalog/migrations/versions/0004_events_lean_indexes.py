"""Events keep two indexes: the primary key and ``recorded_at`` (the workers' tail).

Dropped: ``ix_events_at`` (no query filters or orders by ``at`` alone) and
``ix_events_user_id_at``, whose only reader was the fallback's "what does this user already
have" before a first model exists; that now comes from each worker's in-memory tail
(origin.recent_events). Every index is written on every event: with users in random order each
row of ``(user_id, at)`` lands on its own page, and on SQLite with 20M events those page writes
were most of an ingest batch's cost (docs/BENCHMARKS.md). The two kept indexes grow at their
end (time-ordered ids, server-stamped ``recorded_at``).

Dropping an index rewrites no rows; on CockroachDB it is a background schema change, and each
``DROP INDEX`` runs on its own (migrate.py's autocommit connection).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.drop_index("ix_events_user_id_at", table_name="events")
    op.drop_index("ix_events_at", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_user_id_at", "events", ["user_id", "at"])
