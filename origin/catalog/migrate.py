"""Schema versions: upgrade, downgrade, and the check ``origin serve`` makes before serving."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

_SCRIPTS = Path(__file__).parent / "migrations"


class SchemaMismatch(RuntimeError):
    """The database's schema is not the one this code was written for."""


def _alembic(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def _run(engine: AsyncEngine, step: str, revision: str) -> None:
    # DDL runs in autocommit mode: CockroachDB wants schema changes outside explicit
    # transactions (docs/COCKROACHDB.md); SQLite gets one transaction from env.py.
    autocommit = engine.dialect.name != "sqlite"
    async with engine.connect() as conn:
        if autocommit:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")

        def run(sync: Connection) -> None:
            getattr(command, step)(_alembic(sync), revision)

        await conn.run_sync(run)
        if not autocommit:
            await conn.commit()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, "downgrade", revision)


async def check_schema(engine: AsyncEngine) -> None:
    current, head = await current_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaMismatch(
            "the catalog database has no schema yet: run `origin db upgrade` first"
        )
    known = {s.revision for s in ScriptDirectory.from_config(_alembic()).walk_revisions()}
    if current in known:
        raise SchemaMismatch(
            f"the catalog schema is at revision {current}, this code needs {head}: "
            "run `origin db upgrade`"
        )
    raise SchemaMismatch(
        f"the catalog schema is at revision {current}, newer than this code ({head}): "
        "run the newer origin, or `origin db downgrade` with it"
    )
