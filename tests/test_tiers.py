"""The tier chain against real parts: a private redis-server, real disks, real HTTP."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from blobstore import BlobInfo, BlobNotFound, Digest, DiskBackend, Expectation
from cache import (
    CacheEvents,
    DiskCache,
    MemoryTier,
    NoEvents,
    RedisTier,
    SingleFlight,
    TieredStore,
)
from cache.health import TierHealth
from cache.node_fill import claim
from cache.redis_tier import HEADER_SIZE
from origin import Config, create_app
from origin.appkeys import STORE, TIERS

from .conftest import ADMIN_TOKEN
from .redis_server import RedisServer


class CountingEvents(NoEvents):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def hit(self, tier: str, nbytes: int) -> None:
        self.counts[f"hit:{tier}"] += 1

    def miss(self, tier: str) -> None:
        self.counts[f"miss:{tier}"] += 1

    def promoted(self, tier: str) -> None:
        self.counts[f"promoted:{tier}"] += 1

    def evicted(self, tier: str, count: int = 1) -> None:
        self.counts[f"evicted:{tier}"] += count

    def flight_joined(self) -> None:
        self.counts["joined"] += 1

    def durable_read(self) -> None:
        self.counts["durable_read"] += 1


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
async def durable(tmp_path: Path) -> DiskBackend:
    backend = DiskBackend(tmp_path / "durable")
    await backend.start()
    return backend


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1 << 16):
        yield data[i : i + (1 << 16)]
    if not data:
        yield b""


async def store_in(
    backend: DiskBackend, data: bytes, content_type: str = "model/gltf-binary"
) -> BlobInfo:
    return (await backend.put(chunks(data), Expectation(), content_type)).info


async def read(store: TieredStore, digest: Digest, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in store.open(digest, start, end)])


# -- single tiers -----------------------------------------------------------------------------


async def test_redis_tier_round_trip(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, max_object=1 << 20)
    try:
        data = os.urandom(5000)
        result = await tier.put(chunks(data), Expectation(), "model/gltf+json")
        digest = result.info.digest
        assert result.created
        info = await tier.stat(digest)
        assert info is not None
        assert (info.size, info.sha256, info.content_type) == (
            5000,
            result.info.sha256,
            "model/gltf+json",
        )
        assert b"".join([c async for c in tier.open(digest)]) == data
        assert b"".join([c async for c in tier.open(digest, 10, 20)]) == data[10:20]
        assert [d async for d in tier.iter_digests()] == [digest]
        assert await tier.exists(digest)
        empty = await tier.put(chunks(b""))
        assert b"".join([c async for c in tier.open(empty.info.digest)]) == b""
        assert await tier.delete(digest)
        assert await tier.stat(digest) is None
        assert not await tier.exists(digest)
        with pytest.raises(BlobNotFound):
            [c async for c in tier.open(digest, 0, 10)]
        assert not tier.accepts((1 << 20) + 1)
    finally:
        await tier.close()


@pytest.mark.parametrize(
    "spoil",
    [
        lambda v: v[:HEADER_SIZE] + os.urandom(len(v) - HEADER_SIZE),  # same size, other bytes
        lambda v: v[:HEADER_SIZE] + v[HEADER_SIZE:-1],  # cut short
        lambda v: v + b"x",  # too long
    ],
)
async def test_a_spoilt_redis_value_is_never_served_or_promoted(
    durable: DiskBackend, redis_server: RedisServer, spoil: Callable[[bytes], bytes]
) -> None:
    """Redis is shared: a value that is not its blob is a miss (and is deleted), so neither the
    client nor the memory tier above ever sees it."""
    redis = RedisTier(redis_server.url, max_object=1 << 20)
    memory = MemoryTier(1 << 20, 1 << 20)
    chain = TieredStore([memory, redis], durable)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        data = os.urandom(100_000)
        info = await store_in(durable, data)
        await redis.admit(info, data)
        key = f"origin:blob:{info.digest.hex}"
        value = await client.get(key)
        assert isinstance(value, bytes)
        await client.set(key, spoil(value))
        assert await read(chain, info.digest) == data
        assert await read(chain, info.digest, 10, 20) == data[10:20]
        await chain.drain()
        held = memory.peek(info.digest)
        assert held is None or held[1] == data
        assert b"".join([c async for c in redis.open(info.digest)]) == data  # admitted anew
    finally:
        await client.aclose()
        await redis.close()


async def test_memory_tier_keeps_its_byte_bound() -> None:
    events = CountingEvents()
    tier = MemoryTier(max_bytes=10_000, max_object=4000, events=events)
    infos = []
    for i in range(10):
        data = bytes([i]) * 3000
        infos.append((await tier.put(chunks(data))).info)
        assert tier.used_bytes <= 10_000
    assert events.counts["evicted:memory"] == 7  # three 3000-byte entries fit with overhead
    assert [await tier.stat(i.digest) is not None for i in infos[-3:]] == [True] * 3
    assert [await tier.exists(i.digest) for i in infos] == [False] * 7 + [True] * 3
    assert not tier.accepts(4001)


async def test_single_flight_shares_one_call() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 42

    results = await asyncio.gather(*(flights.do("k", slow) for _ in range(20)))
    assert calls == 1
    assert [r for r, _ in results] == [42] * 20
    assert sum(shared for _, shared in results) == 19
    assert not flights.in_flight("k")


def test_tier_health_backs_off_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("cache.health.time.monotonic", lambda: now[0])
    health = TierHealth("redis", base=1.0, cap=4.0)
    health.failed(ConnectionError("refused"))
    assert not health.healthy
    now[0] += 1.01
    assert health.healthy  # the probe
    health.failed(ConnectionError("refused"))
    now[0] += 1.5
    assert not health.healthy  # the second back-off is 2 s
    for _ in range(16):  # requests that were under way when it went down: the same outage
        health.failed(ConnectionError("refused"))
    assert (health.report().failures, health.report().retry_in) == (2, pytest.approx(0.5))
    for _ in range(5):  # each failed probe doubles the back-off
        now[0] += 5
        assert health.healthy
        health.failed(ConnectionError("refused"))
    assert health.report().retry_in == pytest.approx(4.0)  # capped
    health.succeeded()
    assert health.healthy
    assert health.report().healthy


# -- the chain --------------------------------------------------------------------------------


async def test_hit_miss_and_promotion_per_tier(
    durable: DiskBackend, redis_server: RedisServer
) -> None:
    events = CountingEvents()
    memory = MemoryTier(1 << 20, 64 << 10, events)
    redis = RedisTier(redis_server.url, max_object=64 << 10)
    chain = TieredStore([memory, redis], durable, events=events)
    try:
        data = os.urandom(20_000)
        info = await store_in(durable, data)
        d = info.digest
        assert await read(chain, d) == data  # cold: from the durable store
        assert events.counts["miss:memory"] == events.counts["miss:redis"] == 1
        assert events.counts["durable_read"] == 1
        await chain.drain()
        assert d in memory
        assert await redis.stat(d) is not None
        assert await read(chain, d, 100, 200) == data[100:200]
        assert events.counts["hit:memory"] == 1
        # Only in Redis: stat finds it there and promotes it to memory before it answers.
        await memory.delete(d)
        stat = await chain.stat(d)
        assert stat is not None
        assert stat.content_type == "model/gltf-binary"
        assert d in memory
        assert events.counts["durable_read"] == 1
        # Too large for both small tiers: served from below, never admitted.
        big = await store_in(durable, os.urandom(100_000))
        assert await read(chain, big.digest) == b"".join(
            [c async for c in durable.open(big.digest)]
        )
        await chain.drain()
        assert big.digest not in memory
        assert await redis.stat(big.digest) is None
    finally:
        await redis.close()


async def redis_counters(client: aioredis.Redis) -> tuple[int, int]:
    """Read commands (GET, GETRANGE) served and bytes sent since the last CONFIG RESETSTAT."""
    commands = await client.info("commandstats")
    reads = sum(commands.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("get", "getrange"))
    return reads, int((await client.info("stats"))["total_net_output_bytes"])


@dataclass
class CountedChain:
    """Memory (64 KiB objects) over Redis (1 MiB), and a client that reads Redis's counters."""

    memory: MemoryTier
    redis: RedisTier
    chain: TieredStore
    client: aioredis.Redis


