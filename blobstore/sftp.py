"""Blobs on a shared SFTP server: the bulk store that several origin nodes write to at once.

The layout under the URL's path is DiskBackend's, so a copy of the tree is a valid disk store::

    blobs/ab/cd/<blake3>      the bytes; a blob exists exactly when this file does
    meta/ab/cd/<blake3>.json  size, SHA-256, content type, creation time
    sha256/ab/cd/<sha256>     symlink to the blob (a file holding the BLAKE3 hex where the
                              server refuses symlinks)
    tmp/<random>.part         uploads in flight, from any node; swept by age at start

An upload streams into ``tmp/`` while it is hashed, writes the metadata and the SHA-256 link,
and only then renames the bytes to their final name. That last step uses the protocol's plain
rename, not posix-rename: SFTP's rename never replaces an existing file (OpenSSH implements it
with link + unlink), so when two nodes upload the same bytes exactly one of them creates the blob
and the other learns that it already existed, and a partial file can never appear under a final
name. posix-rename (atomic replace) is what the metadata file wants, and gets where offered.

Operations run over a small pool of SSH connections (``sftp_pool``), one SFTP channel each,
shared by concurrent operations (SFTP pipelines requests). A dropped connection is replaced on
the next operation; idempotent operations retry once on a fresh connection; uploads never retry
on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import asyncssh
from cachetools import LRUCache

from .backend import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    Expectation,
    PutResult,
    StorageFull,
)
from .digest import Digest, DigestError
from .disk import _coalesce, _decode_meta, _encode_meta  # one metadata format for both
from .hashing import Hashes, StreamHasher, update_off_loop
from .sftp_pool import Channel, Pool, is_lost
from .sshsend import fast_channel_data, fast_requests
from .sshtune import (
    buffer_padding_randomness,
    coalesce_writes,
    keep_gcm_keys,
    log_lazily,
    skip_ignore_packets,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_TEMP_SUFFIX = ".part"
# Metadata files are a few hundred bytes; one read request of this size fetches them whole.
_SMALL_FILE = 64 * 1024
# An fsync writes out what the server still holds in memory, at its disk's speed: its deadline
# grows by a second for every this many bytes, so a blob of gigabytes on a slow disk is not
# taken for a dead connection (the usual deadline, io_timeout, is for one request).
_SLOWEST_FLUSH = 8 << 20
# What writing into a temp file of ours answers when the server's disk is full (see _writing).
_FULL = (asyncssh.SFTPNoSpaceOnFilesystem, asyncssh.SFTPQuotaExceeded, asyncssh.SFTPFailure)
# What a rename that found its target already there answers (v3: failure; v5+: says so).
_EXISTS = (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists)
# What a commit's mkdir, rename or symlink answers on a full disk (v3 has no ENOSPC; a failed
# mkdir shows as its directory missing): ambiguous, so the server is asked (_is_full).
_MAYBE_FULL = (*_FULL, asyncssh.SFTPNoSuchFile)
# Less free space than this counts as full: a commit needs a block or two, a blob more.
_NEARLY_FULL = 1 << 20


class _Body:
    """An upload's blocks, remembering whether getting the next one failed: a reset or a
    timeout there is the client's, not the SFTP connection's."""

    def __init__(self, blocks: AsyncIterable[bytes]) -> None:
        self._blocks = aiter(blocks)
        self.failed = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._blocks)
        except StopAsyncIteration:
            raise
        except Exception:
            self.failed = True
            raise


@dataclass(eq=False)
class _Temps:
    """The temp files of one upload, the blob's bytes and its metadata, until committed."""

    data_path: str | None
    meta_path: str | None
    data: asyncssh.SFTPClientFile | None = None
    meta: asyncssh.SFTPClientFile | None = None
    last: bytes | bytearray = b""  # the last block, written by the commit
    last_at: int = 0

    async def open(
        self,
        sftp: asyncssh.SFTPClient,
        open_temp: Callable[[asyncssh.SFTPClient, str], Awaitable[asyncssh.SFTPClientFile]],
    ) -> None:
        assert self.data_path is not None
        assert self.meta_path is not None
        data, meta = await asyncio.gather(
            open_temp(sftp, self.data_path),
            open_temp(sftp, self.meta_path),
            return_exceptions=True,
        )
        # Whatever opened is kept for discard(), also when the other open failed.
        self.data = data if isinstance(data, asyncssh.SFTPClientFile) else None
        self.meta = meta if isinstance(meta, asyncssh.SFTPClientFile) else None
        _raise_first([data, meta])

    async def discard(self, sftp: asyncssh.SFTPClient) -> None:
        """Close and remove what is left, best effort: a later start() sweeps the rest."""
        handles = [f for f in (self.data, self.meta) if f is not None]
        paths = [p for p in (self.data_path, self.meta_path) if p is not None]
        self.data = self.meta = None
        self.data_path = self.meta_path = None
        await asyncio.gather(*(_close_quietly(f) for f in handles))
        await asyncio.gather(*(_remove_quietly(sftp, p) for p in paths))


