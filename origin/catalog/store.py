"""The catalog's queries. Every write goes through ``transaction`` (retried on conflicts)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, and_, event, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from blobstore import BlobInfo

from .group_commit import GroupCommit
from .records import (
    Asset,
    AssetChanges,
    AssetNotFound,
    AssetPage,
    AssetVersion,
    BlobRecord,
    TokenRecord,
    UnknownBlob,
    VersionConflict,
)
from .schema import asset_versions, assets, blobs, tokens
from .sql import upsert_insert, utc
from .transactions import Conflict, transaction

# Blob rows per batch, one transaction each.
_BLOB_ROWS_PER_BATCH = 500


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # The sqlite3 module only BEGINs before a write, so a read-then-write transaction
            # would read outside it and lose updates. Take over: BEGIN on every transaction
            # (below); with WAL, a writer whose snapshot went stale gets SQLITE_BUSY, which
            # the transaction helper retries.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    # asyncpg for both PostgreSQL and CockroachDB; SERIALIZABLE is CockroachDB's only level,
    # and we ask PostgreSQL for the same so the tests see the same conflicts.
    return create_async_engine(url, isolation_level="SERIALIZABLE", pool_pre_ping=True)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Catalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Whether new keys should be time-ordered (UUIDv7) rather than random: they append to
        # the primary-key index on SQLite and PostgreSQL; CockroachDB wants random keys, since
        # sequential ones send every insert to one range (docs/COCKROACHDB.md).
        self.time_ordered_keys = engine.dialect.name in ("sqlite", "postgresql")
        self._blob_rows: GroupCommit[tuple[BlobInfo, dict[str, Any] | None]] = GroupCommit(
            self._insert_blobs, max_rows=_BLOB_ROWS_PER_BATCH
        )

    @classmethod
    def connect(cls, url: str) -> Catalog:
        return cls(create_engine(url))

    async def close(self) -> None:
        await self.engine.dispose()

    # -- blobs --------------------------------------------------------------------------------

    async def record_blob(self, info: BlobInfo, facts: dict[str, Any] | None = None) -> None:
        """The blob's row, unless it has one (then the first record stays).

        Returns once the row is committed. Concurrent calls share one transaction (group
        commit): on SQLite a one-row transaction costs about 2 ms of CPU through SQLAlchemy and
        aiosqlite, and every small upload makes one.
        """
        await self._blob_rows.add((info, facts))

    async def _insert_blobs(self, rows: Sequence[tuple[BlobInfo, dict[str, Any] | None]]) -> None:
        first: dict[str, dict[str, Any]] = {}
        for info, facts in rows:  # one row per digest: a statement may not insert a key twice
            first.setdefault(
                info.digest.hex,
                {
                    "digest": info.digest.hex,
                    "size": info.size,
                    "content_type": info.content_type,
                    "sha256": info.sha256.hex(),
                    "facts": facts,
                    "created_at": info.created_at,
                },
            )
        # The rows as execute()'s parameters, not as .values(): one statement, compiled once
        # and then found in SQLAlchemy's cache, run for every row (an executemany); a .values()
        # list is new SQL for each batch size, compiled again for every batch (a profile of
        # small uploads had that compiling at 4 % of a worker's event loop).
        statement = upsert_insert(self.engine, blobs).on_conflict_do_nothing(
            index_elements=["digest"]
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement, list(first.values()))

        await transaction(self.engine, work)

    async def blob(self, digest: str) -> BlobRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(blobs).where(blobs.c.digest == digest))).first()
        if row is None:
            return None
        return BlobRecord(
            row.digest, row.size, row.content_type, row.sha256, row.facts, utc(row.created_at)
        )

    # -- assets -------------------------------------------------------------------------------

    async def create_asset(
        self, *, name: str, kind: str, blob_digest: str, attributes: dict[str, Any], owner: str
    ) -> Asset:
        now = datetime.now(UTC)
        asset = Asset(uuid.uuid4(), name, kind, blob_digest, attributes, owner, 1, now, now)

        async def work(conn: AsyncConnection) -> Asset:
            await self._require_blob(conn, blob_digest)
            await conn.execute(
                assets.insert().values(
                    id=asset.id, name=name, kind=kind, blob_digest=blob_digest,
                    attributes=attributes, owner=owner, version=1, deleted=0,
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
            await self._record_version(conn, asset, owner)
            return asset

        return await transaction(self.engine, work)

    async def _require_blob(self, conn: AsyncConnection, digest: str) -> None:
        found = await conn.execute(select(blobs.c.digest).where(blobs.c.digest == digest))
        if found.first() is None:
            raise UnknownBlob(digest)

    async def _record_version(self, conn: AsyncConnection, asset: Asset, changed_by: str) -> None:
        await conn.execute(
            asset_versions.insert().values(
                asset_id=asset.id, version=asset.version, name=asset.name,
                blob_digest=asset.blob_digest, attributes=asset.attributes,
                changed_by=changed_by, created_at=asset.updated_at,
            )
        )  # fmt: skip

    async def asset(self, asset_id: uuid.UUID) -> Asset | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(assets).where(and_(assets.c.id == asset_id, assets.c.deleted == 0))
                )
            ).first()
        return None if row is None else _asset(row)

    async def update_asset(
        self,
        asset_id: uuid.UUID,
        changes: AssetChanges,
        *,
        changed_by: str,
        if_version: int | None = None,
    ) -> Asset:
        """A new version of the asset. Without ``if_version`` concurrent updates all land, one
        after the other (the transaction retries); with it, a stale version is refused."""

        async def work(conn: AsyncConnection) -> Asset:
            row = (
                await conn.execute(
                    select(assets).where(and_(assets.c.id == asset_id, assets.c.deleted == 0))
                )
            ).first()
            if row is None:
                raise AssetNotFound(str(asset_id))
            current = _asset(row)
            if if_version is not None and if_version != current.version:
                raise VersionConflict(if_version, current.version)
            if changes.blob_digest is not None:
                await self._require_blob(conn, changes.blob_digest)
            attributes = current.attributes
            if changes.attributes_patch is not None:
                attributes = merge_patch(attributes, changes.attributes_patch)
            updated = Asset(
                current.id,
                changes.name if changes.name is not None else current.name,
                current.kind,
                changes.blob_digest or current.blob_digest,
                attributes,
                current.owner,
                current.version + 1,
                current.created_at,
                datetime.now(UTC),
            )
            # The version check in WHERE makes a concurrent update that slipped in between
            # visible even at weaker isolation levels than SERIALIZABLE.
            result = await conn.execute(
                update(assets)
                .where(and_(assets.c.id == asset_id, assets.c.version == current.version))
                .values(
                    name=updated.name, blob_digest=updated.blob_digest,
                    attributes=updated.attributes, version=updated.version,
                    updated_at=updated.updated_at,
                )
            )  # fmt: skip
            if result.rowcount != 1:
                if if_version is not None:
                    raise VersionConflict(if_version, current.version + 1)
                raise Conflict(f"asset {asset_id} changed under us")
            await self._record_version(conn, updated, changed_by)
            return updated

        return await transaction(self.engine, work)

    async def versions(self, asset_id: uuid.UUID) -> list[AssetVersion]:
        """The history of a live asset, oldest first; empty for an unknown or deleted one (a
        soft delete keeps the rows, but the asset is gone to readers)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(asset_versions)
                .join(assets, assets.c.id == asset_versions.c.asset_id)
                .where(and_(asset_versions.c.asset_id == asset_id, assets.c.deleted == 0))
                .order_by(asset_versions.c.version)
            )
            return [
                AssetVersion(
                    r.asset_id, r.version, r.name, r.blob_digest, r.attributes, r.changed_by,
                    utc(r.created_at),
                )
                for r in rows
            ]  # fmt: skip

    async def list_assets(
        self,
        *,
        kind: str | None = None,
        owner: str | None = None,
        name_prefix: str | None = None,
        after: uuid.UUID | None = None,
        limit: int = 100,
    ) -> AssetPage:
        """Keyset pagination by id: each page is an index range scan, however deep."""
        query = select(assets).where(assets.c.deleted == 0)
        if kind is not None:
            query = query.where(assets.c.kind == kind)
        if owner is not None:
            query = query.where(assets.c.owner == owner)
        if name_prefix:
            escaped = name_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(assets.c.name.like(escaped + "%", escape="\\"))
        if after is not None:
            query = query.where(assets.c.id > after)
        query = query.order_by(assets.c.id).limit(limit + 1)
        async with self.engine.connect() as conn:
            items = [_asset(row) for row in await conn.execute(query)]
        more = len(items) > limit
        items = items[:limit]
        return AssetPage(items, items[-1].id if more else None)

    # -- tokens -------------------------------------------------------------------------------

    async def add_token(
        self, verifier: str, token_id: str, subject: str, scopes: Sequence[str]
    ) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                tokens.insert().values(
                    verifier=verifier, id=token_id, subject=subject, scopes=list(scopes),
                    created_at=datetime.now(UTC),
                )
            )  # fmt: skip

        await transaction(self.engine, work)

    async def token(self, verifier: str) -> TokenRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(tokens).where(tokens.c.verifier == verifier))).first()
        return None if row is None else _token(row)

    async def tokens(self) -> list[TokenRecord]:
        async with self.engine.connect() as conn:
            return [
                _token(r) for r in await conn.execute(select(tokens).order_by(tokens.c.created_at))
            ]

    async def revoke_token(self, token_id: str) -> bool:
        async def work(conn: AsyncConnection) -> bool:
            result = await conn.execute(tokens.delete().where(tokens.c.id == token_id))
            return bool(result.rowcount)

        return await transaction(self.engine, work)


def _token(row: Row[Any]) -> TokenRecord:
    return TokenRecord(row.id, row.subject, tuple(row.scopes), utc(row.created_at))


def _asset(row: Row[Any]) -> Asset:
    return Asset(
        row.id, row.name, row.kind, row.blob_digest, row.attributes, row.owner, row.version,
        utc(row.created_at), utc(row.updated_at),
    )  # fmt: skip