@pytest.fixture
async def counted(durable: DiskBackend, redis_server: RedisServer) -> AsyncIterator[CountedChain]:
    memory = MemoryTier(1 << 20, 64 << 10)
    redis = RedisTier(redis_server.url, max_object=1 << 20)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield CountedChain(memory, redis, TieredStore([memory, redis], durable), client)
    finally:
        await client.aclose()
        await redis.close()


async def test_a_blob_only_redis_holds_takes_one_redis_read(counted: CountedChain) -> None:
    """The chain's stat brings a small blob's bytes up to memory in the read that finds it, so
    the GET that follows reads memory; a blob too large for memory costs two reads, and the
    stat's carries no more than memory's object limit of its bytes."""
    memory, redis, chain, client = counted.memory, counted.redis, counted.chain, counted.client
    small, large = os.urandom(20_000), os.urandom(300_000)
    small_info = (await redis.put(chunks(small), Expectation(), "model/gltf-binary")).info
    large_info = (await redis.put(chunks(large))).info

    await client.config_resetstat()
    stat = await chain.stat(small_info.digest)
    assert stat is not None
    assert (stat.size, stat.sha256, stat.content_type) == (
        20_000,
        small_info.sha256,
        "model/gltf-binary",
    )
    assert small_info.digest in memory
    assert await read(chain, small_info.digest) == small
    assert await read(chain, small_info.digest, 5, 50) == small[5:50]
    reads, sent = await redis_counters(client)
    assert reads == 1
    assert 20_000 < sent < 30_000

    await client.config_resetstat()
    stat = await chain.stat(large_info.digest)
    assert stat is not None
    assert stat.size == 300_000
    assert large_info.digest not in memory
    reads, sent = await redis_counters(client)
    assert reads == 1
    assert sent < (64 << 10) + 10_000
    assert await read(chain, large_info.digest, 0, 300_000) == large
    assert (await redis_counters(client))[0] == 2
    assert await chain.stat(Digest(blake3.blake3(b"absent").hexdigest())) is None


