"""Process memory: an LRU of whole small blobs, bounded by total bytes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from blobstore import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BlobInfo,
    BlobNotFound,
    Digest,
    Expectation,
    PutResult,
)

from .events import CacheEvents, NoEvents
from .tier import collect_verified

# Per-entry bookkeeping charged against the byte bound, so a million empty blobs still count.
_ENTRY_OVERHEAD = 256


@dataclass(frozen=True, slots=True)
class _Entry:
    info: BlobInfo
    data: bytes


class _ByteLRU(LRUCache[Digest, _Entry]):
    def __init__(self, max_bytes: int, on_evict: Any) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda e: len(e.data) + _ENTRY_OVERHEAD)
        self._on_evict = on_evict

    def popitem(self) -> tuple[Digest, _Entry]:
        item = super().popitem()
        self._on_evict()
        return item


class MemoryTier:
    name = "memory"

    def __init__(self, max_bytes: int, max_object: int, events: CacheEvents | None = None) -> None:
        self._events = events or NoEvents()
        self.max_bytes = max_bytes
        self.max_object = min(max_object, max_bytes - _ENTRY_OVERHEAD)
        self._lru = _ByteLRU(max_bytes, lambda: self._events.evicted(self.name))

    @property
    def used_bytes(self) -> int:
        return int(self._lru.currsize)

    def __contains__(self, digest: Digest) -> bool:
        return digest in self._lru

    def peek(self, digest: Digest) -> tuple[BlobInfo, bytes] | None:
        """Synchronous lookup (it cannot block or fail): the hot path of a small GET."""
        entry = self._lru.get(digest)
        return None if entry is None else (entry.info, entry.data)

    def accepts(self, size: int) -> bool:
        return size <= self.max_object

    async def admit(self, info: BlobInfo, data: bytes) -> None:
        if self.accepts(len(data)):
            self._lru[info.digest] = _Entry(info, data)

    async def ping(self) -> None:
        return None

    async def stat(self, digest: Digest) -> BlobInfo | None:
        entry = self._lru.get(digest)
        return None if entry is None else entry.info

    async def exists(self, digest: Digest) -> bool:
        return digest in self._lru

    async def fetch(self, digest: Digest, limit: int) -> tuple[BlobInfo, bytes | None] | None:
        entry = self._lru.get(digest)
        if entry is None:
            return None
        return entry.info, entry.data if len(entry.data) <= limit else None

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        entry = self._lru.get(digest)
        if entry is None:
            raise BlobNotFound(str(digest))
        data = entry.data
        yield data if start == 0 and end in (None, len(data)) else data[start:end]

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
    ) -> PutResult:
        info, data = await collect_verified(chunks, expected, content_type, self.max_object)
        present = info.digest in self._lru
        await self.admit(info, data)
        return PutResult(info, created=not present)

    async def delete(self, digest: Digest) -> bool:
        return self._lru.pop(digest, None) is not None

    async def iter_digests(self) -> AsyncIterator[Digest]:
        for digest in list(self._lru):
            yield digest

    def local_path(self, digest: Digest) -> Path | None:
        return None

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return None  # the durable store keeps the SHA-256 index
