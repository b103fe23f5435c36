"""The catalog on SQLite and on a real PostgreSQL at SERIALIZABLE: migrations, queries, retries."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3
import pytest
from sqlalchemy import Integer, event, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from blobstore import BlobInfo, Digest
from origin.catalog import (
    AssetChanges,
    AssetNotFound,
    Catalog,
    EventRecord,
    RecommenderCatalog,
    SchemaMismatch,
    UnknownBlob,
    VersionConflict,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    merge_patch,
    transaction,
    upgrade,
)
from origin.catalog.schema import metadata

REPO = Path(__file__).resolve().parent.parent


def blob_info(data: bytes, content_type: str = "model/gltf-binary") -> BlobInfo:
    return BlobInfo(
        Digest(blake3.blake3(data).hexdigest()),
        len(data),
        hashlib.sha256(data).digest(),
        content_type,
        datetime.now(UTC),
    )


async def a_blob(catalog: Catalog, data: bytes = b"mesh") -> str:
    info = blob_info(data)
    await catalog.record_blob(info, {"container": "glb"})
    return info.digest.hex


# -- migrations -------------------------------------------------------------------------------


async def test_migrations_from_empty_and_the_serve_check(catalog_url: str) -> None:
    cat = Catalog.connect(catalog_url)
    try:
        with pytest.raises(SchemaMismatch, match="origin db upgrade"):
            await check_schema(cat.engine)
        await upgrade(cat.engine)
        assert await current_revision(cat.engine) == head_revision()
        await check_schema(cat.engine)
    finally:
        await cat.close()


async def test_migration_from_previous_revision_keeps_data_and_steps_down(catalog_url: str) -> None:
    cat = Catalog.connect(catalog_url)
    try:
        await upgrade(cat.engine, "0001")
        with pytest.raises(SchemaMismatch, match=r"revision 0001.*origin db upgrade"):
            await check_schema(cat.engine)
        digest = await a_blob(cat)
        asset = await cat.create_asset(
            name="chair", kind="prop", blob_digest=digest, attributes={"seats": 1}, owner="ann"
        )
        await upgrade(cat.engine)
        assert await cat.asset(asset.id) == asset
        await cat.add_token("v" * 64, "t1", "ci", ["write"])
        await downgrade(cat.engine, "0001")  # through 0004, 0003 and 0002
        assert await current_revision(cat.engine) == "0001"
        assert await cat.asset(asset.id) == asset  # one step down keeps 0001's data
        async with cat.engine.connect() as conn:
            tables = await conn.run_sync(
                lambda c: set(__import__("sqlalchemy").inspect(c).get_table_names())
            )
        assert "tokens" not in tables
        assert "assets" in tables
    finally:
        await cat.close()


async def _event_indexes(cat: Catalog) -> set[str]:
    async with cat.engine.connect() as conn:
        found = await conn.run_sync(lambda c: inspect(c).get_indexes("events"))
    return {str(i["name"]) for i in found}


async def test_events_keep_only_the_index_the_tail_reads(catalog_url: str) -> None:
    """Migration 0004: every secondary index is written on every event, and only
    ``recorded_at`` is read (the workers' tail); 0003's two others come back on a downgrade."""
    cat = Catalog.connect(catalog_url)
    try:
        await upgrade(cat.engine)
        assert await _event_indexes(cat) == {"ix_events_recorded_at"}
        await downgrade(cat.engine, "0003")
        assert await _event_indexes(cat) == {
            "ix_events_at", "ix_events_user_id_at", "ix_events_recorded_at",
        }  # fmt: skip
        await upgrade(cat.engine)
        assert await _event_indexes(cat) == {"ix_events_recorded_at"}
    finally:
        await cat.close()


async def test_the_tails_rows_are_the_recorded_events(catalog: Catalog) -> None:
    """``recorded_rows`` (plain tuples, parsed by hand on SQLite) says what ``events_recorded``
    says, page by page along the keyset cursor."""
    rcatalog = RecommenderCatalog(catalog.engine)
    base = datetime(2025, 1, 1, 12, tzinfo=UTC)
    batch = [
        EventRecord(uuid.uuid4(), f"u{n % 3}", uuid.uuid4(), "use", 1.5 + n,
                    base + timedelta(seconds=n, microseconds=1234 * n))
        for n in range(7)
    ]  # fmt: skip
    await rcatalog.add_events(batch[:4])
    await rcatalog.add_events(batch[4:])
    upto = datetime.now(UTC) + timedelta(seconds=1)
    after = None
    for expected in (5, 2, 0):
        records = await rcatalog.events_recorded(after, upto, 5)
        rows = await rcatalog.recorded_rows(after, upto, 5)
        assert len(rows) == expected
        assert rows == [
            (e.id.int, e.user, e.asset.int, e.kind, e.weight, e.at, e.recorded_at) for e in records
        ]
        if records:
            assert records[-1].recorded_at is not None
            after = (records[-1].recorded_at, records[-1].id)
    stored = {e.id: e for e in await rcatalog.events_recorded(None, upto)}
    assert {e.id: (e.user, e.asset, e.weight, e.at) for e in batch} == {
        k: (e.user, e.asset, e.weight, e.at) for k, e in stored.items()
    }


async def test_a_newer_schema_is_refused(catalog: Catalog) -> None:
    async with catalog.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaMismatch, match="newer than this code"):
        await check_schema(catalog.engine)


# -- blobs and assets ---------------------------------------------------------------------------


async def test_concurrent_blob_records_share_transactions(catalog: Catalog) -> None:
    """Group commit: 40 uploads finishing at once cost a few transactions, not 40; each call
    returns with its row committed, and of two records of one blob the first stays."""
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(catalog.engine.sync_engine, "commit", count)
    try:
        infos = [blob_info(f"mesh {i}".encode()) for i in range(40)]
        twice = infos[7]
        await asyncio.gather(
            *(catalog.record_blob(info, {"n": i}) for i, info in enumerate(infos)),
            catalog.record_blob(twice, {"n": "again"}),
        )
    finally:
        event.remove(catalog.engine.sync_engine, "commit", count)
    assert 1 <= commits <= 3
    records = [await catalog.blob(info.digest.hex) for info in infos]
    assert [r.facts if r else None for r in records] == [{"n": i} for i in range(40)]


async def test_a_blob_record_that_cannot_be_written_fails_alone(catalog: Catalog) -> None:
    good = [blob_info(f"fine {i}".encode()) for i in range(5)]
    bad = blob_info(b"facts that are not JSON")
    results = await asyncio.gather(
        *(catalog.record_blob(info, {"ok": True}) for info in good[:2]),
        catalog.record_blob(bad, {"not json": object()}),
        *(catalog.record_blob(info, {"ok": True}) for info in good[2:]),
        return_exceptions=True,
    )
    assert [isinstance(r, Exception) for r in results] == [False, False, True, False, False, False]
    assert all([await catalog.blob(info.digest.hex) for info in good])
    assert await catalog.blob(bad.digest.hex) is None


async def test_blobs_are_recorded_once(catalog: Catalog) -> None:
    info = blob_info(b"abc")
    await catalog.record_blob(info, None)
    await catalog.record_blob(info, {"ignored": True})  # the first record stays
    record = await catalog.blob(info.digest.hex)
    assert record is not None
    assert record.size == 3
    assert record.sha256 == info.sha256.hex()
    assert record.facts is None
    assert record.created_at.tzinfo is not None


async def test_asset_life_cycle(catalog: Catalog) -> None:
    digest = await a_blob(catalog)
    with pytest.raises(UnknownBlob):
        await catalog.create_asset(
            name="x", kind="prop", blob_digest="0" * 64, attributes={}, owner="ann"
        )
    asset = await catalog.create_asset(
        name="Chair", kind="prop", blob_digest=digest, attributes={"color": {"r": 1}}, owner="ann"
    )
    assert asset.version == 1
    assert await catalog.asset(asset.id) == asset
    assert await catalog.asset(uuid.uuid4()) is None
    newer = await a_blob(catalog, b"mesh v2")
    patched = await catalog.update_asset(
        asset.id,
        AssetChanges(blob_digest=newer, attributes_patch={"color": {"g": 2}, "tags": ["wood"]}),
        changed_by="bob",
    )
    assert patched.version == 2
    assert patched.blob_digest == newer
    assert patched.attributes == {"color": {"r": 1, "g": 2}, "tags": ["wood"]}
    with pytest.raises(VersionConflict):
        await catalog.update_asset(
            asset.id, AssetChanges(name="Stool"), changed_by="c", if_version=1
        )
    with pytest.raises(UnknownBlob):
        await catalog.update_asset(asset.id, AssetChanges(blob_digest="1" * 64), changed_by="c")
    with pytest.raises(AssetNotFound):
        await catalog.update_asset(uuid.uuid4(), AssetChanges(name="?"), changed_by="c")
    history = await catalog.versions(asset.id)
    assert [(v.version, v.blob_digest, v.changed_by) for v in history] == [
        (1, digest, "ann"),
        (2, newer, "bob"),
    ]


async def test_listing_filters_and_keyset_pages(catalog: Catalog) -> None:
    digest = await a_blob(catalog)
    made = []
    for i in range(25):
        made.append(
            await catalog.create_asset(
                name=f"{'avatar' if i % 2 else 'world'}_{i:02d}%",
                kind="avatar" if i % 2 else "world",
                blob_digest=digest,
                attributes={},
                owner="ann" if i < 10 else "bob",
            )
        )
    seen = []
    after = None
    while True:
        page = await catalog.list_assets(after=after, limit=7)
        seen += page.items
        if page.next_after is None:
            break
        after = page.next_after
    assert sorted(a.id for a in seen) == sorted(a.id for a in made)
    assert [a.id for a in seen] == sorted(a.id for a in seen)
    avatars = await catalog.list_assets(kind="avatar", limit=100)
    assert {a.kind for a in avatars.items} == {"avatar"}
    assert len(avatars.items) == 12
    bobs_worlds = await catalog.list_assets(kind="world", owner="bob", limit=100)
    assert len(bobs_worlds.items) == 8
    assert len((await catalog.list_assets(name_prefix="avatar_0", limit=100)).items) == 5
    assert (await catalog.list_assets(name_prefix="%", limit=100)).items == []  # escaped


def test_merge_patch_follows_rfc_7396() -> None:
    # The examples of RFC 7396, appendix A.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


# -- conflicts and retries --------------------------------------------------------------------


async def test_racing_updates_all_land_through_retries(
    catalog: Catalog, catalog_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    digest = await a_blob(catalog)
    asset = await catalog.create_asset(
        name="hot", kind="prop", blob_digest=digest, attributes={}, owner="ann"
    )
    caplog.set_level(logging.DEBUG, logger="origin.catalog.transactions")
    results = await asyncio.gather(
        *(
            catalog.update_asset(
                asset.id, AssetChanges(attributes_patch={f"k{i}": i}), changed_by=f"u{i}"
            )
            for i in range(12)
        )
    )
    final = await catalog.asset(asset.id)
    assert final is not None
    assert final.version == 13
    assert final.attributes == {f"k{i}": i for i in range(12)}  # no update was lost
    assert sorted(r.version for r in results) == list(range(2, 14))
    assert [v.version for v in await catalog.versions(asset.id)] == list(range(1, 14))
    if catalog_url.startswith("postgresql"):
        assert "transaction conflict (40001)" in caplog.text


async def test_retry_helper_completes_every_conflicting_transaction(
    catalog: Catalog, catalog_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with catalog.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        await conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    caplog.set_level(logging.DEBUG, logger="origin.catalog.transactions")

    async def increment(conn: AsyncConnection) -> None:
        n = (await conn.execute(text("SELECT n FROM counter WHERE id = 1"))).scalar_one()
        await asyncio.sleep(0.01)  # widen the window so the transactions overlap
        await conn.execute(text("UPDATE counter SET n = :n WHERE id = 1"), {"n": n + 1})

    await asyncio.gather(*(transaction(catalog.engine, increment, attempts=50) for _ in range(10)))
    async with catalog.engine.connect() as conn:
        assert (await conn.execute(text("SELECT n FROM counter"))).scalar_one() == 10
    if catalog_url.startswith("postgresql"):
        assert caplog.text.count("transaction conflict (40001)") >= 1


# -- CockroachDB rules (docs/COCKROACHDB.md) ---------------------------------------------------


def test_no_sequence_or_serial_keys() -> None:
    for table in metadata.tables.values():
        for column in table.primary_key.columns:
            integer_alone = isinstance(column.type, Integer) and len(table.primary_key.columns) == 1
            assert not integer_alone, f"{table.name}.{column.name} would be a SERIAL hot key"


def test_no_advisory_locks_listen_notify_or_stray_transactions() -> None:
    sources = {p: p.read_text() for p in (REPO / "origin").rglob("*.py")}
    for path, source in sources.items():
        assert not re.search(r"pg_advisory|\bLISTEN\b|\bNOTIFY\b", source), path
        if path.name not in ("transactions.py", "migrate.py"):
            # Writes go through transaction(), which retries; nothing opens its own.
            assert "engine.begin()" not in source, path


def test_schema_compiles_for_cockroachdb() -> None:
    """CockroachDB is not installable here; its dialect still renders our DDL, checked here."""
    from sqlalchemy.schema import CreateTable
    from sqlalchemy_cockroachdb.asyncpg import CockroachDBDialect_asyncpg

    dialect = CockroachDBDialect_asyncpg()
    ddl = "\n".join(str(CreateTable(t).compile(dialect=dialect)) for t in metadata.tables.values())
    assert "JSONB" in ddl
    assert "UUID" in ddl
    assert "SERIAL" not in ddl.upper()
    assert "SEQUENCE" not in ddl.upper()


def test_cockroachdb_urls_get_the_cockroachdb_dialect() -> None:
    from origin.catalog import create_engine

    engine = create_engine("cockroachdb+asyncpg://root@127.0.0.1:26257/origin")
    assert engine.dialect.name == "cockroachdb"
    assert engine.dialect.driver == "asyncpg"


async def test_conflicts_that_never_clear_end_in_catalog_busy(catalog: Catalog) -> None:
    from origin.catalog import CatalogBusy
    from origin.catalog.transactions import Conflict

    attempts = 0

    async def always_conflicting(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        raise Conflict("someone else, every time")

    with pytest.raises(CatalogBusy):
        await transaction(catalog.engine, always_conflicting, attempts=4, base_delay=0.001)
    assert attempts == 4