async def test_concurrent_stats_of_a_blob_only_redis_holds_share_one_read(
    counted: CountedChain,
) -> None:
    """A new blob that every client asks for at once (single flight, DESIGN.md): one Redis
    read finds it and brings it up to memory for all of them."""
    data = os.urandom(30_000)
    info = (await counted.redis.put(chunks(data))).info
    await counted.client.config_resetstat()
    found = await asyncio.gather(*(counted.chain.stat(info.digest) for _ in range(20)))
    assert {(f.digest, f.size) for f in found if f is not None} == {(info.digest, 30_000)}
    assert None not in found
    bodies = await asyncio.gather(*(read(counted.chain, info.digest) for _ in range(20)))
    assert bodies == [data] * 20
    assert (await redis_counters(counted.client))[0] == 1


async def test_dead_redis_is_skipped_without_waiting(durable: DiskBackend, tmp_path: Path) -> None:
    dead = RedisServer(tmp_path / "dead")  # never started: connections are refused
    redis = RedisTier(dead.url, max_object=1 << 20, timeout=0.25)
    chain = TieredStore([redis], durable)
    try:
        info = await store_in(durable, b"still served")
        assert await read(chain, info.digest) == b"still served"
        reports = await chain.health()
        assert not reports[0].healthy
        assert reports[0].last_error
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(50):  # backing off: Redis is not even asked
            assert await read(chain, info.digest) == b"still served"
        assert loop.time() - start < 1.0
    finally:
        await redis.close()


# -- through HTTP ------------------------------------------------------------------------------


