"""The tier chain, itself a ``BlobBackend``: small tiers, an optional local disk cache, durable.

Reads go down the chain (memory -> Redis -> local disk cache -> durable) and the first tier
holding the blob serves it. A blob found below is promoted into the small tiers above that
accept its size, in the background: ``stat`` (the first call of every GET) starts it, so even
a blob that is then sent with sendfile lands in memory for the next request. Concurrent
misses for one digest share one fetch from below (single flight): for small blobs, for large
ones filling the local disk cache, and for the read that finds a blob in Redis. A tier that
raises is skipped for a back-off (``TierHealth``), so a dead Redis costs no request its
timeout. Writes go to the durable store; the caches fill afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from blobstore import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BlobBackend,
    BlobInfo,
    BlobNotFound,
    Digest,
    Expectation,
    PutResult,
)

from .disk_cache import DiskCache
from .events import CacheEvents, NoEvents
from .fill import LocalFill, OnWritten
from .health import HealthReport, TierHealth
from .memory import MemoryTier
from .node_fill import NodeFill, claim, follow_other
from .singleflight import SingleFlight
from .tier import CacheTier

log = logging.getLogger(__name__)
T = TypeVar("T")


class TierFailed(Exception):
    """A tier raised; the caller moves on to the next one."""


class TieredStore:
    def __init__(
        self,
        tiers: Sequence[CacheTier],
        durable: BlobBackend,
        *,
        local_cache: DiskCache | None = None,
        events: CacheEvents | None = None,
        retry_cap: float = 30.0,
    ) -> None:
        self.tiers = list(tiers)
        self.local_cache = local_cache
        self.durable = durable
        self._events = events or NoEvents()
        named: list[CacheTier | DiskCache] = [*self.tiers, *([local_cache] if local_cache else [])]
        self._named = named
        self._health = {t.name: TierHealth(t.name, cap=retry_cap) for t in named}
        self._small_flights: SingleFlight[Digest, bytes] = SingleFlight()
        self._fetch_flights: SingleFlight[tuple[str, Digest], BlobInfo | None] = SingleFlight()
        self._fills: dict[Digest, LocalFill] = {}
        self._background: set[asyncio.Task[object]] = set()

    # -- health -------------------------------------------------------------------------------

    def _ok(self, tier: CacheTier | DiskCache) -> bool:
        return self._health[tier.name].healthy

    async def _guard(self, tier: CacheTier | DiskCache, op: Awaitable[T]) -> T:
        try:
            result = await op
        except BlobNotFound:
            raise
        except Exception as exc:
            health = self._health[tier.name]
            if health.healthy:
                log.warning("tier %s failed, skipping it for a while: %s", tier.name, exc)
            health.failed(exc)
            raise TierFailed(tier.name) from exc
        self._health[tier.name].succeeded()
        return result

    async def health(self) -> list[HealthReport]:
        """Each tier's state, probing those that are not backing off."""
        for tier in self._named:
            if self._ok(tier):
                with contextlib.suppress(TierFailed):
                    await self._guard(tier, asyncio.wait_for(tier.ping(), 1.0))
        return [h.report() for h in self._health.values()]

    # -- reads --------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        for i, tier in enumerate(self.tiers):
            if isinstance(tier, MemoryTier):
                held = tier.peek(digest)
                if held is not None:
                    return held[0]
                continue
            if not self._ok(tier):
                continue
            upper = [t for t in self.tiers[:i] if self._ok(t)]
            try:
                info, shared = await self._fetch_flights.do(
                    (tier.name, digest), functools.partial(self._fetch, tier, digest, upper)
                )
            except TierFailed:
                continue
            if shared:
                self._events.flight_joined()
            if info is not None:
                return info
        found = await self._find_below(digest)
        if found is None:
            return None
        source, info = found
        self._promote(info, source, self.tiers)
        return info

    async def _fetch(
        self, tier: CacheTier, digest: Digest, upper: Sequence[CacheTier]
    ) -> BlobInfo | None:
        """Find the blob in ``tier`` and, in the same read, bring it up to ``upper``.

        Admitted before the answer, so the GET's open() that follows finds the bytes in
        memory: one read of Redis for a blob only Redis held, where a stat, a promotion and the
        GET's own read took four. Concurrent stats of one blob share this (single flight).
        """
        limit = max((t.max_object for t in upper), default=0)
        found = await self._guard(tier, tier.fetch(digest, limit))
        if found is None:
            return None
        info, data = found
        if data is not None:
            targets = [t for t in upper if t.accepts(info.size)]
            await asyncio.gather(*(self._admit(t, info, data) for t in targets))
        return info

    async def _find_below(self, digest: Digest) -> tuple[BlobBackend, BlobInfo] | None:
        """The local disk cache if it holds the blob, else the durable store."""
        local = self.local_cache
        if local is not None and self._ok(local):
            with contextlib.suppress(TierFailed):
                info = await self._guard(local, local.stat(digest))
                if info is not None:
                    return local, info
        info = await self.durable.stat(digest)
        return None if info is None else (self.durable, info)

    def local_path(self, digest: Digest) -> Path | None:
        """The local file to send, unless the memory tier already holds the bytes."""
        if any(isinstance(t, MemoryTier) and digest in t for t in self.tiers):
            return None
        if self.local_cache is not None:
            return self.local_cache.local_path(digest)
        return self.durable.local_path(digest)

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        for tier in self.tiers:
            if isinstance(tier, MemoryTier) and (held := tier.peek(digest)) is not None:
                data = held[1] if start == 0 and end in (None, len(held[1])) else held[1][start:end]
                self._events.hit(tier.name, len(data))
                yield data
                return
            if not self._ok(tier):
                continue
            try:
                data = await self._read_whole(tier, digest, start, end)
            except (BlobNotFound, TierFailed):
                self._events.miss(tier.name)
                continue
            self._events.hit(tier.name, len(data))
            yield data
            return
        found = await self._find_below(digest)
        if found is None:
            raise BlobNotFound(str(digest))
        source, info = found
        if any(t.accepts(info.size) and self._ok(t) for t in self.tiers):
            data, shared = await self._small_flights.do(
                digest, lambda: self._fill(info, source, self.tiers)
            )
            if shared:
                self._events.flight_joined()
            yield data[start:end]
            return
        async for chunk in self._open_large(info, source is self.local_cache, start, end):
            yield chunk

    async def _read_whole(
        self, tier: CacheTier, digest: Digest, start: int, end: int | None
    ) -> bytes:
        """A small tier's bytes, whole, before anything is yielded: a tier failing here
        never cuts a response short; the next tier serves it instead."""

        async def read() -> bytes:
            return b"".join([c async for c in tier.open(digest, start, end)])

        return await self._guard(tier, read())

    async def _open_large(
        self, info: BlobInfo, cached: bool, start: int, end: int | None
    ) -> AsyncGenerator[bytes, None]:
        local = self.local_cache
        if local is not None and self._ok(local) and local.accepts(info.size):
            if cached:
                chunks = local.open(info.digest, start, end)
                try:
                    first = await anext(chunks, b"")
                except BlobNotFound:
                    cached = False  # evicted (by another worker) since the stat: read below
                else:
                    self._events.hit(local.name, (end or info.size) - start)
                    yield first
                    async with contextlib.aclosing(chunks):
                        async for chunk in chunks:
                            yield chunk
                    return
            self._events.miss(local.name)
            fill = self._fills.get(info.digest)
            if fill is None:
                node_claim = await asyncio.to_thread(claim, local.fills, info.digest)
                fill = self._fills.get(info.digest)  # one another request started meanwhile
                if fill is None and node_claim is not None:  # this request leads the copy
                    fill = self._start_fill(local, info, node_claim)

                    def rest(position: int) -> AsyncGenerator[bytes, None]:
                        return self._after_fill(fill, local, info, position, end)

                    # Closed with the response, also when the client leaves: the copy then
                    # finishes without it (not whenever the generator happens to be collected).
                    async with contextlib.aclosing(fill.stream(start, end, rest)) as streamed:
                        async for chunk in streamed:
                            yield chunk
                    return
                if node_claim is not None:
                    await asyncio.to_thread(node_claim.release)
            self._events.flight_joined()
            if fill is None:  # another worker of this node copies it: follow that copy

                def cached_or_below(position: int) -> AsyncGenerator[bytes, None]:
                    return self._cached_or_below(local, info, position, end)

                following = follow_other(local.fills, info.digest, start, end, cached_or_below)
            else:
                this_fill = fill

                def after(position: int) -> AsyncGenerator[bytes, None]:
                    return self._after_fill(this_fill, local, info, position, end)

                following = fill.follow(start, end, after)
            async with contextlib.aclosing(following) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        # No (healthy) local cache, or a blob larger than half of it, which caching would evict
        # everything else for, itself at the next sweep, and again at each GET.
        self._events.durable_read()
        async for chunk in self.durable.open(info.digest, start, end):
            yield chunk

    async def _after_fill(
        self, fill: LocalFill, local: DiskCache, info: BlobInfo, start: int, end: int | None
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` once ``fill`` is over: from the cached copy, or from the
        durable store when the copy failed (or its file was evicted since)."""
        await asyncio.shield(fill.done)
        async with contextlib.aclosing(self._cached_or_below(local, info, start, end)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _start_fill(self, local: DiskCache, info: BlobInfo, node_claim: NodeFill) -> LocalFill:
        """One streaming, verified copy from the durable store into the local cache; the
        node's other workers follow it through ``node_claim`` until it ends."""
        self._events.durable_read()
        expected = Expectation(blake3=info.digest)

        async def store(chunks: AsyncIterator[bytes], on_written: OnWritten) -> None:
            def written(temp: Path, in_file: int) -> None:
                node_claim.note_temp(temp)
                on_written(temp, in_file)

            await local.put(chunks, expected, info.content_type, on_written=written)
            self._events.promoted(local.name)

        fill = LocalFill(self.durable.open(info.digest), store)
        self._fills[info.digest] = fill

        def over(_: object) -> None:
            self._fills.pop(info.digest, None)
            self._spawn(asyncio.to_thread(node_claim.release))

        fill.done.add_done_callback(over)
        return fill

    async def _cached_or_below(
        self, local: DiskCache, info: BlobInfo, start: int, end: int | None
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` after a copy: the cached file, or the durable store when
        that copy did not land or its file is gone (another worker's eviction)."""
        chunks = local.open(info.digest, start, end)
        try:
            first = await anext(chunks, b"")
        except BlobNotFound:
            self._events.durable_read()
            async for chunk in self.durable.open(info.digest, start, end):
                yield chunk
            return
        yield first
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    # -- promotion ----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _promote(self, info: BlobInfo, source: BlobBackend, upper: Sequence[CacheTier]) -> None:
        targets = [t for t in upper if t.accepts(info.size) and self._ok(t)]
        if targets and not self._small_flights.in_flight(info.digest):
            self._spawn(
                self._small_flights.do(info.digest, lambda: self._fill(info, source, targets))
            )

    async def _fill(
        self, info: BlobInfo, source: BlobBackend, targets: Sequence[CacheTier]
    ) -> bytes:
        """Read a small blob once from ``source`` and admit it into ``targets``."""
        if source is self.durable:
            self._events.durable_read()
        data = b"".join([c async for c in source.open(info.digest)])
        for tier in targets:
            if tier is not source and tier.accepts(info.size) and self._ok(tier):
                self._spawn(self._admit(tier, info, data))
        local = self.local_cache
        if source is self.durable and local is not None and self._ok(local):
            # Small blobs too: with the durable store down, the disk serves what it holds,
            # also once memory has let a small blob go.
            self._spawn(self._admit(local, info, data))
        return data

    async def _admit(self, tier: CacheTier | DiskCache, info: BlobInfo, data: bytes) -> None:
        with contextlib.suppress(TierFailed):
            await self._guard(tier, tier.admit(info, data))
            self._events.promoted(tier.name)

    async def drain(self) -> None:
        """Wait for background promotions and cache fills (tests, graceful shutdown)."""
        while self._background or self._fills:
            pending: list[asyncio.Future[Any]] = [
                *self._background,
                *(f.done for f in self._fills.values()),
            ]
            await asyncio.gather(*pending, return_exceptions=True)

    # -- writes and the rest ------------------------------------------------------------------

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
    ) -> PutResult:
        return await self.durable.put(chunks, expected, content_type)

    async def delete(self, digest: Digest) -> bool:
        for tier in self._named:
            with contextlib.suppress(TierFailed):
                await self._guard(tier, tier.delete(digest))
        return await self.durable.delete(digest)

    def iter_digests(self) -> AsyncIterator[Digest]:
        return self.durable.iter_digests()

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return await self.durable.resolve_sha256(sha256)

    async def exists(self, digest: Digest) -> bool:
        # The durable store decides what exists; a cache may still hold a deleted blob.
        return await self.durable.exists(digest)
