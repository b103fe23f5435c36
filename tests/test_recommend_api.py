"""Recommendations end to end over HTTP, on SQLite and PostgreSQL: events in, a training run in
its own process, rankings and similar assets out; the trainer's lease."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update

from blobstore import Digest
from origin import Config, create_app
from origin.appkeys import CATALOG, STORE, TOKENS
from origin.catalog import Catalog, RecommenderCatalog, upgrade
from origin.catalog.schema import assets, models
from origin.catalog.sql import utc
from origin.recommend_routes import BUFFER, RECOMMENDER
from origin.trainer import LEASE, Trainer, TrainerBusy
from recommender import SyntheticConfig, SyntheticData, generate

from .conftest import ADMIN_TOKEN, AUTH, Client

SMALL = SyntheticConfig(n_users=300, n_items=120, n_events=6000, communities=4, seed=3)
KINDS = ("prop", "avatar")


@dataclass
class World:
    """The synthetic data loaded into a running origin: synthetic item index -> asset id."""

    data: SyntheticData
    asset_ids: list[str]

    def community(self, asset: str) -> int:
        return int(self.data.item_community[self.asset_ids.index(asset)])

    def heavy_user(self) -> tuple[str, int]:
        """A user with a clear taste who has not yet taken most of their community: 5 to 12
        distinct assets, the largest share of them in their own group."""
        c = self.data.columns
        best: tuple[float, int] = (-1.0, 0)
        for user in range(len(c.user_ids)):
            items = np.unique(c.item[c.user == user])
            if 5 <= len(items) <= 12:
                group = self.data.user_group[user]
                share = float(np.mean(self.data.item_community[items] == group))
                best = max(best, (share, user))
        user = best[1]
        return c.user_ids[user], int(self.data.user_group[user])


def make_config(tmp_path: Path, catalog_url: str, **extra: Any) -> Config:
    settings: dict[str, Any] = {
        "recommender_train_interval": 0, "recommender_factors": 16,
        "recommender_iterations": 10,
    }  # fmt: skip
    return Config(
        data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, database_url=catalog_url,
        **(settings | extra),
    ).validate()  # fmt: skip


@pytest.fixture
def catalog_config(catalog_url: str, tmp_path: Path) -> Config:
    return make_config(tmp_path, catalog_url)


async def load_world(api: Client, config: SyntheticConfig = SMALL) -> World:
    data = generate(config)
    ids: list[str] = []
    for n in range(config.n_items):
        resp = await api.post("/blobs", data=os.urandom(32), headers=AUTH)
        digest = (await resp.json())["digest"]
        body = {"name": f"asset {n}", "kind": KINDS[n % 2], "blob": digest}
        resp = await api.post("/assets", json=body, headers=AUTH)
        assert resp.status == 201
        ids.append(str((await resp.json(content_type=None))["identifier"]))
    c = data.columns
    events = [
        {"user": c.user_ids[u], "asset": ids[i], "kind": c.kinds[k],
         "at": datetime.fromtimestamp(t, UTC).isoformat()}
        for u, i, k, t in zip(c.user.tolist(), c.item.tolist(), c.kind.tolist(), c.at.tolist(),
                              strict=True)
    ]  # fmt: skip
    for start in range(0, len(events), 2000):
        resp = await api.post(
            "/events", json={"events": events[start : start + 2000]}, headers=AUTH
        )
        assert resp.status == 202, await resp.text()
    return World(data, ids)


async def recs(api: Client, user: str, **query: str) -> dict[str, Any]:
    resp = await api.get(f"/users/{user}/recommendations", params=query)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def train(api: Client) -> str:
    resp = await api.post("/admin/recommender/train", headers=AUTH)
    assert resp.status == 202, await resp.text()
    for _ in range(600):
        status = await (await api.get("/admin/recommender", headers=AUTH)).json()
        if status["model_version"] is not None and not status["training"]["running"]:
            return str(status["model_version"])
        assert status["training"]["last_error"] is None
        await asyncio.sleep(0.1)
    raise AssertionError("training did not finish")


async def test_events_in_training_rankings_out(api: Client) -> None:
    world = await load_world(api)
    user, group = world.heavy_user()

    # Before any model: popularity (as of the last poll), flagged, without a version.
    await api.app[BUFFER].flush()
    await api.app[RECOMMENDER].refresh()
    before = await recs(api, user)
    assert before["model_version"] is None
    assert before["fallback"] is True
    assert before["items"]

    version = await train(api)
    status = await (await api.get("/admin/recommender", headers=AUTH)).json()
    assert status["users"] == len(np.unique(world.data.columns.user))
    assert status["assets"] == len(np.unique(world.data.columns.item))
    assert status["events"] == SMALL.n_events
    assert status["catalog_events"] == SMALL.n_events
    rows = {r["model"]: r for r in status["evaluation"]["rows"]}
    assert set(rows) == {"als", "popularity"}
    assert 0 <= status["evaluation"]["cold_users"] <= rows["als"]["users"]

    body = await recs(api, user, limit="10")
    assert body["model_version"] == version
    assert body["fallback"] is False
    items = body["items"]
    assert len(items) == 10
    assert all(set(i) == {"asset", "score", "name", "kind"} for i in items)
    owned = {world.asset_ids[i] for i in world.data.columns.item[
        world.data.columns.user == world.data.columns.user_ids.index(user)].tolist()}  # fmt: skip
    assert not owned & {i["asset"] for i in items}  # never what the user already has
    in_group = sum(world.community(i["asset"]) == group for i in items)
    assert in_group >= 6, items  # the planted taste group comes first

    avatars = await recs(api, user, kind="avatar")
    assert avatars["items"]
    assert {i["kind"] for i in avatars["items"]} == {"avatar"}

    stranger = await recs(api, "never-seen-before")
    assert stranger["fallback"] is True
    assert stranger["model_version"] == version
    assert stranger["items"]

    # Similar assets share the community of the asset asked about.
    asset = world.asset_ids[int(world.data.community_items(group)[0])]
    resp = await api.get(f"/assets/{asset}/similar", params={"limit": "5"})
    assert resp.status == 200
    similar = await resp.json()
    assert similar["fallback"] is False
    assert asset not in {i["asset"] for i in similar["items"]}
    assert sum(world.community(i["asset"]) == group for i in similar["items"]) >= 3
    assert (await api.get("/assets/00000000-0000-0000-0000-000000000000/similar")).status == 404
    assert (await api.get("/assets/not-an-id/similar")).status == 404
    assert (await api.get(f"/users/{user}/recommendations?limit=0")).status == 400


async def test_a_new_event_changes_the_list_at_once(api: Client) -> None:
    world = await load_world(api)
    await train(api)
    user, group = world.heavy_user()
    first = [i["asset"] for i in (await recs(api, user, limit="10"))["items"]]
    other = (group + 1) % SMALL.communities
    liked = [world.asset_ids[int(i)] for i in world.data.community_items(other)[:4]]
    events = [{"user": user, "asset": a, "kind": "like", "weight": 20} for a in liked]
    assert (await api.post("/events", json={"events": events}, headers=AUTH)).status == 202
    after = [i["asset"] for i in (await recs(api, user, limit="10"))["items"]]
    assert after != first
    assert not set(liked) & set(after)  # now owned
    assert sum(world.community(a) == other for a in after) > sum(
        world.community(a) == other for a in first
    )
    # A user the model never saw gets personal answers from their first events.
    newcomer = [{"user": "newcomer", "asset": a, "kind": "use"} for a in liked]
    assert (await api.post("/events", json={"events": newcomer}, headers=AUTH)).status == 202
    body = await recs(api, "newcomer")
    assert body["fallback"] is False
    assert Counter(world.community(i["asset"]) for i in body["items"]).most_common(1)[0][0] == other


async def test_deleted_assets_are_never_recommended(api: Client) -> None:
    world = await load_world(api)
    await train(api)
    user, _group = world.heavy_user()
    top = [i["asset"] for i in (await recs(api, user, limit="5"))["items"]]
    popular = [i["asset"] for i in (await recs(api, "nobody", limit="5"))["items"]]
    gone = {top[0], popular[0]}
    engine = api.app[CATALOG].engine
    async with engine.begin() as conn:  # soft delete, as the catalog does
        await conn.execute(
            update(assets)
            .where(assets.c.id.in_([uuid.UUID(a) for a in gone]))
            .values(deleted=1, updated_at=datetime.now(UTC))
        )
    await api.app[RECOMMENDER].refresh()
    for who in (user, "nobody"):
        listed = {i["asset"] for i in (await recs(api, who, limit="50"))["items"]}
        assert listed
        assert not listed & gone
    resp = await api.get(f"/assets/{top[0]}/similar")
    assert resp.status == 404


async def test_admin_routes_need_the_admin_scope(api: Client) -> None:
    assert (await api.get("/admin/recommender")).status == 401
    assert (await api.post("/admin/recommender/train")).status == 401
    _token, secret = await api.app[TOKENS].create("writer", ("write",))
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.post("/admin/recommender/train", headers=headers)).status == 403
    status = await (await api.get("/admin/recommender", headers=AUTH)).json()
    assert status["model_version"] is None
    assert status["training"] == {"running": False, "holder": None, "last_error": None}


async def test_two_trainers_race_one_trains(api: Client, catalog_url: str, tmp_path: Path) -> None:
    await load_world(api, SyntheticConfig(n_users=50, n_items=20, n_events=500, communities=2))
    config = make_config(tmp_path, catalog_url)
    catalog = api.app[CATALOG]
    store = api.app[STORE]
    first, second = Trainer(config, catalog, store), Trainer(config, catalog, store)
    results = await asyncio.gather(first.start(), second.start(), return_exceptions=True)
    busy = [r for r in results if isinstance(r, TrainerBusy)]
    started = [r for r in results if isinstance(r, asyncio.Task)]
    assert len(busy) == 1
    assert len(started) == 1
    assert busy[0].holder in (first.holder, second.holder)
    # Over HTTP too: the lease is held, so the origin's own trainer is told it is busy, and
    # its status page says a run is under way, and whose.
    resp = await api.post("/admin/recommender/train", headers=AUTH)
    assert resp.status == 409
    assert (await resp.json(content_type=None))["type"] == "/problems/training-busy"
    status = await (await api.get("/admin/recommender", headers=AUTH)).json()
    assert status["training"]["running"] is True
    assert status["training"]["holder"] == busy[0].holder
    record = await started[0]
    rcatalog = RecommenderCatalog(catalog.engine)
    assert await rcatalog.latest_model() == record
    assert await rcatalog.lease_holder(LEASE) is None  # released
    info = await store.stat(Digest(record.blob_digest))
    assert info is not None  # the model is a blob in the origin's own store
    assert await second.train() != record  # free again: the other may train now


async def test_train_requests_at_once_on_one_worker_start_one_run(api: Client) -> None:
    await load_world(api, SyntheticConfig(n_users=50, n_items=20, n_events=500, communities=2))
    answers = await asyncio.gather(
        *(api.post("/admin/recommender/train", headers=AUTH) for _ in range(8))
    )
    assert sorted(r.status for r in answers) == [202] + [409] * 7
    for _ in range(600):
        status = await (await api.get("/admin/recommender", headers=AUTH)).json()
        if not status["training"]["running"]:
            break
        await asyncio.sleep(0.1)
    # The status, with the run's last_error, is what a failure here must show (one on a slow
    # host said only "None is not None").
    assert status["model_version"] is not None, status["training"]
    engine = api.app[CATALOG].engine
    async with engine.connect() as conn:
        published = (await conn.execute(select(models.c.id))).all()
    assert len(published) == 1  # each 202 had published one
    assert await RecommenderCatalog(engine).lease_holder(LEASE) is None


async def test_an_expired_lease_is_taken_over(catalog_url: str) -> None:
    catalog = Catalog.connect(catalog_url)
    await upgrade(catalog.engine)
    leases = RecommenderCatalog(catalog.engine)
    assert await leases.acquire_lease("x", "a", ttl=0.2)
    assert not await leases.acquire_lease("x", "b", ttl=60)
    assert await leases.acquire_lease("x", "a", ttl=0.2)  # the holder may re-take it
    assert await leases.renew_lease("x", "a", ttl=0.2)
    assert not await leases.renew_lease("x", "b", ttl=60)
    await asyncio.sleep(0.3)
    assert await leases.acquire_lease("x", "b", ttl=60)  # a's lease ran out
    assert not await leases.renew_lease("x", "a", ttl=60)
    holder = await leases.lease_holder("x")
    assert holder is not None
    assert holder[0] == "b"
    await leases.release_lease("x", "b")
    assert await leases.lease_holder("x") is None
    await catalog.close()


async def test_a_long_run_renews_its_lease(api: Client, catalog_url: str, tmp_path: Path) -> None:
    """A run that lasts several lease TTLs keeps the lease (renewed every third of the TTL):
    no other trainer can start meanwhile, and the lease is released at the end."""
    await load_world(api, SyntheticConfig(n_users=50, n_items=20, n_events=500, communities=2))
    config = make_config(tmp_path, catalog_url, recommender_lease_ttl=1.0)
    catalog, store = api.app[CATALOG], api.app[STORE]
    gate = asyncio.Event()

    async def long_preparation() -> None:  # runs inside the run, after renewing has begun
        await gate.wait()

    first = Trainer(config, catalog, store, before=long_preparation)
    second = Trainer(config, catalog, store)
    rcatalog = RecommenderCatalog(catalog.engine)
    run = await first.start()
    for _ in range(3):  # three TTLs: without renewals the lease would have run out twice
        await asyncio.sleep(config.recommender_lease_ttl)
        with pytest.raises(TrainerBusy) as busy:
            await second.start()
        assert busy.value.holder == first.holder
        holder = await rcatalog.lease_holder(LEASE)
        assert holder is not None
        assert holder[0] == first.holder
        assert holder[1] > datetime.now(UTC)
    assert first.running
    gate.set()
    record = await run
    assert await rcatalog.latest_model() == record
    assert await rcatalog.lease_holder(LEASE) is None


async def test_training_runs_on_a_schedule_one_run_at_a_time(
    catalog_url: str, tmp_path: Path
) -> None:
    """Two workers with ``recommender_train_interval``: models appear without anyone asking,
    from one run at a time (the lease), at least half an interval apart (a worker that wakes
    just after another's run skips), and every worker serves the newest."""
    catalog = Catalog.connect(catalog_url)
    await upgrade(catalog.engine)
    await catalog.close()
    interval = 2.0
    config = make_config(tmp_path, catalog_url, recommender_train_interval=interval)
    async with (
        TestClient(TestServer(create_app(config))) as one,
        TestClient(TestServer(create_app(config))) as two,
    ):
        await load_world(one, SyntheticConfig(n_users=60, n_items=24, n_events=600,
                                              communities=2, seed=4))  # fmt: skip
        engine = one.app[CATALOG].engine
        query = select(models.c.trained_at, models.c.details).order_by(models.c.trained_at)
        rows: list[Any] = []
        for _ in range(900):
            async with engine.connect() as conn:
                rows = list(await conn.execute(query))
            if len(rows) >= 3:
                break
            await asyncio.sleep(0.1)
        assert len(rows) >= 3, rows
        runs = [(datetime.fromisoformat(r.details["started_at"]), utc(r.trained_at)) for r in rows]
        for (_, done), (start, _) in itertools.pairwise(runs):
            assert start >= done  # never two runs at once
        for earlier, later in itertools.pairwise(rows):
            assert (later.trained_at - earlier.trained_at).total_seconds() >= interval / 2, rows
        newest = await RecommenderCatalog(engine).latest_model()
        assert newest is not None
        for worker in (one, two):
            await worker.app[RECOMMENDER].refresh()
            loaded = worker.app[RECOMMENDER].loaded
            assert loaded is not None
            assert loaded.record.id == newest.id
