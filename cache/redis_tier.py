"""Redis, shared by every origin node: whole small blobs as binary values under a key prefix.

Each value is a fixed 128-byte header (magic, size, SHA-256, content type) followed by the
bytes, so ``stat`` reads only the header, and ``fetch`` reads the header and, for a blob small
enough to go up to the memory tier, the bytes, in one ``GETRANGE``. Keys have no TTL: run Redis
with ``maxmemory`` and ``maxmemory-policy allkeys-lru`` and let Redis evict (README, "Redis
tier").

Bytes read from Redis are checked against their BLAKE3 digest before anything is served or
promoted (Redis is shared, writable by anything that can reach it, and a wrong answer under an
immutable ETag lives in every edge cache for a year): a value that fails is deleted and counts
as a miss. So a range is read as the whole value, which is at most ``max_object``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import blake3
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from blobstore import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BlobInfo,
    BlobNotFound,
    Digest,
    Expectation,
    PutResult,
    update_off_loop,
)

from .tier import collect_verified

log = logging.getLogger(__name__)

_MAGIC = b"OB1\x00"
_FIXED = struct.Struct(">4sQ32sB")  # magic, size, sha256, content-type length
HEADER_SIZE = 128
_MAX_CONTENT_TYPE = HEADER_SIZE - _FIXED.size


def encode_header(info: BlobInfo) -> bytes | None:
    """None when the content type does not fit: such blobs skip this tier."""
    content_type = info.content_type.encode("latin-1", "replace")
    if len(content_type) > _MAX_CONTENT_TYPE:
        return None
    fixed = _FIXED.pack(_MAGIC, info.size, info.sha256, len(content_type))
    return (fixed + content_type).ljust(HEADER_SIZE, b"\0")


def decode_header(digest: Digest, header: bytes) -> BlobInfo | None:
    if len(header) < HEADER_SIZE:
        return None
    magic, size, sha256, ct_len = _FIXED.unpack_from(header)
    if magic != _MAGIC:
        return None
    content_type = header[_FIXED.size : _FIXED.size + ct_len].decode("latin-1")
    # Redis keeps no creation time; the durable store's is authoritative where it matters.
    return BlobInfo(digest, size, sha256, content_type, datetime.fromtimestamp(0, UTC))


class RedisTier:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        max_object: int,
        prefix: str = "origin:blob:",
        timeout: float = 0.25,
        max_connections: int = 64,
    ) -> None:
        self.max_object = max_object
        self._prefix = prefix
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        # No client-side retries: a failing tier is skipped by TieredStore's health back-off,
        # which is cheaper than retrying inside every request.
        self._redis = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))

    def _key(self, digest: Digest) -> str:
        return self._prefix + digest.hex

    async def close(self) -> None:
        await self._redis.aclose()

    def accepts(self, size: int) -> bool:
        return size <= self.max_object

    async def admit(self, info: BlobInfo, data: bytes) -> None:
        header = encode_header(info)
        if header is not None and self.accepts(len(data)):
            await self._redis.set(self._key(info.digest), header + data)

    async def ping(self) -> None:
        await self._redis.ping()

    async def stat(self, digest: Digest) -> BlobInfo | None:
        found = await self.fetch(digest, 0)
        return None if found is None else found[0]

    async def exists(self, digest: Digest) -> bool:
        return await self.stat(digest) is not None  # the header only: one short GETRANGE

    async def fetch(self, digest: Digest, limit: int) -> tuple[BlobInfo, bytes | None] | None:
        # A value longer than the header plus ``limit`` comes back cut at that length: one
        # command either way, and never more than ``limit`` bytes of a blob that is not wanted.
        value = cast(
            bytes, await self._redis.getrange(self._key(digest), 0, HEADER_SIZE + limit - 1)
        )
        info = decode_header(digest, value)
        if info is None:
            return None
        if info.size > limit:
            return info, None
        data = value[HEADER_SIZE:]
        hasher = blake3.blake3()
        await update_off_loop(hasher.update, data)
        if len(data) != info.size or hasher.hexdigest() != digest.hex:
            log.warning("redis: the value of %s is not its blob; deleted", digest)
            await self._redis.delete(self._key(digest))
            return None
        return info, data

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        found = await self.fetch(digest, self.max_object)
        if found is None or found[1] is None:
            raise BlobNotFound(str(digest))
        data = found[1]
        yield data[start:end] if start or end is not None else data

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
    ) -> PutResult:
        info, data = await collect_verified(chunks, expected, content_type, self.max_object)
        present = await self.stat(info.digest) is not None
        await self.admit(info, data)
        return PutResult(info, created=not present)

    async def delete(self, digest: Digest) -> bool:
        return bool(await self._redis.delete(self._key(digest)))

    async def iter_digests(self) -> AsyncIterator[Digest]:
        async for key in self._redis.scan_iter(match=self._prefix + "*", count=1000):
            yield Digest(key.decode()[len(self._prefix) :])

    def local_path(self, digest: Digest) -> Path | None:
        return None

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return None  # the durable store keeps the SHA-256 index