async def app_with(config: Config, chain: TieredStore) -> web.Application:
    app = create_app(config)
    app[STORE] = chain
    app[TIERS] = chain
    return app


async def test_hundred_cold_gets_of_64_mib_read_the_durable_store_once(
    tmp_path: Path, durable: DiskBackend, redis_server: RedisServer
) -> None:
    events = CountingEvents()
    local = DiskCache(tmp_path / "local-cache", 1 << 30, events=events)
    await local.start()
    redis = RedisTier(redis_server.url, max_object=1 << 20)
    chain = TieredStore(
        [MemoryTier(64 << 20, 1 << 20, events), redis], durable, local_cache=local, events=events
    )
    data = os.urandom(1 << 20) * 64
    info = await store_in(durable, data)
    config = Config(data_dir=tmp_path / "app", admin_token=ADMIN_TOKEN).validate()
    try:
        async with TestClient(TestServer(await app_with(config, chain))) as client:

            async def get() -> tuple[int, int, str]:
                resp = await client.get(f"/blobs/{info.digest}")
                hasher = blake3.blake3()
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    hasher.update(chunk)
                return resp.status, size, hasher.hexdigest()

            results = await asyncio.gather(*(get() for _ in range(100)))
        assert {r for r in results} == {(200, len(data), info.digest.hex)}
        assert events.counts["durable_read"] == 1
        assert events.counts["joined"] >= 1
        assert await local.stat(info.digest) is not None
    finally:
        await redis.close()
        await local.close()


async def test_redis_killed_mid_stream_fails_no_request(
    tmp_path: Path, durable: DiskBackend, redis_server: RedisServer
) -> None:
    redis = RedisTier(redis_server.url, max_object=1 << 20, timeout=0.25)
    chain = TieredStore([redis], durable, retry_cap=1.0)
    blobs = {}
    for i in range(20):
        data = os.urandom(1000 + i)
        blobs[(await store_in(durable, data)).digest] = data
    config = Config(data_dir=tmp_path / "app", admin_token=ADMIN_TOKEN).validate()
    try:
        async with TestClient(TestServer(await app_with(config, chain))) as client:
            for d in blobs:  # warm Redis
                await (await client.get(f"/blobs/{d}")).read()
            await chain.drain()
            assert (await (await client.get("/readyz")).json())["status"] == "ready"

            failures = 0
            served = 0

            async def stream(rounds: int) -> None:
                nonlocal failures, served
                for _ in range(rounds):
                    for d, data in blobs.items():
                        resp = await client.get(f"/blobs/{d}")
                        body = await resp.read()
                        if resp.status != 200 or body != data:
                            failures += 1
                        served += 1

            load = asyncio.ensure_future(stream(40))
            await asyncio.sleep(0.1)
            redis_server.kill()
            await load
            assert served == 800
            assert failures == 0
            ready = await (await client.get("/readyz")).json()
            assert ready["status"] == "degraded"
            assert [t["healthy"] for t in ready["tiers"]] == [False, True]

            redis_server.start()
            deadline = asyncio.get_running_loop().time() + 20
            while (await (await client.get("/readyz")).json())["status"] != "ready":
                assert asyncio.get_running_loop().time() < deadline, "Redis never came back"
                await asyncio.sleep(0.2)
            d, data = next(iter(blobs.items()))
            assert await (await client.get(f"/blobs/{d}")).read() == data
            await chain.drain()
            assert await redis.stat(d) is not None  # filled again
    finally:
        await redis.close()


async def test_metrics_expose_tiers_and_latency(
    client: TestClient[web.Request, web.Application],
) -> None:
    from .conftest import AUTH

    resp = await client.post("/blobs", data=b"metered", headers=AUTH)
    digest = (await resp.json())["digest"]
    for _ in range(3):
        await (await client.get(f"/blobs/{digest}")).read()
    text = await (await client.get("/metrics")).text()
    assert 'origin_cache_hits_total{tier="memory"}' in text
    assert "origin_durable_reads_total" in text
    latency = [line for line in text.splitlines() if "request_duration_seconds_count" in line]
    assert any('route="/blobs/{digest}"' in line and 'status="200"' in line for line in latency)


