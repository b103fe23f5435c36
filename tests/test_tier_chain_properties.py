"""A hypothesis state machine over the whole tier chain: memory, a real Redis and the disk.

Whatever the sequence of uploads, reads (whole or ranged), deletes and Redis losing its data
(as ``allkeys-lru`` eviction or a restart would), every read returns exactly the stored bytes
or "not found", each cache tier only ever holds blobs it accepts by size and that are stored,
and the memory tier stays within its byte bound.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from blobstore import BlobNotFound, Digest, DiskBackend, Expectation
from cache import MemoryTier, RedisTier, TieredStore

from .redis_server import RedisServer
from .test_tier_bounds import SIZES, blob, info_of

KEYS = st.integers(0, len(SIZES) - 1)
MEMORY_BOUND = 6000
MEMORY_MAX_OBJECT = 1500  # blobs up to here may live in memory
REDIS_MAX_OBJECT = 2500  # and up to here in Redis; larger ones only on disk


class TierChainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp())
        self.redis_server = RedisServer(self.dir / "redis").start()
        self.memory = MemoryTier(MEMORY_BOUND, max_object=MEMORY_MAX_OBJECT)
        self.redis = RedisTier(self.redis_server.url, max_object=REDIS_MAX_OBJECT)
        self.durable = DiskBackend(self.dir / "durable")
        self.loop.run_until_complete(self.durable.start())
        self.store = TieredStore([self.memory, self.redis], self.durable)
        self.stored: set[int] = set()

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.drain())
        self.loop.run_until_complete(self.redis.close())
        self.loop.close()
        self.redis_server.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def digest(self, key: int) -> Digest:
        return info_of(blob(key, SIZES[key])).digest

    @rule(key=KEYS)
    def upload(self, key: int) -> None:
        data = blob(key, SIZES[key])

        async def once() -> AsyncIterator[bytes]:
            yield data

        result = self.loop.run_until_complete(
            self.store.put(once(), Expectation(blake3=self.digest(key)))
        )
        assert result.created == (key not in self.stored)
        self.stored.add(key)

    @rule(key=KEYS, cut=st.tuples(st.integers(0, 4000), st.integers(0, 4000)) | st.none())
    def read(self, key: int, cut: tuple[int, int] | None) -> None:
        data = blob(key, SIZES[key])
        start, end = (0, len(data)) if cut is None else sorted(min(c, len(data)) for c in cut)

        async def get() -> bytes | None:
            info = await self.store.stat(self.digest(key))
            if info is None:
                return None
            assert info.size == len(data)
            got = b"".join([c async for c in self.store.open(info.digest, start, end)])
            await self.store.drain()  # promotions land before the invariants look
            return got

        got = self.loop.run_until_complete(get())
        assert (got is not None) == (key in self.stored)
        if got is not None:
            assert got == data[start:end]

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        removed = self.loop.run_until_complete(self.store.delete(self.digest(key)))
        assert removed == (key in self.stored)
        self.stored.discard(key)

        async def gone() -> None:
            assert await self.store.stat(self.digest(key)) is None
            try:
                [c async for c in self.store.open(self.digest(key))]
            except BlobNotFound:
                return
            raise AssertionError("a deleted blob was still served")

        self.loop.run_until_complete(gone())

    @rule()
    def redis_loses_everything(self) -> None:
        async def flush() -> None:
            client = aioredis.Redis.from_url(self.redis_server.url)
            try:
                await client.flushall()
            finally:
                await client.aclose()

        self.loop.run_until_complete(flush())

    @invariant()
    def tiers_hold_only_stored_blobs_they_accept(self) -> None:
        assert self.memory.used_bytes <= MEMORY_BOUND
        in_memory = {k for k in range(len(SIZES)) if self.digest(k) in self.memory}
        assert in_memory <= self.stored
        assert all(SIZES[k] <= MEMORY_MAX_OBJECT for k in in_memory)

        async def redis_digests() -> set[Digest]:
            return {d async for d in self.redis.iter_digests()}

        held = self.loop.run_until_complete(redis_digests())
        in_redis = {k for k in range(len(SIZES)) if self.digest(k) in held}
        assert in_redis <= self.stored
        assert all(SIZES[k] <= REDIS_MAX_OBJECT for k in in_redis)


TestTierChain = TierChainMachine.TestCase
TestTierChain.settings = settings(max_examples=20, stateful_step_count=30, deadline=None)
