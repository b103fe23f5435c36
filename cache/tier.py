"""The cache tier interface: a ``BlobBackend`` that may forget anything, plus admission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from blobstore import BlobBackend, BlobInfo, BlobTooLarge, Digest, Expectation, StreamHasher

# Hashing below this size costs less than a thread hop.
_INLINE_HASH = 64 * 1024


@runtime_checkable
class CacheTier(BlobBackend, Protocol):
    """A bounded tier in front of the durable store. Holds whole small blobs only."""

    name: str
    max_object: int

    def accepts(self, size: int) -> bool:
        """Whether a blob of this size may be admitted at all."""

    async def fetch(self, digest: Digest, limit: int) -> tuple[BlobInfo, bytes | None] | None:
        """The blob's info, and its bytes too if it is at most ``limit`` long: one read.

        None when the tier does not hold the blob. The tier chain's ``stat`` uses it to
        promote a blob to the tiers above in the same read that finds it.
        """

    async def admit(self, info: BlobInfo, data: bytes) -> None:
        """Keep bytes already verified by a lower tier; may evict others, or decline."""

    async def ping(self) -> None:
        """Raise when the tier cannot serve (for /readyz)."""


async def collect_verified(
    chunks: AsyncIterable[bytes], expected: Expectation, content_type: str, limit: int
) -> tuple[BlobInfo, bytes]:
    """The body of a put into a cache tier: bounded, hashed, verified."""
    parts: list[bytes] = []
    total = 0
    for_limit = limit if expected.max_size is None else min(limit, expected.max_size)
    async for chunk in chunks:
        total += len(chunk)
        if total > for_limit:
            raise BlobTooLarge(for_limit)
        parts.append(chunk)
    data = b"".join(parts)
    hasher = StreamHasher()
    if len(data) > _INLINE_HASH:
        await asyncio.to_thread(hasher.update, data)
    else:
        hasher.update(data)
    hashes = hasher.result()
    expected.check(hashes)
    info = BlobInfo(hashes.blake3, hashes.size, hashes.sha256, content_type, datetime.now(UTC))
    return info, data