class SlowDisk(DiskBackend):
    """A durable store that trickles, as a remote one does: 1 MiB chunks, 20 ms apart."""

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        async for chunk in super().open(digest, start, end):
            await asyncio.sleep(0.02)
            yield chunk


async def slow_chain(
    tmp_path: Path, events: CacheEvents | None = None
) -> tuple[TieredStore, DiskCache, SlowDisk]:
    durable = SlowDisk(tmp_path / "slow", chunk_size=1 << 20)
    await durable.start()
    local = DiskCache(tmp_path / "local", 1 << 30, maintain=False)
    await local.start()
    return TieredStore([], durable, local_cache=local, events=events), local, durable


async def test_first_byte_does_not_wait_for_the_local_copy(tmp_path: Path) -> None:
    chain, local, durable = await slow_chain(tmp_path)
    try:
        data = os.urandom(32 << 20)
        info = await store_in(durable, data)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader = chain.open(info.digest)
        first = await anext(reader)
        first_after = loop.time() - started
        rest = b"".join([c async for c in reader])
        total = loop.time() - started
        assert first + rest == data
        assert first_after < total / 5  # 32 chunks at 20 ms: the first comes after one
        await chain.drain()
        assert await local.stat(info.digest) is not None
        # A client that leaves after one chunk: the copy still completes.
        other = await store_in(durable, os.urandom(8 << 20))
        reader = chain.open(other.digest, 0, 1000)
        assert len(await anext(reader)) == 1000
        await reader.aclose()
        await chain.drain()
        assert await local.stat(other.digest) is not None
    finally:
        await local.close()


async def test_gets_that_join_a_copy_under_way_follow_it(tmp_path: Path) -> None:
    """A cold 32 MiB blob that trickles from below (20 ms a MiB): a GET that joins after 8 MiB,
    and a range ahead of the copy, each get their first byte while the copy still runs (the
    blob not yet in the cache), read from its temp file; so does the leading GET once it
    falls behind and is let go. Before, each waited for the whole copy. The durable store is
    read once."""
    events = CountingEvents()
    chain, local, durable = await slow_chain(tmp_path, events)
    try:
        data = os.urandom(32 << 20)
        info = await store_in(durable, data)
        leader = chain.open(info.digest)
        led = [await anext(leader) for _ in range(8)]  # then it stops reading: let go
        joiner = chain.open(info.digest)
        joined = [await anext(joiner)]
        assert await local.stat(info.digest) is None  # the copy is still under way
        ahead = chain.open(info.digest, 20 << 20, (20 << 20) + 5000)
        first = await anext(ahead)
        assert await local.stat(info.digest) is None
        assert first + b"".join([c async for c in ahead]) == data[20 << 20 : (20 << 20) + 5000]
        joined += [c async for c in joiner]
        led += [c async for c in leader]
        assert b"".join(joined) == data
        assert b"".join(led) == data
        await chain.drain()
        assert await local.stat(info.digest) is not None
        assert events.counts["durable_read"] == 1
        assert events.counts["joined"] == 2
    finally:
        await local.close()


async def test_a_follower_whose_cached_copy_is_evicted_before_it_reads_it_goes_below(
    tmp_path: Path,
) -> None:
    """A GET that followed a copy under way continues from the cached file once the copy is
    done; if another worker's sweep removed that file in between, it reads the rest from below
    (it used to end the response with BlobNotFound part-way)."""
    events = CountingEvents()
    chain, local, durable = await slow_chain(tmp_path, events)
    try:
        data = os.urandom(8 << 20)
        info = await store_in(durable, data)
        leader = chain.open(info.digest)
        await anext(leader)
        await leader.aclose()  # the copy goes on without it
        follower = chain.open(info.digest)
        followed = [await anext(follower)]
        await chain.drain()  # the copy is done while the follower waits to be read
        path = local.local_path(info.digest)
        assert path is not None
        path.unlink()  # as another worker's sweep does
        followed += [c async for c in follower]
        assert b"".join(followed) == data
        assert events.counts["durable_read"] == 2
    finally:
        await local.close()


