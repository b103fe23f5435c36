"""Serving without a query per request: precomputed lists, and fold-in fed by the tail of the
events table, across two workers (two apps on one catalog and store)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from origin import create_app
from origin.appkeys import CATALOG
from origin.catalog import Catalog, EventRecord, RecommenderCatalog, upgrade
from origin.catalog.schema import assets
from origin.recent_events import RecentEvents
from origin.recommend_routes import BUFFER, RECOMMENDER, _check_fast, _check_item, _event_ids
from recommender import (
    ALSConfig,
    InteractionConfig,
    Recommender,
    SyntheticConfig,
    build_from_columns,
    generate,
    precompute_top,
)
from recommender import train as fit

from .conftest import AUTH, Client
from .test_recommend_api import load_world, make_config, recs, train

LAG = 0.2


async def blob(api: Client) -> str:
    resp = await api.post("/blobs", data=uuid.uuid4().bytes, headers=AUTH)
    return str((await resp.json())["digest"])


@pytest.fixture
async def workers(catalog_url: str, tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    catalog = Catalog.connect(catalog_url)
    await upgrade(catalog.engine)
    await catalog.close()
    config = make_config(tmp_path, catalog_url, recommender_commit_lag=LAG)
    async with (
        TestClient(TestServer(create_app(config))) as one,
        TestClient(TestServer(create_app(config))) as two,
    ):
        yield one, two


async def test_a_backdated_event_folds_in_on_every_worker(workers: tuple[Client, Client]) -> None:
    one, two = workers
    world = await load_world(one)
    await train(one)
    await two.app[RECOMMENDER].refresh()
    user, group = world.heavy_user()
    first = [i["asset"] for i in (await recs(two, user, limit="10"))["items"]]
    assert first == [i["asset"] for i in (await recs(one, user, limit="10"))["items"]]
    other = (group + 1) % world.data.config.communities
    liked = [world.asset_ids[int(i)] for i in world.data.community_items(other)[:4]]
    # Dated long before the model's newest event: only the server's recorded_at shows it
    # is newer than the model.
    events = [
        {"user": user, "asset": a, "kind": "like", "weight": 20, "at": "2000-01-01T00:00:00Z"}
        for a in liked
    ]
    assert (await one.post("/events", json={"events": events}, headers=AUTH)).status == 202
    here = [i["asset"] for i in (await recs(one, user, limit="10"))["items"]]
    assert here != first
    assert not set(liked) & set(here)
    await one.app[BUFFER].flush()
    await asyncio.sleep(LAG + 0.05)
    await two.app[RECOMMENDER].recent.poll()  # (or its own tail task did it already)
    assert {e.asset for e in two.app[RECOMMENDER].recent.for_user(user)} == {
        uuid.UUID(a) for a in liked
    }
    there = [i["asset"] for i in (await recs(two, user, limit="10"))["items"]]
    assert there == here
    # A new model trained on them takes them over: nothing counts twice.
    await train(two)
    await one.app[RECOMMENDER].refresh()
    assert list(one.app[RECOMMENDER].recent.for_user(user)) == []
    assert list(two.app[RECOMMENDER].recent.for_user(user)) == []
    status = await (await two.get("/admin/recommender", headers=AUTH)).json()
    assert status["events"] == world.data.config.n_events + len(liked)


async def test_precomputed_lists_respect_deletions_kind_and_owned(
    workers: tuple[Client, Client],
) -> None:
    one, _two = workers
    world = await load_world(one)
    await train(one)
    service = one.app[RECOMMENDER]
    loaded = service.loaded
    assert loaded is not None
    assert loaded.recommender.model.top_k > 0
    user, _group = world.heavy_user()
    stored = loaded.recommender.recommend_stored(user, 10)
    assert stored is not None  # this answer is a lookup
    body = await recs(one, user, limit="10")
    assert [i["asset"] for i in body["items"]] == stored.ids
    assert body["items"] == [
        {"asset": a, "score": s, "name": service.assets[a].name, "kind": service.assets[a].kind}
        for a, s in stored.items
    ]
    live = loaded.recommender.recommend(user, 10, recent=())
    assert [i["asset"] for i in body["items"]] == live.ids
    c = world.data.columns
    owned = {world.asset_ids[i] for i in c.item[c.user == c.user_ids.index(user)].tolist()}
    assert not owned & set(stored.ids)
    gone = stored.ids[0]
    async with one.app[CATALOG].engine.begin() as conn:
        await conn.execute(
            update(assets)
            .where(assets.c.id == uuid.UUID(gone))
            .values(deleted=1, updated_at=datetime.now(UTC))
        )
    await service.refresh()
    after = [i["asset"] for i in (await recs(one, user, limit="10"))["items"]]
    assert gone not in after
    assert after[:9] == stored.ids[1:]
    # A renamed asset: the cached fragments of the answer follow.
    renamed = stored.ids[1]
    async with one.app[CATALOG].engine.begin() as conn:
        await conn.execute(
            update(assets)
            .where(assets.c.id == uuid.UUID(renamed))
            .values(name="Renamed", updated_at=datetime.now(UTC))
        )
    await service.refresh()
    first = (await recs(one, user, limit="10"))["items"][0]
    assert (first["asset"], first["name"]) == (renamed, "Renamed")
    props = (await recs(one, user, limit="5", kind="prop"))["items"]
    assert props
    assert {i["kind"] for i in props} == {"prop"}
    # More than the stored list holds: scored live, still without deleted or owned assets.
    many = {i["asset"] for i in (await recs(one, user, limit="100"))["items"]}
    assert len(many) > 50
    assert gone not in many
    assert not owned & many


def test_the_fast_event_check_agrees_with_the_full_one() -> None:
    asset = uuid.uuid4()
    live = {str(asset): asset}
    kinds = {"use": 2.0, "like": 4.0}
    now = datetime.now(UTC)
    base = {"user": "ann", "asset": str(asset), "kind": "use"}
    variants: list[Any] = [
        base,
        {**base, "weight": 3},
        {**base, "weight": 2.5},
        {**base, "weight": True},
        {**base, "weight": 10**400},
        {**base, "weight": float("nan")},
        {**base, "weight": 0},
        {**base, "at": "2020-01-01T00:00:00Z"},
        {**base, "at": "2020-01-01T00:00:00"},
        {**base, "at": None},
        {**base, "at": "2999-01-01T00:00:00+00:00"},
        {**base, "asset": str(asset).upper()},
        {**base, "asset": str(uuid.uuid4())},
        {**base, "asset": ["x"]},
        {**base, "kind": "sneeze"},
        {**base, "user": ""},
        {**base, "user": "a\x00b"},
        {**base, "extra": 1},
        ["not", "an", "object"],
    ]
    fast_taken = 0
    for item in variants:
        fast = _check_fast(item, kinds, live, now)
        errors, full = _check_item(0, item, kinds, now)
        if fast is not None:
            fast_taken += 1
            assert not errors
            assert fast == full, item
    assert fast_taken == 4  # base, an int and a float weight, a backdated `at`


def test_time_ordered_event_ids_are_uuid7_and_grow_with_time() -> None:
    first = _event_ids(1000, time_ordered=True)
    time.sleep(0.002)
    later = _event_ids(1000, time_ordered=True)
    assert len(set(first + later)) == 2000
    assert {i.version for i in first} == {7}
    assert {i.variant for i in first} == {uuid.RFC_4122}
    assert max(first) < min(later)  # a later batch appends to the primary-key index
    assert abs((first[0].int >> 80) / 1000 - time.time()) < 5  # Unix milliseconds
    assert {i.version for i in _event_ids(10, time_ordered=False)} == {4}


async def test_a_quiet_catalog_is_not_read_again_on_every_poll(
    workers: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _two = workers
    monkeypatch.setattr("origin.recommendations._ASSET_OVERLAP", timedelta(seconds=0.3))
    service = one.app[RECOMMENDER]
    for n in range(3):  # created together, like a bulk import
        await one.post("/assets", json={"name": f"a{n}", "kind": "prop", "blob": await blob(one)},
                       headers=AUTH)  # fmt: skip
    assert len(await service._read_asset_changes()) >= 3
    await asyncio.sleep(0.4)
    await service._read_asset_changes()  # still inside the overlap of the previous read
    await asyncio.sleep(0.4)
    assert await service._read_asset_changes() == []


async def test_before_a_model_the_fallback_leaves_out_what_the_user_has(
    workers: tuple[Client, Client], tmp_path: Path, catalog_url: str
) -> None:
    """No model yet, so popularity; what the user took is left out on the worker that took it
    at once, on the other worker once its tail read it, and on a worker started later (whose
    first tail read starts at the beginning: there is no per-user query to ask instead)."""
    one, two = workers
    ids = []
    for n in range(6):
        body = {"name": f"a{n}", "kind": "prop", "blob": await blob(one)}
        resp = await one.post("/assets", json=body, headers=AUTH)
        ids.append(str((await resp.json(content_type=None))["identifier"]))
    crowd = [  # asset n is taken by 6 - n people: popularity order is ids' order
        {"user": f"crowd-{u}", "asset": a, "kind": "use"}
        for n, a in enumerate(ids)
        for u in range(6 - n)
    ]
    assert (await one.post("/events", json={"events": crowd}, headers=AUTH)).status == 202
    await one.app[BUFFER].flush()
    for worker in (one, two):
        await worker.app[RECOMMENDER].refresh()
        assert [i["asset"] for i in (await recs(worker, "ann", limit="3"))["items"]] == ids[:3]
    took = {"user": "ann", "asset": ids[0], "kind": "like"}
    assert (await one.post("/events", json={"events": [took]}, headers=AUTH)).status == 202
    expected = ids[1:4]
    answer = await recs(one, "ann", limit="3")  # still in the buffer
    assert (answer["fallback"], answer["model_version"]) == (True, None)
    assert [i["asset"] for i in answer["items"]] == expected
    await one.app[BUFFER].flush()
    assert [i["asset"] for i in (await recs(one, "ann", limit="3"))["items"]] == expected
    await asyncio.sleep(LAG + 0.05)
    await two.app[RECOMMENDER].recent.poll()  # (or its own tail task did it already)
    assert [i["asset"] for i in (await recs(two, "ann", limit="3"))["items"]] == expected
    # Someone else's list is unchanged.
    assert [i["asset"] for i in (await recs(two, "bob", limit="3"))["items"]] == ids[:3]
    config = make_config(tmp_path / "three", catalog_url, recommender_commit_lag=LAG)
    async with TestClient(TestServer(create_app(config))) as three:
        for _ in range(100):  # its first tail read runs at start, in the background
            if list(three.app[RECOMMENDER].recent.for_user("ann")):
                break
            await asyncio.sleep(0.05)
        assert [i["asset"] for i in (await recs(three, "ann", limit="3"))["items"]] == expected


async def test_events_after_the_model_reach_its_popularity_ranking(
    workers: tuple[Client, Client],
) -> None:
    """The first model is trained on nothing; events after it, on an asset made after it,
    make the fallback of every worker, and a user who took it is not offered it back."""
    one, two = workers
    await train(one)
    await two.app[RECOMMENDER].refresh()
    assert (await recs(two, "stranger"))["items"] == []
    body = {"name": "hot", "kind": "prop", "blob": await blob(one)}
    hot = str(
        (await (await one.post("/assets", json=body, headers=AUTH)).json(content_type=None))[
            "identifier"
        ]
    )
    likes = [{"user": f"fan-{n}", "asset": hot, "kind": "like"} for n in range(5)]
    assert (await one.post("/events", json={"events": likes}, headers=AUTH)).status == 202
    await one.app[BUFFER].flush()
    for worker in (one, two):
        await worker.app[RECOMMENDER].refresh()  # the asset, as its poll would
        for _ in range(300):  # the poll task counts what the tail read, every poll interval
            answer = await recs(worker, "stranger")
            if answer["items"]:
                break
            await asyncio.sleep(0.05)
        assert ([i["asset"] for i in answer["items"]], answer["fallback"]) == ([hot], True)
        assert (await recs(worker, "fan-0"))["items"] == []
    # A new model takes the events over: counted once, not again on top.
    await train(two)
    await one.app[RECOMMENDER].refresh()
    for worker in (one, two):
        await worker.app[RECOMMENDER]._count_recent_in_popularity()
        [item] = (await recs(worker, "stranger"))["items"]
        assert item["asset"] == hot
        assert item["score"] == pytest.approx(5 * 4.0, rel=1e-3)


async def test_what_a_user_has_is_left_out_however_old_or_light_their_events(
    catalog_url: str, tmp_path: Path
) -> None:
    """An hour's half-life: a year-old event weighs 2^-8760, nothing in float32, as does a
    weight of 1e-300. The model still knows the user has those assets."""
    catalog = Catalog.connect(catalog_url)
    await upgrade(catalog.engine)
    await catalog.close()
    config = make_config(tmp_path, catalog_url, recommender_half_life=3600)
    async with TestClient(TestServer(create_app(config))) as api:
        ids = []
        for n in range(6):
            body = {"name": f"a{n}", "kind": "prop", "blob": await blob(api)}
            resp = await api.post("/assets", json=body, headers=AUTH)
            ids.append(str((await resp.json(content_type=None))["identifier"]))
        old = (datetime.now(UTC) - timedelta(days=365)).isoformat()
        events = [
            {"user": "old", "asset": ids[0], "kind": "like", "at": old},
            {"user": "old", "asset": ids[1], "kind": "like", "at": old},
            {"user": "light", "asset": ids[0], "kind": "like", "weight": 1e-300},
            {"user": "light", "asset": ids[2], "kind": "like"},
            *({"user": f"crowd-{u}", "asset": a, "kind": "use"} for u in range(3) for a in ids),
        ]
        assert (await api.post("/events", json={"events": events}, headers=AUTH)).status == 202
        await train(api)
        for user, has in (("old", {ids[0], ids[1]}), ("light", {ids[0], ids[2]})):
            got = {i["asset"] for i in (await recs(api, user, limit="10"))["items"]}
            assert got, user
            assert not got & has, (user, got)


async def test_the_tail_before_a_model_is_bounded(
    workers: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = workers
    monkeypatch.setattr("origin.recent_events.PRE_MODEL_MAX", 5)
    monkeypatch.setattr("origin.recent_events._PAGE", 2)
    body = {"name": "a", "kind": "prop", "blob": await blob(one)}
    resp = await one.post("/assets", json=body, headers=AUTH)
    asset = str((await resp.json(content_type=None))["identifier"])
    events = [{"user": f"u{n}", "asset": asset, "kind": "use"} for n in range(12)]
    assert (await one.post("/events", json={"events": events}, headers=AUTH)).status == 202
    await one.app[BUFFER].flush()
    assert one.app[RECOMMENDER].recent.count == 5  # its own writes, up to the bound
    await asyncio.sleep(LAG + 0.05)
    recent = two.app[RECOMMENDER].recent
    await recent.poll()
    assert 5 <= recent.count <= 6  # a page at a time, stopping once over the bound
    await recent.poll()
    assert 5 <= recent.count <= 6


def test_users_without_a_training_row_get_the_one_popularity_answer() -> None:
    """The generator names users who took nothing: they are in the model with an empty row.
    Such a user, like an unknown one, gets plain popularity: a server caches that answer once
    (RecommenderService) instead of scoring it in its thread for every request."""
    data = generate(SyntheticConfig(n_users=300, n_items=80, n_events=900, communities=3, seed=2))
    model = fit(
        build_from_columns(data.columns, InteractionConfig()),
        ALSConfig(factors=8, iterations=3, num_threads=1, seed=0),
    )
    model, _ = precompute_top(model, 20)
    recommender = Recommender(model)
    rows = model.user_items.indptr
    empty = [u for u in range(len(model.user_ids)) if rows[u + 1] == rows[u]]
    full = [u for u in range(len(model.user_ids)) if rows[u + 1] > rows[u]]
    assert empty
    assert full
    idle = model.user_ids[empty[0]]
    assert not recommender.has_history(idle)
    assert not recommender.has_history("never-seen")
    assert recommender.has_history(model.user_ids[full[0]])
    assert recommender.recommend_stored(idle, 5) is None
    popular = recommender.recommend("never-seen", 5)
    assert popular.fallback
    assert popular.items
    assert recommender.recommend(idle, 5) == popular


async def test_a_poll_beside_another_reads_everything_before_it_returns(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two polls at once (the background tail and anyone else's): the second one returns only
    once everything recorded before it is read. It used to read the page the first had just
    read, see the cursor moved, and return early with most rows unread."""
    monkeypatch.setattr("origin.recent_events._PAGE", 2)
    rcatalog = RecommenderCatalog(catalog.engine)
    now = datetime.now(UTC)
    await rcatalog.add_events(
        [EventRecord(uuid.uuid4(), f"u{n}", uuid.uuid4(), "use", 1.0, now) for n in range(12)]
    )
    recent = RecentEvents(rcatalog, commit_lag=0.0)
    background = asyncio.create_task(recent.poll())
    await asyncio.sleep(0)  # it has asked for its first page
    await recent.poll()
    assert recent.count == 12
    assert await background == 12
