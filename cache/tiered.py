"""The tier chain: cache tiers in front of one durable backend, itself a ``BlobBackend``.

Reads go down the chain (memory -> Redis -> ... -> durable) and the first tier holding the
blob serves it. A blob found below is promoted into the upper tiers that accept its size, in
the background, after the bytes have been handed to the reader. Concurrent misses for one digest
share one fetch from below (single flight). A tier that raises is skipped for a back-off
(``TierHealth``), so a dead Redis costs no request its timeout. Writes go to the durable store
only; the caches fill afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

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

from .events import CacheEvents, NoEvents
from .health import HealthReport, TierHealth
from .memory import MemoryTier
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
        events: CacheEvents | None = None,
        durable_name: str = "durable",
    ) -> None:
        self.tiers = list(tiers)
        self.durable = durable
        self._events = events or NoEvents()
        self._durable_name = durable_name
        self._health = {t.name: TierHealth(t.name) for t in self.tiers}
        self._flights: SingleFlight[Digest, bytes] = SingleFlight()
        self._background: set[asyncio.Task[None]] = set()

    # -- health -------------------------------------------------------------------------------

    def _usable(self) -> list[CacheTier]:
        return [t for t in self.tiers if self._health[t.name].healthy]

    async def _guard(self, tier: CacheTier, op: Awaitable[T]) -> T:
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
        for tier in self._usable():
            with contextlib.suppress(TierFailed):
                await self._guard(tier, asyncio.wait_for(tier.ping(), 1.0))
        return [self._health[t.name].report() for t in self.tiers]

    # -- reads --------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        for tier in self._usable():
            try:
                info = await self._guard(tier, tier.stat(digest))
            except TierFailed:
                continue
            if info is not None:
                return info
        return await self.durable.stat(digest)

    def local_path(self, digest: Digest) -> Path | None:
        """The durable file, unless the memory tier already holds the bytes (faster still)."""
        if any(isinstance(t, MemoryTier) and digest in t for t in self.tiers):
            return None
        return self.durable.local_path(digest)

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        for i, tier in enumerate(self.tiers):
            if not self._health[tier.name].healthy:
                continue
            try:
                data = await self._read_tier(tier, digest, start, end)
            except (BlobNotFound, TierFailed):
                self._events.miss(tier.name)
                continue
            self._events.hit(tier.name, len(data))
            if i > 0:
                self._promote_later(digest, self.tiers[:i])
            yield data
            return
        info = await self.durable.stat(digest)
        if info is None:
            raise BlobNotFound(str(digest))
        if any(t.accepts(info.size) for t in self._usable()):
            data, shared = await self._flights.do(digest, lambda: self._fetch_durable(info))
            if shared:
                self._events.flight_joined()
            yield data[start:end]
            return
        self._events.durable_read()
        async for chunk in self.durable.open(digest, start, end):
            yield chunk

    async def _read_tier(
        self, tier: CacheTier, digest: Digest, start: int, end: int | None
    ) -> bytes:
        """A small tier's bytes, whole, before anything is yielded: a tier failing here
        never cuts a response short, the next tier serves it instead."""

        async def read() -> bytes:
            return b"".join([c async for c in tier.open(digest, start, end)])

        return await self._guard(tier, read())

    async def _fetch_durable(self, info: BlobInfo) -> bytes:
        """One read from the durable store for every concurrent miss; then fill the caches."""
        self._events.durable_read()
        data = b"".join([c async for c in self.durable.open(info.digest)])
        self._events.hit(self._durable_name, len(data))
        self._admit_later(info, data, self.tiers)
        return data

    # -- promotion ----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _promote_later(self, digest: Digest, upper: Sequence[CacheTier]) -> None:
        async def promote() -> None:
            info = await self.stat(digest)
            if info is None:
                return
            chunks = [c async for c in self.open(digest)]
            self._admit_later(info, b"".join(chunks), upper)

        if any(self._health[t.name].healthy for t in upper):
            self._spawn(promote())

    def _admit_later(self, info: BlobInfo, data: bytes, tiers: Sequence[CacheTier]) -> None:
        async def admit(tier: CacheTier) -> None:
            try:
                await self._guard(tier, tier.admit(info, data))
            except TierFailed:
                return
            self._events.promoted(tier.name)

        for tier in tiers:
            if tier.accepts(info.size) and self._health[tier.name].healthy:
                self._spawn(admit(tier))

    async def drain(self) -> None:
        """Wait for background promotions (tests and graceful shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- writes and the rest ------------------------------------------------------------------

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
    ) -> PutResult:
        result = await self.durable.put(chunks, expected, content_type)
        return result

    async def delete(self, digest: Digest) -> bool:
        for tier in self.tiers:
            try:
                await self._guard(tier, tier.delete(digest))
            except TierFailed:
                continue
        return await self.durable.delete(digest)

    def iter_digests(self) -> AsyncIterator[Digest]:
        return self.durable.iter_digests()

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return await self.durable.resolve_sha256(sha256)
