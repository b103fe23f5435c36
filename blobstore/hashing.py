"""One pass over the bytes computes both addresses: BLAKE3 (ours) and SHA-256 (Godot's)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from .digest import Digest

# Below this, hashing a buffer costs less than the hop to a worker thread.
INLINE_HASH = 64 * 1024


@dataclass(frozen=True, slots=True)
class Hashes:
    blake3: Digest
    sha256: bytes
    size: int


class StreamHasher:
    """Feeds every chunk to both hash functions.

    Both implementations release the GIL on large buffers, so callers hash big chunks in worker
    threads and the event loop keeps receiving meanwhile. The two halves may run in two threads
    at once (SHA-256 is several times slower than BLAKE3), as long as each half sees the chunks
    in order; ``DiskBackend.put`` does that.
    """

    __slots__ = ("_b3", "_sha", "_size")

    def __init__(self) -> None:
        self._b3 = blake3.blake3()
        self._sha = hashlib.sha256()
        self._size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self.update_blake3(chunk)
        self.update_sha256(chunk)

    def update_blake3(self, chunk: bytes | bytearray | memoryview) -> None:
        self._b3.update(chunk)
        self._size += len(chunk)

    def update_sha256(self, chunk: bytes | bytearray | memoryview) -> None:
        self._sha.update(chunk)

    @property
    def size(self) -> int:
        return self._size

    def result(self) -> Hashes:
        return Hashes(Digest(self._b3.hexdigest()), self._sha.digest(), self._size)


def hash_bytes(data: bytes) -> Hashes:
    hasher = StreamHasher()
    hasher.update(data)
    return hasher.result()


async def update_off_loop(
    update: Callable[[bytes | bytearray | memoryview], object],
    data: bytes | bytearray | memoryview,
) -> None:
    """``update(data)``: in a worker thread when ``data`` is worth the hop (both hash
    implementations release the GIL on large buffers), else here."""
    if len(data) > INLINE_HASH:
        await asyncio.to_thread(update, data)
    else:
        update(data)
