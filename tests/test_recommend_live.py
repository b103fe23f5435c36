"""A running ``origin serve --workers 2`` switches to a new model under load, dropping nothing."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from recommender import SyntheticConfig, generate

from .conftest import AUTH, LiveOrigin

DATA = SyntheticConfig(n_users=200, n_items=40, n_events=3000, communities=4, seed=5)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[LiveOrigin]:
    env = {
        "ORIGIN_RECOMMENDER_POLL_INTERVAL": "0.2",
        "ORIGIN_RECOMMENDER_TRAIN_INTERVAL": "0",
        "ORIGIN_RECOMMENDER_FACTORS": "16",
        "ORIGIN_RECOMMENDER_ITERATIONS": "5",
    }
    live = LiveOrigin(data_dir=tmp_path / "live", workers=2, env=env).start()
    yield live
    live.stop()


async def _load(session: aiohttp.ClientSession, url: str) -> list[str]:
    ids = []
    for n in range(DATA.n_items):
        async with session.post(f"{url}/blobs", data=os.urandom(32), headers=AUTH) as resp:
            digest = (await resp.json())["digest"]
        body = {"name": f"a{n}", "kind": "prop", "blob": digest}
        async with session.post(f"{url}/assets", json=body, headers=AUTH) as resp:
            assert resp.status == 201
            ids.append(str((await resp.json(content_type=None))["identifier"]))
    return ids


async def _post_events(
    session: aiohttp.ClientSession, url: str, ids: list[str], start: int, stop: int
) -> None:
    c = generate(DATA).columns
    events = [
        {"user": c.user_ids[u], "asset": ids[i], "kind": c.kinds[k],
         "at": datetime.fromtimestamp(t, UTC).isoformat()}
        for u, i, k, t in zip(c.user[start:stop].tolist(), c.item[start:stop].tolist(),
                              c.kind[start:stop].tolist(), c.at[start:stop].tolist(), strict=True)
    ]  # fmt: skip
    async with session.post(f"{url}/events", json={"events": events}, headers=AUTH) as resp:
        assert resp.status == 202, await resp.text()


async def _train(session: aiohttp.ClientSession, url: str, previous: str | None) -> str:
    async with session.post(f"{url}/admin/recommender/train", headers=AUTH) as resp:
        assert resp.status == 202, await resp.text()
    for _ in range(600):
        async with session.get(f"{url}/admin/recommender", headers=AUTH) as resp:
            status = await resp.json()
        version = status["model_version"]
        if version is not None and version != previous and not status["training"]["running"]:
            return str(version)
        await asyncio.sleep(0.1)
    raise AssertionError("no new model")


async def _everywhere(url: str, version: str) -> None:
    """Until 20 answers in a row, on fresh connections (so from both workers), carry it."""
    in_a_row = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(2000):
            async with s.get(f"{url}/users/user-0000001/recommendations") as resp:
                in_a_row = in_a_row + 1 if (await resp.json())["model_version"] == version else 0
            if in_a_row == 20:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"model {version} was not served by every worker")


async def test_a_new_model_is_picked_up_under_load(origin: LiveOrigin) -> None:
    url = origin.url
    async with aiohttp.ClientSession() as session:
        ids = await _load(session, url)
        await _post_events(session, url, ids, 0, 2000)
        first = await _train(session, url, None)
        await _everywhere(url, first)

        seen: Counter[str | None] = Counter()
        failures: list[str] = []
        stop = asyncio.Event()

        async def client(n: int) -> None:
            # A new connection per request, so requests spread over both workers.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as own:
                i = 0
                while not stop.is_set():
                    user = f"user-{(n * 7919 + i) % DATA.n_users:07d}"
                    i += 1
                    try:
                        async with own.get(f"{url}/users/{user}/recommendations") as resp:
                            body = await resp.json(content_type=None)
                            if resp.status != 200 or not body["items"]:
                                failures.append(f"{resp.status} {body}")
                            seen[body.get("model_version")] += 1
                    except aiohttp.ClientError as exc:
                        failures.append(repr(exc))

        clients = [asyncio.create_task(client(n)) for n in range(4)]
        try:
            for _ in range(1000):  # load is flowing before the new model comes
                if sum(seen.values()) >= 50:
                    break
                await asyncio.sleep(0.05)
            await _post_events(session, url, ids, 2000, DATA.n_events)
            second = await _train(session, url, first)
            # Both workers poll; wait until a run of answers all carry the new version.
            for _ in range(400):
                before = seen[second]
                await asyncio.sleep(0.05)
                if seen[second] - before >= 20 and set(seen) <= {first, second}:
                    recent = Counter(seen)
                    await asyncio.sleep(0.5)
                    if seen[first] == recent[first]:  # no old answers any more
                        break
            else:
                raise AssertionError(f"the new model was not served everywhere: {seen}")
        finally:
            stop.set()
            await asyncio.gather(*clients)
    assert failures == []
    assert seen[first] > 0
    assert seen[second] > 0
    assert set(seen) == {first, second}