async def test_two_workers_of_a_node_read_a_cold_blob_from_below_once(tmp_path: Path) -> None:
    """Two workers: two chains over one cache directory, as two processes have (their flocks
    exclude each other as theirs do). The second, asked for a blob the first is copying,
    follows that copy through the first's temp file: its first byte comes before the copy is
    done, and only the first reads the durable store. Before, each copied it."""
    durable = SlowDisk(tmp_path / "slow", chunk_size=1 << 20)
    await durable.start()
    events = [CountingEvents(), CountingEvents()]
    caches = [DiskCache(tmp_path / "local", 1 << 30, maintain=False) for _ in events]
    for cache in caches:
        await cache.start()
    one, two = (
        TieredStore([], durable, local_cache=c, events=e)
        for c, e in zip(caches, events, strict=True)
    )
    try:
        data = os.urandom(32 << 20)
        info = await store_in(durable, data)
        leader = one.open(info.digest)
        led = [await anext(leader) for _ in range(8)]
        other = two.open(info.digest)
        followed = [await anext(other)]
        assert await caches[0].stat(info.digest) is None  # the copy is still under way
        followed += [c async for c in other]
        led += [c async for c in leader]
        assert b"".join(followed) == data
        assert b"".join(led) == data
        await one.drain()
        assert [e.counts["durable_read"] for e in events] == [1, 0]
        assert events[1].counts["joined"] == 1
        assert not list(caches[0].fills.iterdir())  # the claim went with the copy
    finally:
        for cache in caches:
            await cache.close()


async def test_a_worker_whose_copy_ends_without_a_blob_leaves_the_follower_to_the_store(
    tmp_path: Path,
) -> None:
    """The worker that claimed a copy goes away before writing anything (its lock dropped, as
    the kernel drops a dead process's): the worker following it reads the blob from below."""
    events = CountingEvents()
    chain, cache, durable = await slow_chain(tmp_path, events)
    try:
        data = os.urandom(4 << 20)
        info = await store_in(durable, data)
        held = claim(cache.fills, info.digest)  # another worker's, which never names a file
        assert held is not None
        reading = asyncio.ensure_future(read(chain, info.digest))
        await asyncio.sleep(0.2)
        assert not reading.done()  # it follows the other worker's copy
        held.release()
        assert await asyncio.wait_for(reading, 10) == data
        assert events.counts["durable_read"] == 1
        # No lock file can be made (its directory gone): the copy is this worker's own.
        cache.fills.rmdir()
        other = await store_in(durable, os.urandom(3 << 20))
        assert len(await read(chain, other.digest)) == other.size
        await chain.drain()
        assert await cache.stat(other.digest) is not None
    finally:
        await cache.close()


async def test_a_starting_worker_sweeps_the_fill_locks_of_dead_ones_only(tmp_path: Path) -> None:
    """A worker that dies mid-copy leaves its lock file (the kernel drops only the lock): the
    next worker to start removes it, and leaves alone the lock of a copy still under way."""
    cache = DiskCache(tmp_path / "local", 1 << 30, maintain=False)
    await cache.start()
    dead, alive = (Digest(blake3.blake3(name).hexdigest()) for name in (b"dead", b"alive"))
    try:
        held = claim(cache.fills, alive)
        assert held is not None
        (cache.fills / dead.hex).write_bytes(b"/gone/temp")  # its lock went with its process
        restarted = DiskCache(tmp_path / "local", 1 << 30, maintain=False)
        await restarted.start()
        await restarted.close()
        assert sorted(p.name for p in cache.fills.iterdir()) == [alive.hex]
        held.release()
    finally:
        await cache.close()


