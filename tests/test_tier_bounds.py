"""Hypothesis state machines: each tier stays within its bound and evicts what a simple model
says it should, over any sequence of puts, reads, deletes and evictions."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from blobstore import BlobInfo, Digest, Expectation, StorageFull
from cache import DiskCache, MemoryTier
from cache.memory import _ENTRY_OVERHEAD

from .conftest import chunks_of

KEYS = st.integers(0, 11)


def blob(key: int, size: int) -> bytes:
    """Content-addressed: a key always names the same bytes (and so the same size)."""
    return bytes([key]) * size


def info_of(data: bytes) -> BlobInfo:
    import hashlib
    from datetime import UTC, datetime

    digest = Digest(blake3.blake3(data).hexdigest())
    return BlobInfo(digest, len(data), hashlib.sha256(data).digest(), "x/y", datetime.now(UTC))


SIZES = [0, 10, 300, 900, 1500, 2500, 3000, 3500, 100, 700, 1200, 2000]


class MemoryTierMachine(RuleBasedStateMachine):
    MAX = 8000

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tier = MemoryTier(self.MAX, max_object=4000)
        self.model: OrderedDict[int, int] = OrderedDict()  # key -> charged bytes, LRU first

    def teardown(self) -> None:
        self.loop.close()

    def charge(self, key: int) -> int:
        return SIZES[key] + _ENTRY_OVERHEAD

    @rule(key=KEYS)
    def admit(self, key: int) -> None:
        data = blob(key, SIZES[key])
        self.loop.run_until_complete(self.tier.admit(info_of(data), data))
        if not self.tier.accepts(len(data)):
            return
        if key in self.model:
            self.model.move_to_end(key)
            return
        while sum(self.model.values()) + self.charge(key) > self.MAX:
            self.model.popitem(last=False)
        self.model[key] = self.charge(key)

    @rule(key=KEYS)
    def read(self, key: int) -> None:
        digest = info_of(blob(key, SIZES[key])).digest
        found = self.loop.run_until_complete(self.tier.stat(digest)) is not None
        assert found == (key in self.model)
        if found:
            self.model.move_to_end(key)

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        digest = info_of(blob(key, SIZES[key])).digest
        removed = self.loop.run_until_complete(self.tier.delete(digest))
        assert removed == (self.model.pop(key, None) is not None)

    @invariant()
    def within_bound_and_as_modelled(self) -> None:
        assert self.tier.used_bytes <= self.MAX
        assert self.tier.used_bytes == sum(self.model.values())
        held = {k for k in range(len(SIZES)) if info_of(blob(k, SIZES[k])).digest in self.tier}
        assert held == set(self.model)


class DiskCacheMachine(RuleBasedStateMachine):
    MAX = 6000

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp())
        self.clock = 0.0
        # A strictly increasing clock: no ties in access order.
        self.cache = DiskCache(self.dir, self.MAX, maintain=False, clock=self.tick)
        self.loop.run_until_complete(self.cache.start())
        self.model: dict[int, float] = {}  # key -> last access

    def tick(self) -> float:
        self.clock += 1.0
        return self.clock

    def teardown(self) -> None:
        self.loop.run_until_complete(self.cache.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def digest(self, key: int) -> Digest:
        return info_of(blob(key, SIZES[key])).digest

    @rule(key=KEYS)
    def put(self, key: int) -> None:
        data = blob(key, SIZES[key])

        async def once() -> AsyncIterator[bytes]:
            yield data

        result = self.loop.run_until_complete(
            self.cache.put(once(), Expectation(blake3=self.digest(key)))
        )
        assert result.created == (key not in self.model)
        if result.created:
            self.model[key] = self.clock

    @rule(key=KEYS)
    def read(self, key: int) -> None:
        async def read_all() -> bytes | None:
            if await self.cache.stat(self.digest(key)) is None:
                return None
            return b"".join([c async for c in self.cache.open(self.digest(key))])

        got = self.loop.run_until_complete(read_all())
        assert (got is not None) == (key in self.model)
        if got is not None:
            assert got == blob(key, SIZES[key])
            self.model[key] = self.clock

    @rule()
    def evict(self) -> None:
        self.loop.run_until_complete(self.cache.evict())
        total = sum(SIZES[k] for k in self.model)
        if total > self.MAX:
            excess = total - int(self.MAX * 0.9)
            for key in sorted(self.model, key=self.model.__getitem__):
                if excess <= 0:
                    break
                excess -= SIZES[key]
                del self.model[key]
        assert self.cache.used_bytes <= self.MAX

    @invariant()
    def files_match_model(self) -> None:
        paths = {k: self.cache.store.local_path(self.digest(k)) for k in range(len(SIZES))}
        on_disk = {k for k, path in paths.items() if path is not None and path.is_file()}
        assert on_disk == set(self.model)


TestMemoryTier = MemoryTierMachine.TestCase
TestMemoryTier.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestDiskCache = DiskCacheMachine.TestCase
TestDiskCache.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)


async def test_a_blob_being_read_is_not_evicted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000, maintain=False)
    await cache.start()
    try:
        data = [os.urandom(400) for _ in range(4)]
        digests = []
        for d in data:

            async def once(b: bytes = d) -> AsyncIterator[bytes]:
                yield b

            digests.append((await cache.put(once())).info.digest)
        reader = cache.open(digests[0])  # the oldest, and being read
        first = await anext(reader)
        assert await cache.evict() > 0
        assert await cache.stat(digests[0]) is not None
        assert first == data[0]
        await reader.aclose()
        assert cache.used_bytes <= 1000
    finally:
        await cache.close()


async def test_access_times_survive_an_eviction_another_worker_holds(tmp_path: Path) -> None:
    """Blobs a, b, c put in that order, then a read: while another worker holds the eviction
    lock this worker's sweep gives way, and its record of that read must wait for its next
    sweep, which then keeps a (the most recently used) and evicts b."""
    now = [1000.0]
    cache = DiskCache(tmp_path, 1000, maintain=False, clock=lambda: now[0])
    await cache.start()
    try:
        digests = []
        for n in range(3):
            now[0] += 10

            async def once(b: bytes = blob(n, 300)) -> AsyncIterator[bytes]:
                yield b

            digests.append((await cache.put(once())).info.digest)
        now[0] += 10
        assert await cache.stat(digests[0]) is not None  # a is used again
        with (tmp_path / "evict.lock").open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # the other worker's sweep
            assert await cache.evict() == 0

        async def fourth() -> AsyncIterator[bytes]:
            yield blob(3, 300)

        now[0] += 10
        await cache.put(fourth())  # over the bound now
        assert await cache.evict() > 0
        assert await cache.stat(digests[0]) is not None
        assert await cache.stat(digests[1]) is None
    finally:
        await cache.close()


async def test_a_disk_smaller_than_the_bound_keeps_caching(tiny_fs: Path) -> None:
    """``max_bytes`` says 1 GiB, the file system holds 2 MiB: the cache bounds itself by the
    disk, leaving 5 % of it free; a blob over half of that is not taken, and a stream of blobs
    2.5 times the disk keeps being cached (each put meeting a full disk wakes a sweep that
    makes room) instead of every put being refused once the disk was full."""
    cache = DiskCache(tiny_fs, 1 << 30, maintain=False)
    await cache.start()
    try:
        size = os.statvfs(tiny_fs).f_blocks * os.statvfs(tiny_fs).f_frsize
        assert cache.capacity <= size * 0.95
        assert cache.accepts(cache.capacity // 2)
        assert not cache.accepts(cache.capacity // 2 + 1)
        kept: list[Digest] = []
        for _ in range(20):
            data = os.urandom(250_000)
            for attempt in range(4):  # each refusal frees a tenth of the capacity more
                try:
                    kept.append((await cache.put(chunks_of(data))).info.digest)
                    break
                except StorageFull:
                    assert attempt < 3, "the cache never made room"
                finally:
                    await cache.evict()  # what the background sweep does when woken
            assert await cache.exists(kept[-1])
            vfs = os.statvfs(tiny_fs)
            assert vfs.f_bavail * vfs.f_frsize >= size * 0.05 * 0.9  # the reserve, near enough
        assert cache.used_bytes <= cache.capacity
        assert not list((tiny_fs / "tmp").iterdir())
        assert await cache.exists(kept[-2])  # the most recent stay
    finally:
        await cache.close()