class SftpBackend:
    """A ``BlobBackend`` on an SFTP server; see the module docstring for the layout."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        root: str,
        *,
        client_keys: Sequence[Path | str],
        known_hosts: Path | str | None,
        pool_size: int = 4,
        chunk_size: int = 1 << 20,
        connect_timeout: float = 5.0,
        io_timeout: float = 30.0,
        keepalive_interval: float = 10.0,
        stale_temp_after: float = 3600.0,
        info_cache_entries: int = 65_536,
    ) -> None:
        """``known_hosts=None`` turns host key checking off; there is deliberately no default."""
        self.host = host
        self.port = port
        self.root = root
        self.where = f"sftp://{username + '@' if username else ''}{host}:{port}{root}"
        self._chunk_size = chunk_size
        self._io_timeout = io_timeout
        self._stale_temp_after = stale_temp_after
        self._options = asyncssh.SSHClientConnectionOptions(
            username=username if username is not None else (),
            client_keys=[str(k) for k in client_keys],
            known_hosts=None if known_hosts is None else str(known_hosts),
            # Only what was configured here: no ~/.ssh/config, no agent, no passwords.
            config=[],
            agent_path=None,
            preferred_auth="publickey",
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_auth=False,
            gss_kex=False,
            connect_timeout=connect_timeout,
            # A server that vanishes without closing the socket is noticed within ~3 intervals.
            keepalive_interval=keepalive_interval,
            keepalive_count_max=3,
            # AES-GCM ahead of the default ChaCha20: with AES instructions it costs a fraction of
            # the CPU per byte, here and on the server that every node sends its blobs to.
            encryption_algs="^aes128-gcm@openssh.com,aes256-gcm@openssh.com",
        )
        self._pool = Pool(self._open_channel, pool_size)
        buffer_padding_randomness()
        keep_gcm_keys()
        log_lazily()
        # Blobs are immutable, so a cached info can only go stale through delete(), which evicts
        # (on this node; other nodes' caches find out when open() raises BlobNotFound).
        self._info: LRUCache[Digest, BlobInfo] = LRUCache(maxsize=info_cache_entries)
        # Shard directories this node has made or found (at most 3 x 65,792 exist).
        self._dirs: LRUCache[str, bool] = LRUCache(maxsize=200_000)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        client_keys: Sequence[Path | str],
        known_hosts: Path | str | None,
        pool_size: int = 4,
        **options: Any,
    ) -> SftpBackend:
        """``sftp://user@host:port/abs/path``; ``/~/path`` is relative to the login directory.

        Other keyword arguments (timeouts, chunk size, ...) go to the constructor.
        """
        parts = urlsplit(url)
        if parts.scheme != "sftp" or not parts.hostname:
            raise ValueError(f"not an sftp://user@host[:port]/path URL: {url!r}")
        path = unquote(parts.path)
        if path in ("", "/~", "/~/"):
            path = "."
        elif path.startswith("/~/"):
            path = path[3:]
        username = unquote(parts.username) if parts.username else None
        return cls(
            parts.hostname,
            parts.port or 22,
            username,
            path.rstrip("/") or "/",
            client_keys=client_keys,
            known_hosts=known_hosts,
            pool_size=pool_size,
            **options,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> int:
        """Connect, create the layout and sweep old temp files; returns how many were swept.

        Raises BackendUnavailable when the server cannot be reached or refuses us (wrong host
        key, key not authorised), so a misconfiguration shows at startup.
        """
        return await self._run(self._start)

    async def _start(self, sftp: asyncssh.SFTPClient) -> int:
        for part in ("blobs", "meta", "sha256", "tmp"):
            await sftp.makedirs(self._path(part), exist_ok=True)
        await asyncio.gather(*(self._make_top_shards(sftp, p) for p in ("blobs", "meta", "sha256")))
        return await self._sweep(sftp)

    async def _make_top_shards(self, sftp: asyncssh.SFTPClient, part: str) -> None:
        """The 256 first-level shard directories, made once per store (all requests at once),
        so that an upload never finds two levels missing: that cost it two more round trips
        in turn, for each of its three trees, while a store was young."""
        base = self._path(part)
        present = {str(name) for name in await sftp.listdir(base)}
        wanted = (f"{i:02x}" for i in range(256))
        await asyncio.gather(
            *(_mkdirs(sftp, posixpath.join(base, t)) for t in wanted if t not in present)
        )

    async def _sweep(self, sftp: asyncssh.SFTPClient) -> int:
        # Other nodes upload into the same tmp/, so only age tells a dead upload from a live
        # one: every write refreshes a temp file's mtime. An upload's metadata temp is written
        # only at its commit, so it is as young as its blob's temp, which shares its stem.
        cutoff = time.time() - self._stale_temp_after
        temps = [
            (str(e.filename), e.attrs.mtime)
            for e in await sftp.readdir(self._path("tmp"))
            if str(e.filename).endswith(_TEMP_SUFFIX)
        ]
        live = {_temp_stem(name) for name, mtime in temps if mtime is None or mtime >= cutoff}
        removed = 0
        for name, _ in temps:
            if _temp_stem(name) in live:
                continue
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):  # another node swept it first
                await sftp.remove(self._path("tmp", name))
                removed += 1
        if removed:
            log.warning("swept %d stale temp file(s) from %s/tmp", removed, self.where)
        return removed

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        """Raise BackendUnavailable when the store cannot serve (for readiness checks)."""
        await self._run(lambda sftp: sftp.stat(self.root))

    async def _open_channel(self) -> Channel:
        try:
            conn = await asyncssh.connect(self.host, self.port, options=self._options, config=[])
        except asyncssh.HostKeyNotVerifiable as exc:
            raise BackendUnavailable(
                f"{self.where}: the server's host key is not in the known_hosts file: {exc}"
            ) from exc
        except (OSError, asyncssh.Error) as exc:
            raise BackendUnavailable(f"cannot connect to {self.where}: {exc}") from exc
        coalesce_writes(conn)
        skip_ignore_packets(conn)
        try:
            async with asyncio.timeout(self._io_timeout):
                sftp = await conn.start_sftp_client()
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            raise BackendUnavailable(f"{self.where}: no SFTP session: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        handler: Any = getattr(sftp, "_handler", None)
        fast_requests(handler)
        fast_channel_data(getattr(getattr(handler, "_writer", None), "channel", None))
        return Channel(conn, sftp)

    # -- running operations -------------------------------------------------------------------

    async def _run(self, op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        return (await self._run_on(op))[1]

    async def _run_on(self, op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> tuple[Channel, T]:
        """Run an idempotent operation; once more on a fresh connection if its connection died.

        Also returns the connection it ran on, for results tied to it (an open file).
        """
        retried = False
        while True:
            channel = await self._pool.lease()
            try:
                with channel.busy():
                    async with asyncio.timeout(self._io_timeout):
                        return channel, await op(channel.sftp)
            except Exception as exc:
                if not is_lost(exc):
                    raise
                self._pool.discard(channel)
                if retried:
                    raise BackendUnavailable(_describe(self.where, exc)) from exc
                retried = True
                log.info("connection to %s lost (%s); retrying on a new one", self.where, exc)

    @contextlib.contextmanager
    def _guard(self, channel: Channel, body: _Body | None = None) -> Iterator[None]:
        """Turn a lost connection into BackendUnavailable, and drop that connection; not for
        a failure of ``body`` (a client gone mid-upload), whose connection is others' too."""
        try:
            yield
        except Exception as exc:
            if not is_lost(exc) or (body is not None and body.failed):
                raise
            self._pool.discard(channel)
            raise BackendUnavailable(_describe(self.where, exc)) from exc

    # -- paths --------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _blob_path(self, digest: Digest) -> str:
        return self._path("blobs", *digest.shard(), digest.hex)

    def _meta_path(self, digest: Digest) -> str:
        return self._path("meta", *digest.shard(), f"{digest.hex}.json")

    def _sha256_path(self, sha256_hex: str) -> str:
        return self._path("sha256", sha256_hex[0:2], sha256_hex[2:4], sha256_hex)

    def _temp_path(self, kind: str = "", stem: str | None = None) -> str:
        """``tmp/<stem><kind>.part``; the temp files of one upload share their stem."""
        return self._path("tmp", f"{stem or secrets.token_hex(16)}{kind}{_TEMP_SUFFIX}")

    def local_path(self, digest: Digest) -> Path | None:
        return None

    # -- reads --------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        info = self._info.get(digest)
        if info is None:
            exists, info = await self._run(lambda sftp: self._load_info(sftp, digest))
            if exists and info is None:
                log.warning("metadata of %s on %s unreadable; rebuilding", digest, self.where)
                info = await self._rebuild(digest)
            if info is not None:
                self._info[digest] = info
        return info

    async def exists(self, digest: Digest) -> bool:
        if digest in self._info:
            return True
        found: bool = await self._run(lambda sftp: sftp.exists(self._blob_path(digest)))
        return found

    async def _load_info(
        self, sftp: asyncssh.SFTPClient, digest: Digest
    ) -> tuple[bool, BlobInfo | None]:
        """Whether the blob exists, and its metadata if that is readable."""
        # Both at once: a metadata file alone proves nothing (an upload that died before its
        # rename, or a delete halfway through).
        exists, info = await asyncio.gather(
            sftp.exists(self._blob_path(digest)), self._read_meta(sftp, digest)
        )
        return exists, info if exists else None

    async def _rebuild(self, digest: Digest) -> BlobInfo | None:
        """``_rebuild_meta`` on a connection of its own lease: it reads the whole blob, so it
        runs under each request's deadline, not one deadline for all (a blob of gigabytes)."""
        channel = await self._pool.lease()
        with channel.busy(), self._guard(channel):
            return await self._rebuild_meta(channel.sftp, digest)

    async def _read_meta(self, sftp: asyncssh.SFTPClient, digest: Digest) -> BlobInfo | None:
        try:
            return _decode_meta(digest, await _read_small(sftp, self._meta_path(digest)))
        except (asyncssh.SFTPNoSuchFile, ValueError, KeyError):
            return None

    async def _rebuild_meta(self, sftp: asyncssh.SFTPClient, digest: Digest) -> BlobInfo | None:
        hasher = StreamHasher()
        try:
            async with sftp.open(self._blob_path(digest), "rb") as f:
                while chunk := await self._read(f, self._chunk_size, hasher.size):
                    await update_off_loop(hasher.update, chunk)
        except asyncssh.SFTPNoSuchFile:
            return None  # deleted meanwhile
        hashes = hasher.result()
        info = BlobInfo(digest, hashes.size, hashes.sha256, DEFAULT_CONTENT_TYPE, datetime.now(UTC))
        try:
            await self._write_meta(sftp, info)
        except (StorageFull, asyncssh.SFTPError) as exc:
            # Saving it only spares the next node the rehash: a full disk, or a directory the
            # server would not make, is no reason to fail a read.
            if is_lost(exc):
                raise
            log.warning("cannot save the rebuilt metadata of %s in %s: %s", digest, self.where, exc)
        return info

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        path = self._blob_path(digest)

        def want(offset: int) -> int:
            return self._chunk_size if end is None else max(0, min(self._chunk_size, end - offset))

        async def first(sftp: asyncssh.SFTPClient) -> tuple[asyncssh.SFTPClientFile, bytes]:
            try:
                f = await sftp.open(path, "rb")
            except asyncssh.SFTPNoSuchFile:
                self._info.pop(digest, None)  # deleted, perhaps by another node
                raise BlobNotFound(str(digest)) from None
            try:
                return f, await self._read(f, want(start), start)
            except BaseException:
                await _close_quietly(f)
                raise

        # Opening and the first read are retried like any read; once bytes have gone out to the
        # caller, a lost connection ends the stream with BackendUnavailable.
        channel, (f, chunk) = await self._run_on(first)
        offset = start + len(chunk)
        ahead: asyncio.Task[bytes] | None = None
        try:
            with channel.busy(), self._guard(channel):
                while chunk:
                    # Read the next block while the caller sends this one.
                    if want(offset):
                        ahead = asyncio.create_task(self._read(f, want(offset), offset))
                    yield chunk
                    if ahead is None:
                        return
                    chunk = await ahead
                    ahead = None
                    offset += len(chunk)
        finally:
            await _settle(ahead)
            await _close_quietly(f)

    async def _read(self, f: asyncssh.SFTPClientFile, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes, fewer only at the end of the file (or after a short read).

        Split into one request per server-sized piece here, all in flight at once: asyncssh's own
        splitting leaves its tasks' exceptions unretrieved when the connection drops.
        """
        if size <= 0:
            return b""
        step = f.read_len or size
        starts = range(0, size, step)
        async with asyncio.timeout(self._io_timeout):
            parts = await asyncio.gather(
                *(_read_at(f, min(step, size - i), offset + i) for i in starts)
            )
        data = bytearray()
        for i, part in zip(starts, parts, strict=True):
            data += part
            if len(part) < min(step, size - i):
                break  # the caller asks for the rest at the new offset
        return bytes(data)

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return await self._run(lambda sftp: self._resolve_sha256(sftp, sha256.hex()))

    async def _resolve_sha256(self, sftp: asyncssh.SFTPClient, sha256_hex: str) -> Digest | None:
        index = self._sha256_path(sha256_hex)
        try:
            target = str(await sftp.readlink(index))
        except asyncssh.SFTPNoSuchFile:
            return None
        except (asyncssh.SFTPBadMessage, asyncssh.SFTPFailure, asyncssh.SFTPInvalidParameter):
            # Not a symlink: the file form of the index, written where symlinks are refused.
            try:
                target = (await _read_small(sftp, index)).decode("ascii", "replace").strip()
            except asyncssh.SFTPNoSuchFile:
                return None
        try:
            digest = Digest(posixpath.basename(target))
        except DigestError:
            return None
        # The index entry of an upload that died before its rename points at nothing.
        return digest if await sftp.exists(self._blob_path(digest)) else None

    async def iter_digests(self) -> AsyncIterator[Digest]:
        # One directory at a time, each listing retried on its own: no digest is yielded twice.
        blobs = self._path("blobs")
        for top in await self._listdir(blobs):
            if not _is_shard(top):
                continue
            for mid in await self._listdir(posixpath.join(blobs, top)):
                if not _is_shard(mid):
                    continue
                for name in await self._listdir(posixpath.join(blobs, top, mid)):
                    try:
                        digest = Digest(name)
                    except DigestError:
                        continue
                    yield digest

    async def _listdir(self, path: str) -> list[str]:
        async def listdir(sftp: asyncssh.SFTPClient) -> list[str]:
            try:
                return [str(name) for name in await sftp.listdir(path)]
            except asyncssh.SFTPNoSuchFile:
                return []

        return await self._run(listdir)

    # -- writes -------------------------------------------------------------------------------

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
    ) -> PutResult:
        """Stream into a temp file, then commit with as few round trips as the order allows.

        Requests go out together on the one SFTP channel wherever the order allows (the server
        answers them in turn; the wait is one round trip, not one each): the metadata's temp
        file is opened with the blob's; after the last byte, the last write, the metadata, the
        check for the final name and the shard directories; then, if the blob is new, both
        files' fsyncs, the metadata's close and rename, and the SHA-256 link; then the blob's
        rename; last, the blob's second fsync (which makes the rename durable) and its close.
        A small blob is five round trips; it was thirteen, and up to twenty with new
        directories.
        """
        # Never retried here: the body has been consumed. The caller may retry the request.
        channel = await self._pool.lease()
        sftp = channel.sftp
        stem = secrets.token_hex(16)
        temps = _Temps(self._temp_path(stem=stem), self._temp_path(".meta", stem))
        body = _Body(_coalesce(chunks, self._chunk_size, expected.max_size))
        with channel.busy(), self._guard(channel, body):
            try:
                hashes = await self._upload(sftp, temps, body)
                expected.check(hashes)
                result = await self._commit(sftp, temps, hashes, content_type)
            except _MAYBE_FULL as exc:
                # Asked before the temps go, while they still take the space they took.
                full = await self._is_full(sftp)
                await temps.discard(sftp)
                if full:
                    raise StorageFull(f"{self.where}: the server's disk is full") from exc
                raise
            except BaseException:
                await temps.discard(sftp)
                raise
        self._info[result.info.digest] = result.info
        return result

    async def _upload(
        self, sftp: asyncssh.SFTPClient, temps: _Temps, blocks: AsyncIterable[bytes]
    ) -> Hashes:
        """Everything but the last block written (one in flight while the next is received,
        hashed meanwhile); the last block is hashed and kept for ``_commit`` to write."""
        hasher = StreamHasher()
        offset = 0
        inflight: asyncio.Future[tuple[None, None]] | None = None
        pending: bytes | bytearray | None = None
        try:
            await temps.open(sftp, self._open_temp)
            async for block in blocks:
                if pending is not None:
                    if inflight is not None:
                        await inflight
                    assert temps.data is not None
                    write = self._write(temps.data, pending, offset)
                    inflight = asyncio.gather(update_off_loop(hasher.update, pending), write)
                    offset += len(pending)
                pending = block
            if inflight is not None:
                await inflight
        finally:
            await _settle(inflight)
        if pending is not None:
            await update_off_loop(hasher.update, pending)
        temps.last, temps.last_at = pending or b"", offset
        return hasher.result()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Writing bytes into a temp file of ours: a failure there means the disk is full.

        SFTP v3 (OpenSSH) reports ENOSPC, EDQUOT and EFBIG as plain "failure", on the open, a
        write, the fsync or only on the close; later protocol versions say it outright.
        """
        try:
            yield
        except _FULL as exc:
            raise StorageFull(f"{self.where}: the server could not store the bytes") from exc

    async def _is_full(self, sftp: asyncssh.SFTPClient) -> bool:
        """Whether the server's file system is out of space or inodes (``statvfs@openssh.com``;
        False where the server cannot say)."""
        try:
            async with asyncio.timeout(self._io_timeout):
                vfs = await sftp.statvfs(self.root)
        except (asyncssh.SFTPError, TimeoutError):
            return False
        no_inodes = vfs.files > 0 and vfs.favail == 0  # 0 files: the FS does not count them
        return vfs.bavail * vfs.frsize < _NEARLY_FULL or no_inodes

    async def _open_temp(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPClientFile:
        with self._writing():
            return await sftp.open(path, "xb")

    async def _close(self, f: asyncssh.SFTPClientFile) -> None:
        with self._writing():
            await f.close()

    async def _commit(
        self, sftp: asyncssh.SFTPClient, temps: _Temps, hashes: Hashes, content_type: str
    ) -> PutResult:
        digest = hashes.blake3
        final = self._blob_path(digest)
        data, meta = temps.data, temps.meta
        assert data is not None
        assert meta is not None
        info = BlobInfo(digest, hashes.size, hashes.sha256, content_type, datetime.now(UTC))
        meta_path = self._meta_path(digest)
        index = self._sha256_path(hashes.sha256.hex())
        dirs = [posixpath.dirname(p) for p in (final, meta_path, index)]

        async def write_last() -> None:
            if temps.last:
                await self._write(data, temps.last, temps.last_at)

        exists, *_ = await _all(
            sftp.exists(final),
            write_last(),
            self._write(meta, _encode_meta(info), 0),
            *(self._known_dir(sftp, d) for d in dirs),
        )
        if exists:
            return await self._already_stored(sftp, temps, final, content_type, hashes)
        # Metadata and index before the blob's name: a visible blob always has both. The
        # requests on one file go out back to back, not each after the last one's answer: a
        # server processes requests on the same file in the order received (SFTP v3,
        # draft-ietf-secsh-filexfer-02, 6.1). A failure still stops the commit before the
        # blob's rename; what it leaves is temp files and perhaps a metadata file without
        # its blob, which readers ignore (they check the blob first) and the next upload of
        # the blob replaces.

        async def close_meta() -> None:
            await self._close(meta)
            temps.meta = None

        async def place_meta() -> None:
            await self._in_dir(sftp, _replace, sftp, temps.meta_path, meta_path)
            temps.meta_path = None

        async def close_data() -> None:
            await self._close(data)
            temps.data = None

        await _all(
            # The server answers the metadata's fsync after the blob's: both wait for its flush.
            self._sync(data, hashes.size),
            self._sync(meta, hashes.size),
            close_meta(),
            place_meta(),
            self._index_sha256(sftp, info),
        )
        try:
            await self._in_dir(sftp, sftp.rename, temps.data_path, final)
        except _EXISTS:
            if not await sftp.exists(final):
                raise
            # Another upload of the same bytes committed first: ours is not needed.
            return await self._already_stored(sftp, temps, final, content_type, hashes)
        temps.data_path = None
        # The rename is durable only once the server's file system commits it, and SFTP has
        # no way to fsync a directory. The blob's handle is still open: its second fsync, after
        # the rename changed the file (its ctime, its links), makes ext4, XFS and btrfs commit
        # the journal up to that change, rename included (and the metadata's, and the link,
        # made before it). Only then is the upload answered.
        await _all(self._sync(data), close_data())
        return PutResult(info, True)

    async def _already_stored(
        self,
        sftp: asyncssh.SFTPClient,
        temps: _Temps,
        final: str,
        content_type: str,
        hashes: Hashes,
    ) -> PutResult:
        """Another upload put these bytes at ``final``: drop ours, and before answering make
        sure that upload's rename is durable. It may have renamed and not yet fsynced (the end
        of ``_commit``), and this upload is about to be answered as stored."""
        await temps.discard(sftp)
        async with sftp.open(final, "rb") as f:
            await self._sync(f)
        info = await self._existing_info(sftp, hashes.blake3, content_type, hashes)
        return PutResult(info, False)

    async def _known_dir(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        """Make a shard directory unless this node has seen it: one request, and none at all
        once the store has been used a while. Operations in it still recreate it if it went."""
        if path not in self._dirs:
            await _mkdirs(sftp, path)
            self._dirs[path] = True

    async def _in_dir(
        self, sftp: asyncssh.SFTPClient, op: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        """``op(*args)`` whose last argument is a path; creates its directory if that is missing."""
        try:
            await op(*args)
        except asyncssh.SFTPNoSuchFile:
            target = args[-1]
            assert isinstance(target, str)
            directory = posixpath.dirname(target)
            self._dirs.pop(directory, None)
            await _mkdirs(sftp, directory)
            self._dirs[directory] = True
            await op(*args)

    async def _write(self, f: asyncssh.SFTPClientFile, data: bytes | bytearray, at: int) -> None:
        # Split like _read, for the same reason. Views, not copies: asyncssh copies each block
        # into its request anyway (its annotation says bytes; it takes any buffer).
        step = f.write_len or len(data)
        view = memoryview(data)
        blocks = [(cast(bytes, view[i : i + step]), at + i) for i in range(0, len(data), step)]
        with self._writing():
            async with asyncio.timeout(self._io_timeout):
                await asyncio.gather(*(f.write(block, offset) for block, offset in blocks))

    def _flush_timeout(self, unflushed: int) -> float:
        return self._io_timeout + unflushed / _SLOWEST_FLUSH

    async def _sync(self, f: asyncssh.SFTPClientFile, unflushed: int = 0) -> None:
        # The server's fsync extension, where offered, so that a committed blob survives a crash
        # of the server; without it we rely on the server's own durability.
        with self._writing(), contextlib.suppress(asyncssh.SFTPOpUnsupported):
            async with asyncio.timeout(self._flush_timeout(unflushed)):
                await f.fsync()

    async def _existing_info(
        self, sftp: asyncssh.SFTPClient, digest: Digest, content_type: str, hashes: Hashes
    ) -> BlobInfo:
        cached = self._info.get(digest) or await self._read_meta(sftp, digest)
        now = datetime.now(UTC)
        return cached or BlobInfo(digest, hashes.size, hashes.sha256, content_type, now)

    async def _write_meta(self, sftp: asyncssh.SFTPClient, info: BlobInfo) -> None:
        await self._place_small(sftp, _encode_meta(info), self._meta_path(info.digest), ".meta")

    async def _place_small(
        self, sftp: asyncssh.SFTPClient, data: bytes, final: str, kind: str, *, sync: bool = True
    ) -> None:
        """A small file at ``final``, all or nothing: written to a temp name, then renamed."""
        temp = self._temp_path(kind)
        try:
            f = await self._open_temp(sftp, temp)
            try:
                await self._write(f, data, 0)
                if sync:
                    await self._sync(f)
            except BaseException:
                await _close_quietly(f)
                raise
            await self._close(f)
            await self._in_dir(sftp, _replace, sftp, temp, final)
        except BaseException:
            await _remove_quietly(sftp, temp)
            raise

    async def _index_sha256(self, sftp: asyncssh.SFTPClient, info: BlobInfo) -> None:
        index = self._sha256_path(info.sha256.hex())
        # Relative, exactly as DiskBackend links it, so the tree stays valid when copied.
        target = posixpath.join("../../../blobs", *info.digest.shard(), info.digest.hex)
        try:
            await self._in_dir(sftp, sftp.symlink, target, index)
        except _EXISTS:
            if not await sftp.lexists(index):
                raise
            # The same SHA-256 is the same bytes: the existing entry already points here.
        except (asyncssh.SFTPOpUnsupported, asyncssh.SFTPPermissionDenied):
            await self._place_small(sftp, info.digest.hex.encode(), index, ".sha256", sync=False)

    async def delete(self, digest: Digest) -> bool:
        self._info.pop(digest, None)
        return await self._run(lambda sftp: self._delete(sftp, digest))

    async def _delete(self, sftp: asyncssh.SFTPClient, digest: Digest) -> bool:
        info = await self._read_meta(sftp, digest)
        try:
            # The blob's own name goes first: from then on it does not exist for any reader.
            await sftp.remove(self._blob_path(digest))
        except asyncssh.SFTPNoSuchFile:
            return False
        leftovers = [self._meta_path(digest)]
        if info is not None:
            leftovers.append(self._sha256_path(info.sha256.hex()))
        for path in leftovers:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)
        return True


async def _mkdirs(sftp: asyncssh.SFTPClient, path: str) -> None:
    """``mkdir -p`` from the bottom up: one request when only the last level is missing.

    asyncssh's ``makedirs`` walks down from ``/`` with a mkdir and a stat per level, some twenty
    round trips for a shard directory, which made them most of a small upload's cost.
    """
    try:
        await sftp.mkdir(path)
    except asyncssh.SFTPNoSuchFile:
        parent = posixpath.dirname(path)
        if parent in (path, ""):
            raise
        await _mkdirs(sftp, parent)
        with contextlib.suppress(*_EXISTS):
            await sftp.mkdir(path)
    except _EXISTS:
        pass  # there already, or made by a concurrent upload; a real failure shows in the retry


async def _replace(sftp: asyncssh.SFTPClient, source: str, target: str) -> None:
    try:
        await sftp.posix_rename(source, target)
    except asyncssh.SFTPOpUnsupported:
        # Not atomic, but only metadata goes this way, and readers check the blob first.
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await sftp.remove(target)
        await sftp.rename(source, target)


async def _read_small(sftp: asyncssh.SFTPClient, path: str) -> bytes:
    async with sftp.open(path, "rb") as f:
        return await _read_at(f, _SMALL_FILE, 0)


async def _read_at(f: asyncssh.SFTPClientFile, size: int, offset: int) -> bytes:
    data: bytes = await f.read(size, offset)  # bytes: files are opened in binary mode
    return data


async def _all(*aws: Awaitable[Any]) -> list[Any]:
    """``gather`` that lets every request finish before it raises the first failure, so none
    is still running when the caller cleans up after it."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    _raise_first(results)
    return results


def _raise_first(results: list[Any]) -> None:
    """Raise the first exception among ``gather(..., return_exceptions=True)``'s results."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _settle(fut: asyncio.Future[T] | None) -> None:
    """Stop a background read or write that is no longer wanted, and mark its outcome seen."""
    if fut is None:
        return
    if not fut.done():
        fut.cancel()
        await asyncio.wait([fut])
    if not fut.cancelled():
        fut.exception()


async def _remove_quietly(sftp: asyncssh.SFTPClient, path: str) -> None:
    """Best effort, bounded: a temp file that cannot be removed now is swept later."""
    with contextlib.suppress(asyncssh.Error, OSError):
        async with asyncio.timeout(5):
            await sftp.remove(path)


async def _close_quietly(f: asyncssh.SFTPClientFile) -> None:
    with contextlib.suppress(asyncssh.Error, OSError):
        async with asyncio.timeout(5):
            await f.close()


def _describe(where: str, exc: BaseException) -> str:
    return f"{where}: connection lost: {exc or type(exc).__name__}"


def _temp_stem(name: str) -> str:
    """``<stem>.part``, ``<stem>.meta.part`` -> ``<stem>``."""
    return name.split(".", 1)[0]


def _is_shard(name: str) -> bool:
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)
