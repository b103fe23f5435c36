"""SQL helpers shared by the catalog's query modules (store, recommend)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine


def utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written as UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def upsert_insert(engine: AsyncEngine, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT in this database's dialect (CockroachDB takes
    PostgreSQL's)."""
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)