async def test_a_corrupt_copy_is_not_cached(tmp_path: Path) -> None:
    chain, local, durable = await slow_chain(tmp_path)
    try:
        data = os.urandom(3 << 20)
        info = await store_in(durable, data)
        path = durable.local_path(info.digest)
        assert path is not None
        path.write_bytes(os.urandom(3 << 20))  # bit rot below
        await asyncio.gather(*(read(chain, info.digest) for _ in range(3)))
        await chain.drain()
        assert await local.stat(info.digest) is None
    finally:
        await local.close()


async def test_a_cached_blob_removed_behind_this_process_is_read_from_below(
    tmp_path: Path,
) -> None:
    """Another worker's eviction deletes the file this one remembers: the read goes below
    (it was a 404 for a blob the store holds)."""
    chain, local, durable = await slow_chain(tmp_path)
    try:
        data = os.urandom(4 << 20)
        info = await store_in(durable, data)
        assert await read(chain, info.digest) == data
        await chain.drain()
        path = local.local_path(info.digest)
        assert path is not None
        assert await local.stat(info.digest) is not None  # remembered by this process
        path.unlink()  # as another worker's sweep does
        assert await read(chain, info.digest) == data
        assert await read(chain, info.digest, 5, 10) == data[5:10]
        await chain.drain()
        assert path.read_bytes() == data  # and cached again
    finally:
        await local.close()


async def test_a_blob_larger_than_half_the_cache_is_streamed_not_cached(tmp_path: Path) -> None:
    durable = SlowDisk(tmp_path / "slow", chunk_size=1 << 20)
    await durable.start()
    local = DiskCache(tmp_path / "local", 4 << 20, maintain=False)
    await local.start()
    chain = TieredStore([], durable, local_cache=local)
    try:
        kept = await store_in(durable, os.urandom(1 << 20))
        assert len(await read(chain, kept.digest)) == 1 << 20
        await chain.drain()
        big = os.urandom(3 << 20)
        info = await store_in(durable, big)
        assert await read(chain, info.digest) == big
        await chain.drain()
        # Caching it would have evicted everything else, and then itself.
        assert await local.stat(info.digest) is None
        assert await local.stat(kept.digest) is not None
    finally:
        await local.close()


async def test_small_blobs_read_from_the_durable_store_reach_the_disk_cache_too(
    tmp_path: Path,
) -> None:
    """With the durable store remote, the disk serves what it holds when the store is down:
    small blobs as well, once the memory tier has let them go."""
    durable = SlowDisk(tmp_path / "slow", chunk_size=1 << 20)
    await durable.start()
    local = DiskCache(tmp_path / "local", 1 << 30, maintain=False)
    await local.start()
    memory = MemoryTier(1 << 20, 64 << 10)
    chain = TieredStore([memory], durable, local_cache=local)
    try:
        data = os.urandom(20_000)
        info = await store_in(durable, data)
        assert await read(chain, info.digest) == data
        await chain.drain()
        assert await local.stat(info.digest) is not None
        await memory.delete(info.digest)
        path = durable.local_path(info.digest)
        assert path is not None
        path.unlink()  # the durable store has lost it: only the disk cache can answer
        assert await read(chain, info.digest) == data
    finally:
        await local.close()


async def test_exists_is_the_durable_store_s_answer(durable: DiskBackend, tmp_path: Path) -> None:
    """What POST /blobs/missing asks: copies in the caches of a blob the durable store no
    longer holds do not count."""
    memory = MemoryTier(max_bytes=1 << 20, max_object=1 << 16)
    local = DiskCache(tmp_path / "local", 1 << 30, maintain=False)
    await local.start()
    chain = TieredStore([memory], durable, local_cache=local)
    try:
        data = os.urandom(5000)
        info = await store_in(durable, data)
        assert await read(chain, info.digest) == data  # now in memory too
        await local.admit(info, data)
        assert [await t.exists(info.digest) for t in (memory, local, chain)] == [True] * 3
        assert await durable.delete(info.digest)
        assert [await t.exists(info.digest) for t in (memory, local, chain)] == [True, True, False]
    finally:
        await local.close()
