"""The one interface every durable backend and every cache tier implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from .digest import Digest
from .hashing import Hashes

DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What is known about a stored blob without reading its bytes."""

    digest: Digest
    size: int
    sha256: bytes
    content_type: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PutResult:
    info: BlobInfo
    created: bool  # False when the blob was already present: the upload changed nothing


class BlobStoreError(Exception):
    """Base of the errors a backend reports; the HTTP layer maps each to one status."""


class BlobNotFound(BlobStoreError):
    pass


class DigestMismatch(BlobStoreError):
    def __init__(self, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"{algorithm} of the body is {actual}, the client declared {expected}")
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class StorageFull(BlobStoreError):
    pass


class BackendUnavailable(BlobStoreError):
    """A remote store (SFTP) cannot be reached or the connection dropped mid-operation (HTTP
    503).

    Nothing was committed by the failed operation; an upload may have left a temp file that a
    later ``start()`` sweeps.
    """


class BlobTooLarge(BlobStoreError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the client declared about the bytes; a put that does not match stores nothing."""

    blake3: Digest | None = None
    sha256: bytes | None = None
    max_size: int | None = None

    def check(self, hashes: Hashes) -> None:
        if self.blake3 is not None and hashes.blake3 != self.blake3:
            raise DigestMismatch("blake3", str(self.blake3), str(hashes.blake3))
        if self.sha256 is not None and hashes.sha256 != self.sha256:
            raise DigestMismatch("sha-256", self.sha256.hex(), hashes.sha256.hex())


NOTHING_EXPECTED = Expectation()


@runtime_checkable
class BlobBackend(Protocol):
    async def stat(self, digest: Digest) -> BlobInfo | None:
        """The blob's info, or None when it is not stored here."""

    async def exists(self, digest: Digest) -> bool:
        """Whether the blob is stored here; cheaper than ``stat`` where the info is a read of
        its own (on SFTP, one request instead of four)."""

    def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` as a stream of chunks; raises BlobNotFound."""

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
    ) -> PutResult:
        """Hash while streaming, verify, then commit atomically; nothing is visible on failure."""

    async def delete(self, digest: Digest) -> bool:
        """True when a blob was removed."""

    def iter_digests(self) -> AsyncIterator[Digest]:
        """Every stored digest, in no particular order."""

    def local_path(self, digest: Digest) -> Path | None:
        """Where the bytes are a local file (for sendfile), else None."""

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        """The BLAKE3 address of the blob with this SHA-256 (for clients without BLAKE3)."""
