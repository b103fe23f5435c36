"""The one way to write: a transaction retried on serialization failures.

CockroachDB runs every transaction SERIALIZABLE and asks clients to retry one that conflicted
(SQLSTATE 40001, "restart transaction"); PostgreSQL at SERIALIZABLE does the same. The whole
transaction function runs again, so it must not have effects outside the database.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


class CatalogBusy(RuntimeError):
    """Conflicts persisted through every retry; the HTTP layer answers 503."""


class Conflict(Exception):
    """Raised by transaction code that saw a concurrent change (e.g. an UPDATE guarded by a
    version matched no row): the transaction is retried like a serialization failure."""


def sqlstate(error: DBAPIError) -> str | None:
    orig = error.orig
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_retryable(error: DBAPIError) -> bool:
    if sqlstate(error) in RETRYABLE_SQLSTATES:
        return True
    text = str(error.orig).lower()
    # SQLite: another writer holds the lock; CockroachDB also says so in the message.
    return "database is locked" in text or "restart transaction" in text


def is_refused(error: BaseException) -> bool:
    """The database refuses these rows for what they hold (SQLSTATE class 22, data exception:
    a value too long, a byte the encoding lacks; 23, a constraint), so writing them again can
    never succeed. asyncpg's errors reach SQLAlchemy as plain DBAPIError, hence the code."""
    if isinstance(error, DataError | IntegrityError):
        return True
    return isinstance(error, DBAPIError) and (sqlstate(error) or "")[:2] in ("22", "23")


def is_full(error: BaseException) -> bool:
    """The database's disk is full: PostgreSQL's SQLSTATE 53100, SQLite's SQLITE_FULL."""
    if not isinstance(error, DBAPIError):
        return False
    return sqlstate(error) == "53100" or "database or disk is full" in str(error.orig).lower()


async def transaction(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    attempts: int = 10,
    base_delay: float = 0.005,
    max_delay: float = 0.5,
) -> T:
    """Run ``work`` in a transaction, again (with jittered exponential back-off) on conflict."""
    for attempt in range(1, attempts + 1):
        try:
            async with engine.begin() as conn:
                return await work(conn)
        except (DBAPIError, Conflict) as exc:
            if isinstance(exc, DBAPIError) and not is_retryable(exc):
                raise
            if attempt == attempts:
                raise CatalogBusy(f"gave up after {attempts} conflicting attempts") from exc
            # "Full jitter": spreads retrying clients apart instead of in lockstep.
            delay = random.uniform(0, min(max_delay, base_delay * 2**attempt))
            code = sqlstate(exc) if isinstance(exc, DBAPIError) else "version"
            log.debug("transaction conflict (%s), retry %d in %.3fs", code, attempt, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
