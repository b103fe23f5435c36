"""POST /events and download events, on SQLite and PostgreSQL; the event buffer's bounds."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from origin import Config, create_app
from origin.appkeys import TOKENS
from origin.catalog import Catalog, EventRecord, RecommenderCatalog, upgrade
from origin.events import EventBuffer
from origin.recommend_routes import BUFFER, DOWNLOADS

from .conftest import ADMIN_TOKEN, AUTH, Client
from .postgres_server import PostgresServer


def rcatalog(api: Client) -> RecommenderCatalog:
    from origin.appkeys import CATALOG

    return RecommenderCatalog(api.app[CATALOG].engine)


async def stored(api: Client, user: str) -> list[EventRecord]:
    """What the catalog has for ``user`` once this worker's buffer is written (a scan: the
    events table has no index on users, and only tests ask this)."""
    await api.app[BUFFER].flush()
    pages = [page async for page in rcatalog(api).event_pages()]
    return [e for page in pages for e in page if e.user == user]


async def new_asset(api: Client, kind: str = "prop") -> tuple[str, str]:
    resp = await api.post("/blobs", data=os.urandom(64), headers=AUTH)
    digest: str = (await resp.json())["digest"]
    resp = await api.post(
        "/assets", json={"name": "Thing", "kind": kind, "blob": digest}, headers=AUTH
    )
    assert resp.status == 201
    return str((await resp.json(content_type=None))["identifier"]), digest


async def user_token(api: Client, subject: str, scopes: tuple[str, ...] = ("write",)) -> str:
    _token, secret = await api.app[TOKENS].create(subject, scopes)
    return secret


async def problem(resp: ClientResponse, status: int, slug: str) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json(content_type=None)
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json"
    assert body["type"] == f"/problems/{slug}"
    return body


async def test_a_valid_batch_is_accepted_and_written(api: Client) -> None:
    a, _ = await new_asset(api)
    b, _ = await new_asset(api)
    at = "2025-03-01T12:00:00+00:00"
    events = [
        {"user": "ana", "asset": a, "kind": "download"},
        {"user": "ana", "asset": b, "kind": "like", "weight": 2.5, "at": at},
    ]
    resp = await api.post("/events", json={"events": events}, headers=AUTH)
    assert resp.status == 202, await resp.text()
    assert (await resp.json()) == {"accepted": 2}
    rows = await stored(api, "ana")
    assert sorted((str(r.asset), r.kind, r.weight) for r in rows) == sorted(
        [(a, "download", 1.0), (b, "like", 2.5)]
    )
    liked = next(r for r in rows if r.kind == "like")
    assert liked.at == datetime(2025, 3, 1, 12, tzinfo=UTC)


async def test_one_bad_item_stores_nothing_and_names_every_error(api: Client) -> None:
    a, _ = await new_asset(api)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    events: list[Any] = [
        {"user": "bo", "asset": a, "kind": "use"},  # fine on its own
        {"user": "bo", "asset": str(uuid.uuid4()), "kind": "use"},  # unknown asset
        {"user": "bo", "asset": a, "kind": "sneeze"},  # unknown kind
        {"user": "", "asset": "not-a-uuid", "kind": "use", "weight": -1},
        {"user": "bo", "asset": a, "kind": "use", "at": "yesterday"},
        {"user": "bo", "asset": a, "kind": "use", "at": "2025-01-01T00:00:00"},  # no offset
        {"user": "bo", "asset": a, "kind": "use", "at": future},
        {"user": "bo", "asset": a, "kind": "use", "colour": "red"},
        "not an object",
    ]
    resp = await api.post("/events", json={"events": events}, headers=AUTH)
    body = await problem(resp, 422, "invalid-events")
    got = {(e["index"], e["field"]) for e in body["errors"]}
    assert got == {
        (1, "asset"), (2, "kind"), (3, "user"), (3, "asset"), (3, "weight"), (4, "at"),
        (5, "at"), (6, "at"), (7, "colour"), (8, ""),
    }  # fmt: skip
    assert await stored(api, "bo") == []


async def test_malformed_bodies_are_400(api: Client) -> None:
    resp = await api.post("/events", data=b"{nope", headers=AUTH)
    await problem(resp, 400, "bad-json")
    resp = await api.post("/events", json=[{"user": "x"}], headers=AUTH)
    await problem(resp, 400, "bad-json")
    resp = await api.post("/events", json={"events": {"user": "x"}}, headers=AUTH)
    await problem(resp, 400, "bad-json")


async def test_posting_needs_a_write_token_for_your_own_events(api: Client) -> None:
    a, _ = await new_asset(api)
    body = {"events": [{"user": "cy", "asset": a, "kind": "use"}]}
    await problem(await api.post("/events", json=body), 401, "unauthorized")
    bad = {"Authorization": "Bearer orgn_nope"}
    await problem(await api.post("/events", json=body, headers=bad), 401, "unauthorized")
    reader = {"Authorization": f"Bearer {await user_token(api, 'cy', ('read',))}"}
    await problem(await api.post("/events", json=body, headers=reader), 403, "forbidden")
    other = {"Authorization": f"Bearer {await user_token(api, 'dee')}"}
    await problem(await api.post("/events", json=body, headers=other), 403, "forbidden")
    own = {"Authorization": f"Bearer {await user_token(api, 'cy')}"}
    assert (await api.post("/events", json=body, headers=own)).status == 202
    assert len(await stored(api, "cy")) == 1


async def test_content_download_with_a_token_is_one_event(api: Client) -> None:
    a, _digest = await new_asset(api)
    headers = {"Authorization": f"Bearer {await user_token(api, 'eve', ('read',))}"}
    resp = await api.get(f"/assets/{a}/content", headers=headers, allow_redirects=False)
    assert resp.status == 302
    # Following the redirect with the same token is the same download, not a second one.
    resp = await api.get(f"/assets/{a}/content", headers=headers)
    assert resp.status == 200
    await asyncio.sleep(0.05)  # the blob GET is attributed by a background task
    rows = await stored(api, "eve")
    assert [(str(r.asset), r.kind) for r in rows] == [(a, "download")]


async def test_anonymous_and_bad_tokens_record_nothing(api: Client) -> None:
    a, digest = await new_asset(api)
    assert (await api.get(f"/blobs/{digest}")).status == 200
    assert (await api.get(f"/assets/{a}/content")).status == 200
    bad = {"Authorization": "Bearer orgn_unknown"}
    assert (await api.get(f"/blobs/{digest}", headers=bad)).status == 200  # reads stay public
    await problem(await api.get(f"/assets/{a}/content", headers=bad), 401, "unauthorized")
    await asyncio.sleep(0.05)
    await api.app[BUFFER].flush()
    assert await rcatalog(api).event_count() == 0


async def test_blob_get_with_a_token_is_attributed_to_the_asset(api: Client) -> None:
    a, digest = await new_asset(api)
    headers = {"Authorization": f"Bearer {await user_token(api, 'fay', ('read',))}"}
    for _ in range(3):  # ranged re-reads of one download count once
        resp = await api.get(f"/blobs/{digest}", headers={**headers, "Range": "bytes=0-9"})
        assert resp.status == 206
    await asyncio.sleep(0.05)
    assert [(str(r.asset), r.kind) for r in await stored(api, "fay")] == [(a, "download")]
    assert api.app[DOWNLOADS].enabled


# -- the buffer itself --------------------------------------------------------------------


def _event(user: str = "u") -> EventRecord:
    return EventRecord(uuid.uuid4(), user, uuid.uuid4(), "use", 1.0, datetime.now(UTC))


class _Sink:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.open = asyncio.Event()
        self.fail = 0

    async def __call__(self, batch: Sequence[EventRecord]) -> None:
        await self.open.wait()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("catalog down")
        self.batches.append(len(batch))


async def test_a_full_buffer_makes_writers_wait_and_drops_downloads() -> None:
    sink = _Sink()
    buffer = EventBuffer(sink, capacity=10, batch_size=4, flush_interval=0.01)
    buffer.start()
    await buffer.put([_event() for _ in range(8)])
    tasks = [asyncio.create_task(buffer.put([_event() for _ in range(5)]))]
    blocked = tasks[0]
    await asyncio.sleep(0.05)
    assert not blocked.done()  # 8 + 5 > 10: waits for the catalog
    assert buffer.offer(_event())
    assert buffer.offer(_event())
    assert not buffer.offer(_event())  # full: a download is dropped, never waited for
    assert buffer.dropped == 1
    assert len(buffer.pending_for("u")) == 10  # visible to this worker's recommendations
    sink.open.set()
    await asyncio.wait_for(blocked, 5)
    await buffer.close()
    assert sum(sink.batches) == 15
    assert max(sink.batches) <= 4
    assert buffer.pending_for("u") == []


async def test_failed_writes_are_kept_and_shutdown_flushes() -> None:
    sink = _Sink()
    sink.open.set()
    sink.fail = 2
    buffer = EventBuffer(sink, capacity=100, batch_size=50, flush_interval=0.01)
    buffer.start()
    await buffer.put([_event() for _ in range(30)])
    for _ in range(200):  # two failures, then a retry (after a back-off) succeeds
        if sink.batches:
            break
        await asyncio.sleep(0.05)
    assert sink.batches == [30]
    assert sink.fail == 0
    buffer2 = EventBuffer(sink, capacity=100, batch_size=50, flush_interval=60)
    buffer2.start()
    await buffer2.put([_event() for _ in range(7)])
    await buffer2.close()  # long before the interval: shutdown writes what is left
    assert sum(sink.batches) == 37
    await buffer.close()


async def test_events_the_catalog_refuses_are_dropped_and_the_rest_written(
    postgres: PostgresServer,
) -> None:
    # Only PostgreSQL refuses these (SQLite keeps any length and NUL). Routes check users
    # before they reach the buffer; this is the buffer's own guard for what gets past them.
    catalog = Catalog.connect(postgres.create_database())
    await upgrade(catalog.engine)
    events = RecommenderCatalog(catalog.engine)

    async def write(batch: Sequence[EventRecord]) -> None:
        await events.add_events(batch)

    buffer = EventBuffer(write, capacity=100, batch_size=50, flush_interval=0.01)
    buffer.start()
    batch = [_event() for _ in range(20)]
    batch[3] = _event("u" * 300)  # longer than the column: SQLSTATE 22001
    batch[17] = _event("a\x00b")  # no NUL in PostgreSQL text: 22021
    await buffer.put(batch)
    for _ in range(200):  # before, the batch failed every retry and held up all later events
        if not len(buffer):
            break
        await asyncio.sleep(0.05)
    late = _event()
    await buffer.put([late])
    await buffer.close()
    assert (buffer.written, buffer.rejected) == (19, 2)
    stored_ids = {e.id for page in [p async for p in events.event_pages()] for e in page}
    assert stored_ids == {e.id for e in batch if e.user == "u"} | {late.id}
    await catalog.close()


async def test_events_are_flushed_when_the_app_shuts_down(catalog_url: str, tmp_path: Path) -> None:
    catalog = Catalog.connect(catalog_url)
    await upgrade(catalog.engine)
    config = Config(
        data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, database_url=catalog_url,
        recommender_flush_interval=60, recommender_train_interval=0,
    ).validate()  # fmt: skip
    async with TestClient(TestServer(create_app(config))) as api:
        a, _ = await new_asset(api)
        body = {"events": [{"user": "gus", "asset": a, "kind": "use"}] * 3}
        assert (await api.post("/events", json=body, headers=AUTH)).status == 202
        assert await RecommenderCatalog(catalog.engine).event_count() == 0  # still buffered
    assert await RecommenderCatalog(catalog.engine).event_count() == 3
    await catalog.close()
