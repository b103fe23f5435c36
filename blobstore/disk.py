"""Blobs as files on a local file system, committed with temp file + fsync + link.

Layout under the root::

    blobs/ab/cd/<blake3>      the bytes; a blob exists exactly when this file does
    meta/ab/cd/<blake3>.json  size, SHA-256, content type, creation time
    sha256/ab/cd/<sha256>     symlink to the blob, for clients that only compute SHA-256
    tmp/<pid>-<random>.part   uploads in flight; stale ones are swept at start

The metadata and the SHA-256 link are made durable before the blob's own name appears, so a
visible blob always has them; a crash at any point leaves at most unreferenced files in
``tmp/`` (swept) or a metadata file without its blob (harmless, overwritten by the next upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from datetime import UTC, datetime
from pathlib import Path

import aiofiles
from cachetools import LRUCache

from .backend import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BlobInfo,
    BlobNotFound,
    BlobTooLarge,
    Expectation,
    PutResult,
    StorageFull,
)
from .digest import Digest, DigestError
from .filesink import FileSink
from .hashing import Hashes, StreamHasher

log = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TEMP_SUFFIX = ".part"
# Direct writes go to the device this many bytes at a time; 4 MiB measured best (BENCHMARKS.md).
_DIRECT_STAGE = 4 << 20


class DiskBackend:
    """A ``BlobBackend`` on a local directory; see the module docstring for the layout."""

    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = 1 << 20,
        direct_io: bool = True,
        info_cache_entries: int = 65_536,
    ) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._meta = root / "meta"
        self._sha256 = root / "sha256"
        self._tmp = root / "tmp"
        self._chunk_size = chunk_size
        self._direct_io = direct_io
        # Blobs are immutable, so a cached info can only go stale through delete(), which evicts.
        self._info: LRUCache[Digest, BlobInfo] = LRUCache(maxsize=info_cache_entries)

    async def start(self) -> int:
        """Create the layout and sweep temp files left by dead processes; returns how many."""
        return await asyncio.to_thread(self._start)

    def _start(self) -> int:
        for directory in (self._blobs, self._meta, self._sha256, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
        return self.sweep_stale_temp()

    def sweep_stale_temp(self) -> int:
        """Remove temp files whose writing process is gone.

        Temp names carry the writer's pid, so a worker that starts beside live siblings (several
        ``--workers`` share a data directory) removes only what a crashed process left behind.
        """
        removed = 0
        for entry in os.scandir(self._tmp):
            pid_text = entry.name.partition("-")[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.warning("swept %d stale temp file(s) from %s", removed, self._tmp)
        return removed

    def temp_bytes(self) -> int:
        """Bytes in the temp files of uploads under way (blocking: call it off the loop)."""
        total = 0
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(FileNotFoundError):  # committed or removed meanwhile
                total += entry.stat().st_size
        return total

    # -- paths -------------------------------------------------------------------------------

    def _blob_path(self, digest: Digest) -> Path:
        a, b = digest.shard()
        return self._blobs / a / b / digest.hex

    def _meta_path(self, digest: Digest) -> Path:
        a, b = digest.shard()
        return self._meta / a / b / f"{digest.hex}.json"

    def _sha256_path(self, sha256_hex: str) -> Path:
        return self._sha256 / sha256_hex[0:2] / sha256_hex[2:4] / sha256_hex

    def local_path(self, digest: Digest) -> Path | None:
        return self._blob_path(digest)

    # -- reads -------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        info = self._info.get(digest)
        if info is not None:
            return info
        info = await asyncio.to_thread(self._stat, digest)
        if info is not None:
            self._info[digest] = info
        return info

    async def exists(self, digest: Digest) -> bool:
        return digest in self._info or await asyncio.to_thread(self._blob_path(digest).is_file)

    def _stat(self, digest: Digest) -> BlobInfo | None:
        try:
            size = os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            return None
        try:
            return _decode_meta(digest, self._meta_path(digest).read_bytes())
        except (FileNotFoundError, ValueError, KeyError):
            # Only possible if someone edited the tree by hand: rebuild it from the bytes.
            log.warning("metadata of %s missing or unreadable; rebuilding it", digest)
            return self._rebuild_meta(digest, size)

    def _rebuild_meta(self, digest: Digest, size: int) -> BlobInfo:
        hasher = StreamHasher()
        with open(self._blob_path(digest), "rb") as f:
            while chunk := f.read(self._chunk_size):
                hasher.update(chunk)
        hashes = hasher.result()
        info = BlobInfo(digest, size, hashes.sha256, DEFAULT_CONTENT_TYPE, datetime.now(UTC))
        try:
            self._write_meta(info)
        except OSError as exc:
            # Saving it only spares the next read the rehash: a full disk is no reason to fail
            # this one.
            log.warning("cannot save the rebuilt metadata of %s: %s", digest, exc)
        return info

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if end is not None and end - start <= self._chunk_size:
            # The common small read: open, read and close in a single thread hop.
            try:
                yield await asyncio.to_thread(_read_range, self._blob_path(digest), start, end)
            except FileNotFoundError:
                self._info.pop(digest, None)
                raise BlobNotFound(str(digest)) from None
            return
        try:
            f = await aiofiles.open(self._blob_path(digest), "rb")
        except FileNotFoundError:
            self._info.pop(digest, None)  # removed behind this process (another's eviction)
            raise BlobNotFound(str(digest)) from None
        try:
            await f.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                want = self._chunk_size if remaining is None else min(self._chunk_size, remaining)
                chunk = await f.read(want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await f.close()

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return await asyncio.to_thread(self._resolve_sha256, sha256.hex())

    def _resolve_sha256(self, sha256_hex: str) -> Digest | None:
        link = self._sha256_path(sha256_hex)
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        if not (link.parent / target).exists():
            return None  # the link of an upload that crashed before its blob was committed
        try:
            return Digest(Path(target).name)
        except DigestError:
            return None

    async def iter_digests(self) -> AsyncIterator[Digest]:
        # Directory scans run in a thread a batch at a time: millions of blobs never sit in memory.
        batches = _batched(self._walk(), 1024)
        no_more: list[Digest] = []
        while batch := await asyncio.to_thread(next, batches, no_more):
            for digest in batch:
                yield digest

    def _walk(self) -> Iterator[Digest]:
        for top in os.scandir(self._blobs):
            if not top.is_dir():
                continue
            for mid in os.scandir(top.path):
                if not mid.is_dir():
                    continue
                for entry in os.scandir(mid.path):
                    try:
                        yield Digest(entry.name)
                    except DigestError:
                        continue

    # -- writes ------------------------------------------------------------------------------

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
        *,
        on_written: Callable[[Path, int], None] | None = None,
    ) -> PutResult:
        """``on_written(temp_path, n)``, when given, is called as the first ``n`` bytes become
        readable in the temp file (the local cache's readers follow a copy under way)."""
        writer = _TempWriter(self._tmp, self._direct_io)
        inflight: asyncio.Future[object] | None = None
        try:
            # Pipelined: while block N+1 is received, block N is written (with BLAKE3) in one
            # thread and SHA-256'd in another. The last block is held back so that a small blob
            # costs a single thread hop.
            pending: bytes | bytearray = b""
            async for block in _coalesce(chunks, self._chunk_size, expected.max_size):
                if pending:
                    if inflight is not None:
                        await inflight
                        if on_written is not None and writer.path is not None:
                            on_written(writer.path, writer.in_file)
                    inflight = _both(
                        asyncio.to_thread(writer.write_blake3, pending),
                        asyncio.to_thread(writer.sha256, pending),
                    )
                pending = block
            if inflight is not None:
                await inflight
            result = await asyncio.to_thread(self._commit, writer, pending, expected, content_type)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise StorageFull(f"no space left for the blob under {self.root}") from exc
            raise
        finally:
            if inflight is not None and not inflight.done():
                # A write still runs in its thread: let it finish before its file is removed.
                await asyncio.wait([inflight])
            if writer.needs_cleanup:
                await asyncio.to_thread(writer.discard)
        self._info[result.info.digest] = result.info
        return result

    def _commit(
        self,
        writer: _TempWriter,
        last: bytes | bytearray,
        expected: Expectation,
        content_type: str,
    ) -> PutResult:
        writer.write_last(last)
        hashes = writer.hashes()
        expected.check(hashes)
        final = self._blob_path(hashes.blake3)
        if final.exists():
            return PutResult(
                self._stat(hashes.blake3) or self._info_of(hashes, content_type), False
            )
        temp = writer.finish()
        info = self._info_of(hashes, content_type)
        self._write_meta(info)
        self._link_sha256(info)
        _ensure_dir(final.parent)
        try:
            os.link(temp, final)
        except FileExistsError:
            return PutResult(self._stat(hashes.blake3) or info, False)
        _fsync_dir(final.parent)
        writer.discard()
        return PutResult(info, True)

    @staticmethod
    def _info_of(hashes: Hashes, content_type: str) -> BlobInfo:
        return BlobInfo(hashes.blake3, hashes.size, hashes.sha256, content_type, datetime.now(UTC))

    def _write_meta(self, info: BlobInfo) -> None:
        path = self._meta_path(info.digest)
        _ensure_dir(path.parent)
        temp = self._tmp / f"{os.getpid()}-{secrets.token_hex(8)}.meta{_TEMP_SUFFIX}"
        try:
            with open(temp, "wb") as f:
                f.write(_encode_meta(info))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def _link_sha256(self, info: BlobInfo) -> None:
        link = self._sha256_path(info.sha256.hex())
        _ensure_dir(link.parent)
        target = os.path.relpath(self._blob_path(info.digest), link.parent)
        try:
            os.symlink(target, link)
        except FileExistsError:
            return
        _fsync_dir(link.parent)

    async def delete(self, digest: Digest) -> bool:
        self._info.pop(digest, None)
        return await asyncio.to_thread(self._delete, digest)

    def _delete(self, digest: Digest) -> bool:
        info = self._stat(digest)
        try:
            # The blob's own name goes first: from then on it does not exist for any reader.
            os.unlink(self._blob_path(digest))
        except FileNotFoundError:
            return False
        if info is not None:
            self._sha256_path(info.sha256.hex()).unlink(missing_ok=True)
        self._meta_path(digest).unlink(missing_ok=True)
        return True


class _TempWriter:
    """A temp file that is hashed as it is written; created on the first write.

    A blob that arrives in several blocks is large: its file uses direct I/O. A blob that fits
    in one block is written through the page cache, where it is also warm for the first GET.
    """

    def __init__(self, tmp_dir: Path, direct_io: bool) -> None:
        self._tmp_dir = tmp_dir
        self._direct_io = direct_io
        self._hasher = StreamHasher()
        self._path: Path | None = None
        self._sink: FileSink | None = None

    @property
    def needs_cleanup(self) -> bool:
        return self._path is not None

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def in_file(self) -> int:
        return 0 if self._sink is None else self._sink.in_file

    def _open(self, direct: bool) -> FileSink:
        if self._sink is None:
            self._path = self._tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}{_TEMP_SUFFIX}"
            self._sink = FileSink(self._path, direct=direct, stage_size=_DIRECT_STAGE)
        return self._sink

    def write_last(self, block: bytes | bytearray) -> None:
        self.sha256(block)
        self._hasher.update_blake3(block)
        self._open(direct=False).write(block)

    def sha256(self, block: bytes | bytearray) -> None:
        self._hasher.update_sha256(block)

    def write_blake3(self, block: bytes | bytearray) -> None:
        sink = self._open(direct=self._direct_io)
        self._hasher.update_blake3(block)
        sink.write(block)

    def hashes(self) -> Hashes:
        return self._hasher.result()

    def finish(self) -> Path:
        """Make the bytes durable and return the temp file's path."""
        self._open(direct=False).sync_and_close()
        self._sink = None
        assert self._path is not None
        return self._path

    def discard(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


async def _coalesce(
    chunks: AsyncIterable[bytes], size: int, limit: int | None
) -> AsyncIterator[bytes]:
    """Blocks of at least ``size`` bytes (the last may be shorter), enforcing the size limit.

    Each block is one join of the chunks it is made of, and a chunk that is a whole block by
    itself passes through as it is: every copy of a large body costs about as much CPU per MiB
    as hashing it with BLAKE3 (appending to a bytearray copies again whenever it grows).
    """
    parts: list[bytes] = []
    pending = total = 0
    async for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if limit is not None and total > limit:
            raise BlobTooLarge(limit)
        parts.append(chunk)
        pending += len(chunk)
        if pending >= size:
            yield b"".join(parts)  # a single bytes part is returned as it is
            parts.clear()
            pending = 0
    if pending:
        yield b"".join(parts)


def _both(*aws: Awaitable[None]) -> asyncio.Future[object]:
    """Run both; finish only when both have (a failed write must not race a running hash)."""

    async def run() -> None:
        for result in await asyncio.gather(*aws, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    return asyncio.ensure_future(run())


def _encode_meta(info: BlobInfo) -> bytes:
    return json.dumps(
        {
            "size": info.size,
            "sha256": info.sha256.hex(),
            "content_type": info.content_type,
            "created_at": info.created_at.isoformat(),
        }
    ).encode()


def _decode_meta(digest: Digest, raw: bytes) -> BlobInfo:
    doc = json.loads(raw)
    return BlobInfo(
        digest=digest,
        size=int(doc["size"]),
        sha256=bytes.fromhex(doc["sha256"]),
        content_type=str(doc["content_type"]),
        created_at=datetime.fromisoformat(doc["created_at"]),
    )


def _read_range(path: Path, start: int, end: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, end - start, start)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """Create a shard directory and make its own entry durable the first time."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    _fsync_dir(path.parent)
    _fsync_dir(path.parent.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _batched(items: Iterator[Digest], n: int) -> Iterator[list[Digest]]:
    batch: list[Digest] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
