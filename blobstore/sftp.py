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
shared by concurrent operations (SFTP pipelines requests). Every request is bounded by the
request timeout (``sftp_pool.Remote``); one that times out closes its connection. A dropped or
stuck connection is replaced on the next operation; idempotent operations retry once on a fresh
connection; uploads never retry on their own.

A directory of the layout that went missing behind our back (``tmp/``, a shard) is made again
by the request that finds it missing, which then runs once more; the store's own directory is
not (a volume that is not mounted must not be written under its mount point): that, a store
the server will not let us write to, and a read-only file system are ``BackendUnavailable``
(503), with what is wrong in its message; only a full disk is ``StorageFull`` (507).
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
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncssh
from asyncssh.constants import FXE_STATVFS_ST_RDONLY
from cachetools import LRUCache

from .backend import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    BlobStoreError,
    Expectation,
    PutResult,
    StorageFull,
)
from .digest import Digest, DigestError
from .disk import _coalesce, _decode_meta, _encode_meta  # one metadata format for both
from .hashing import Hashes, StreamHasher, update_off_loop
from .sftp_pool import Channel, Pool, Remote, RemoteFile, Stalled, is_lost
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
# What a server that says why answers on a full disk or an exhausted quota (SFTP v5+). OpenSSH
# speaks v3, which answers plain "failure" for that and much else: see _refusal.
_FULL = (asyncssh.SFTPNoSpaceOnFilesystem, asyncssh.SFTPQuotaExceeded)
# What a server answers when it will not let us write there at all.
_REFUSED = (asyncssh.SFTPPermissionDenied, asyncssh.SFTPWriteProtect)
# What a rename that found its target already there answers (v3: failure; v5+: says so).
_EXISTS = (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists)
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
    data: RemoteFile | None = None
    meta: RemoteFile | None = None
    last: bytes | bytearray = b""  # the last block, written by the commit
    last_at: int = 0

    async def open(
        self, remote: Remote, open_temp: Callable[[Remote, str], Awaitable[RemoteFile]]
    ) -> None:
        assert self.data_path is not None
        assert self.meta_path is not None
        data, meta = await asyncio.gather(
            open_temp(remote, self.data_path),
            open_temp(remote, self.meta_path),
            return_exceptions=True,
        )
        # Whatever opened is kept for discard(), also when the other open failed.
        self.data = data if isinstance(data, RemoteFile) else None
        self.meta = meta if isinstance(meta, RemoteFile) else None
        _raise_first([data, meta])

    async def discard(self, remote: Remote) -> None:
        """Close and remove what is left, best effort: a later start() sweeps the rest."""
        handles = [f for f in (self.data, self.meta) if f is not None]
        paths = [p for p in (self.data_path, self.meta_path) if p is not None]
        self.data = self.meta = None
        self.data_path = self.meta_path = None
        await asyncio.gather(*(f.close_quietly() for f in handles))
        await asyncio.gather(*(_remove_quietly(remote, p) for p in paths))


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

    async def _start(self, remote: Remote) -> int:
        # The store's own directory too: start() is where an operator's new store is made.
        for part in ("blobs", "meta", "sha256", "tmp"):
            await remote.makedirs(self._path(part))
        await _all(*(self._make_top_shards(remote, p) for p in ("blobs", "meta", "sha256")))
        return await self._sweep(remote)

    async def _make_top_shards(self, remote: Remote, part: str) -> None:
        """The 256 first-level shard directories, made once per store (all requests at once),
        so that an upload never finds two levels missing: that cost it two more round trips
        in turn, for each of its three trees, while a store was young."""
        base = self._path(part)
        present = set(await remote.listdir(base))
        wanted = (posixpath.join(base, f"{i:02x}") for i in range(256) if f"{i:02x}" not in present)
        await _all(*(_mkdirs(remote, path, self.root) for path in wanted))

    async def _sweep(self, remote: Remote) -> int:
        # Other nodes upload into the same tmp/, so only age tells a dead upload from a live
        # one: every write refreshes a temp file's mtime. An upload's metadata temp is written
        # only at its commit, so it is as young as its blob's temp, which shares its stem.
        cutoff = time.time() - self._stale_temp_after
        temps = [
            (str(e.filename), e.attrs.mtime)
            for e in await remote.readdir(self._path("tmp"))
            if str(e.filename).endswith(_TEMP_SUFFIX)
        ]
        live = {_temp_stem(name) for name, mtime in temps if mtime is None or mtime >= cutoff}
        removed = 0
        for name, _ in temps:
            if _temp_stem(name) in live:
                continue
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):  # another node swept it first
                await remote.remove(self._path("tmp", name))
                removed += 1
        if removed:
            log.warning("swept %d stale temp file(s) from %s/tmp", removed, self.where)
        return removed

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        """Raise BackendUnavailable when the store cannot be read: the server unreachable or
        not answering, or the store's directory gone. One request; ``ready`` asks more."""

        async def stat_root(remote: Remote) -> None:
            try:
                await remote.stat(self.root)
            except asyncssh.SFTPNoSuchFile:
                raise BackendUnavailable(self._root_missing()) from None

        await self._run(stat_root)

    async def ready(self) -> None:
        """Raise, saying why, unless the store can take an upload now (for readiness checks).

        BackendUnavailable: the server unreachable or not answering within the request
        timeout, the store's directory missing, ``tmp/`` not writable (permission denied, a
        read-only file system) or failing writes; StorageFull: under 1 MiB or no inode left.
        A probe file is made in ``tmp/`` and removed (``tmp/`` is made again if it went): two
        round trips, the first with the file system's state.
        """
        await self._run(self._ready)

    async def _ready(self, remote: Remote) -> None:
        probe = self._temp_path(".ready")
        try:
            state, f = await _all(self._statvfs(remote), self._open_temp(remote, probe))
            await _all(self._close(f), remote.remove(probe))
        except asyncssh.SFTPError as exc:
            if is_lost(exc):
                raise
            refusal = await self._refusal(remote, exc)
            if refusal is None:
                raise
            raise refusal from exc
        if state is not None and _full(state):
            raise StorageFull(self._full_disk(state))

    def _root_missing(self) -> str:
        return (
            f"{self.where}: the store's directory is missing on the server (a volume not"
            " mounted, a wrong path?); it is made only by a start, not behind the operator's back"
        )

    def _full_disk(self, vfs: asyncssh.SFTPVFSAttrs | None = None) -> str:
        free = "" if vfs is None else f": {vfs.bavail * vfs.frsize} bytes, {vfs.favail} inodes free"
        return f"{self.where}: the server's disk is full{free}"

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

    def _remote(self, channel: Channel) -> Remote:
        return Remote(channel, self._io_timeout)

    async def _run(self, op: Callable[[Remote], Awaitable[T]]) -> T:
        return (await self._run_on(op))[1]

    async def _run_on(self, op: Callable[[Remote], Awaitable[T]]) -> tuple[Channel, T]:
        """Run an idempotent operation; once more on a fresh connection if its connection died
        (or stopped answering: each request has its deadline, which closes the connection).

        Also returns the connection it ran on, for results tied to it (an open file).
        """
        retried = False
        while True:
            channel = await self._pool.lease()
            try:
                with channel.busy():
                    return channel, await op(self._remote(channel))
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
            exists, info = await self._run(lambda remote: self._load_info(remote, digest))
            if exists and info is None:
                log.warning("metadata of %s on %s unreadable; rebuilding", digest, self.where)
                info = await self._rebuild(digest)
            if info is not None:
                self._info[digest] = info
        return info

    async def exists(self, digest: Digest) -> bool:
        if digest in self._info:
            return True
        return await self._run(lambda remote: remote.exists(self._blob_path(digest)))

    async def _load_info(self, remote: Remote, digest: Digest) -> tuple[bool, BlobInfo | None]:
        """Whether the blob exists, and its metadata if that is readable."""
        # Both at once: a metadata file alone proves nothing (an upload that died before its
        # rename, or a delete halfway through).
        exists, info = await _all(
            remote.exists(self._blob_path(digest)), self._read_meta(remote, digest)
        )
        return exists, info if exists else None

    async def _rebuild(self, digest: Digest) -> BlobInfo | None:
        """``_rebuild_meta`` on a connection of its own lease: it reads the whole blob, so it
        runs under each request's deadline, not one deadline for all (a blob of gigabytes)."""
        channel = await self._pool.lease()
        with channel.busy(), self._guard(channel):
            return await self._rebuild_meta(self._remote(channel), digest)

    async def _read_meta(self, remote: Remote, digest: Digest) -> BlobInfo | None:
        try:
            return _decode_meta(digest, await _read_small(remote, self._meta_path(digest)))
        except (asyncssh.SFTPNoSuchFile, ValueError, KeyError):
            return None

    async def _rebuild_meta(self, remote: Remote, digest: Digest) -> BlobInfo | None:
        hasher = StreamHasher()
        try:
            async with await remote.open(self._blob_path(digest), "rb") as f:
                while chunk := await f.read(self._chunk_size, hasher.size):
                    await update_off_loop(hasher.update, chunk)
        except asyncssh.SFTPNoSuchFile:
            return None  # deleted meanwhile
        hashes = hasher.result()
        info = BlobInfo(digest, hashes.size, hashes.sha256, DEFAULT_CONTENT_TYPE, datetime.now(UTC))
        try:
            await self._write_meta(remote, info)
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

        async def first(remote: Remote) -> tuple[RemoteFile, bytes]:
            try:
                f = await remote.open(path, "rb")
            except asyncssh.SFTPNoSuchFile:
                self._info.pop(digest, None)  # deleted, perhaps by another node
                raise BlobNotFound(str(digest)) from None
            try:
                return f, await f.read(want(start), start)
            except BaseException:
                await f.close_quietly()
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
                        ahead = asyncio.create_task(f.read(want(offset), offset))
                    yield chunk
                    if ahead is None:
                        return
                    chunk = await ahead
                    ahead = None
                    offset += len(chunk)
        finally:
            await _settle(ahead)
            await f.close_quietly()

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return await self._run(lambda remote: self._resolve_sha256(remote, sha256.hex()))

    async def _resolve_sha256(self, remote: Remote, sha256_hex: str) -> Digest | None:
        index = self._sha256_path(sha256_hex)
        try:
            target = await remote.readlink(index)
        except asyncssh.SFTPNoSuchFile:
            return None
        except (asyncssh.SFTPBadMessage, asyncssh.SFTPFailure, asyncssh.SFTPInvalidParameter):
            # Not a symlink: the file form of the index, written where symlinks are refused.
            try:
                target = (await _read_small(remote, index)).decode("ascii", "replace").strip()
            except asyncssh.SFTPNoSuchFile:
                return None
        try:
            digest = Digest(posixpath.basename(target))
        except DigestError:
            return None
        # The index entry of an upload that died before its rename points at nothing.
        return digest if await remote.exists(self._blob_path(digest)) else None

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
        async def listdir(remote: Remote) -> list[str]:
            try:
                return await remote.listdir(path)
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
        remote = self._remote(channel)
        stem = secrets.token_hex(16)
        temps = _Temps(self._temp_path(stem=stem), self._temp_path(".meta", stem))
        body = _Body(_coalesce(chunks, self._chunk_size, expected.max_size))
        with channel.busy(), self._guard(channel, body):
            try:
                hashes = await self._upload(remote, temps, body)
                expected.check(hashes)
                result = await self._commit(remote, temps, hashes, content_type)
            except BaseException as exc:
                refusal = None
                try:
                    if isinstance(exc, asyncssh.SFTPError) and not is_lost(exc):
                        # Asked before the temps go, while they still take the space they took.
                        refusal = await self._refusal(remote, exc)
                finally:
                    await temps.discard(remote)
                if refusal is not None:
                    raise refusal from exc
                raise
        self._info[result.info.digest] = result.info
        return result

    async def _upload(self, remote: Remote, temps: _Temps, blocks: AsyncIterable[bytes]) -> Hashes:
        """Everything but the last block written (one in flight while the next is received,
        hashed meanwhile); the last block is hashed and kept for ``_commit`` to write."""
        hasher = StreamHasher()
        offset = 0
        inflight: asyncio.Future[tuple[None, None]] | None = None
        pending: bytes | bytearray | None = None
        try:
            await temps.open(remote, self._open_temp)
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
        """Writing bytes into a temp file of ours: a server that says its disk is full or a
        quota exhausted (SFTP v5+) is StorageFull here. OpenSSH (v3) answers ENOSPC, EDQUOT,
        EROFS and EIO alike as plain "failure", which ``_refusal`` sorts out with the server."""
        try:
            yield
        except _FULL as exc:
            raise StorageFull(f"{self.where}: the server could not store the bytes") from exc

    async def _refusal(self, remote: Remote, exc: asyncssh.SFTPError) -> BlobStoreError | None:
        """What a failed write request (of an upload, or of ``ready``) says about the store,
        asked of the server where the answer alone does not say; None where it says nothing
        about the store (raised as it is).

        SFTP v3, all OpenSSH speaks, has no status for ENOSPC, EDQUOT, EROFS, EIO or EFBIG:
        each is "Failure", and OpenSSH's message is only that word. Its ``statvfs@openssh.com``
        tells a full disk (no room or no inode left: StorageFull) and a read-only file system
        apart. What neither the message nor statvfs explains (a quota, which statvfs does not
        show, a file size limit, a failing disk) is BackendUnavailable: the store cannot take
        writes now, and the message says what the server reported. A directory still missing
        after ``_in_dir`` made it (a mkdir that failed for want of an inode shows so) is
        asked about the same way; the store's own directory gone is said so.
        """
        where = self.where
        if isinstance(exc, _FULL):
            return StorageFull(f"{where}: the server's disk is full ({exc.reason})")
        if isinstance(exc, _REFUSED):
            return BackendUnavailable(
                f"{where}: the server refuses to write in the store ({exc.reason}): see the"
                " owner and permissions of its directories, or a read-only mount or export"
            )
        if not isinstance(exc, asyncssh.SFTPFailure | asyncssh.SFTPNoSuchFile):
            return None
        said = exc.reason.lower()  # servers other than OpenSSH may say why
        if "no space" in said or "quota" in said:
            return StorageFull(f"{where}: the server's disk is full ({exc.reason})")
        vfs = await self._statvfs(remote)
        if (vfs is not None and vfs.flags & FXE_STATVFS_ST_RDONLY) or "read-only" in said:
            return BackendUnavailable(f"{where}: the server's file system is read-only")
        if vfs is not None and _full(vfs):
            return StorageFull(self._full_disk(vfs))
        if isinstance(exc, asyncssh.SFTPNoSuchFile):
            if not await remote.exists(self.root):
                return BackendUnavailable(self._root_missing())
            return BackendUnavailable(
                f"{where}: a directory of the store is missing and could not be made ({exc.reason})"
            )
        room = "" if vfs is None else ", though its file system has room and is writable"
        return BackendUnavailable(
            f"{where}: the server failed a write ({exc.reason!r}){room}: a disk quota, a file"
            " size limit or a disk error on the server"
        )

    async def _statvfs(self, remote: Remote) -> asyncssh.SFTPVFSAttrs | None:
        """The server's file system's state (``statvfs@openssh.com``); None where the server
        cannot say."""
        try:
            return await remote.statvfs(self.root)
        except asyncssh.SFTPError as exc:
            if is_lost(exc):
                raise
            return None

    async def _open_temp(self, remote: Remote, path: str) -> RemoteFile:
        with self._writing():
            return await self._in_dir(remote, path, lambda: remote.open(path, "xb"))

    async def _close(self, f: RemoteFile) -> None:
        with self._writing():
            await f.close()

    async def _commit(
        self, remote: Remote, temps: _Temps, hashes: Hashes, content_type: str
    ) -> PutResult:
        digest = hashes.blake3
        final = self._blob_path(digest)
        data, meta = temps.data, temps.meta
        data_path, meta_temp = temps.data_path, temps.meta_path
        assert data is not None
        assert meta is not None
        assert data_path is not None
        assert meta_temp is not None
        info = BlobInfo(digest, hashes.size, hashes.sha256, content_type, datetime.now(UTC))
        meta_path = self._meta_path(digest)
        index = self._sha256_path(hashes.sha256.hex())
        dirs = [posixpath.dirname(p) for p in (final, meta_path, index)]

        async def write_last() -> None:
            if temps.last:
                await self._write(data, temps.last, temps.last_at)

        exists, *_ = await _all(
            remote.exists(final),
            write_last(),
            self._write(meta, _encode_meta(info), 0),
            *(self._known_dir(remote, d) for d in dirs),
        )
        if exists:
            return await self._already_stored(remote, temps, final, content_type, hashes)
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
            await self._in_dir(remote, meta_path, lambda: _replace(remote, meta_temp, meta_path))
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
            self._index_sha256(remote, info),
        )
        try:
            await self._in_dir(remote, final, lambda: remote.rename(data_path, final))
        except _EXISTS:
            if not await remote.exists(final):
                raise
            # Another upload of the same bytes committed first: ours is not needed.
            return await self._already_stored(remote, temps, final, content_type, hashes)
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
        remote: Remote,
        temps: _Temps,
        final: str,
        content_type: str,
        hashes: Hashes,
    ) -> PutResult:
        """Another upload put these bytes at ``final``: drop ours, and before answering make
        sure that upload's rename is durable. It may have renamed and not yet fsynced (the end
        of ``_commit``), and this upload is about to be answered as stored."""
        await temps.discard(remote)
        async with await remote.open(final, "rb") as f:
            await self._sync(f)
        info = await self._existing_info(remote, hashes.blake3, content_type, hashes)
        return PutResult(info, False)

    async def _known_dir(self, remote: Remote, path: str) -> None:
        """Make a shard directory unless this node has seen it: one request, and none at all
        once the store has been used a while. Operations in it still recreate it if it went."""
        if path not in self._dirs:
            await _mkdirs(remote, path, self.root)
            self._dirs[path] = True

    async def _in_dir(self, remote: Remote, target: str, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``, which makes ``target``; when ``target``'s directory is missing (``tmp/`` or
        a shard removed behind our back), that is made again and ``op`` runs once more."""
        try:
            return await op()
        except asyncssh.SFTPNoSuchFile:
            directory = posixpath.dirname(target)
            self._dirs.pop(directory, None)
            log.warning("%s: %s was missing; making it again", self.where, directory)
            await _mkdirs(remote, directory, self.root)
            self._dirs[directory] = True
            return await op()

    async def _write(self, f: RemoteFile, data: bytes | bytearray, at: int) -> None:
        with self._writing():
            await f.write(data, at)

    def _flush_timeout(self, unflushed: int) -> float:
        return self._io_timeout + unflushed / _SLOWEST_FLUSH

    async def _sync(self, f: RemoteFile, unflushed: int = 0) -> None:
        # The server's fsync extension, where offered, so that a committed blob survives a crash
        # of the server; without it we rely on the server's own durability.
        with self._writing(), contextlib.suppress(asyncssh.SFTPOpUnsupported):
            await f.fsync(self._flush_timeout(unflushed))

    async def _existing_info(
        self, remote: Remote, digest: Digest, content_type: str, hashes: Hashes
    ) -> BlobInfo:
        cached = self._info.get(digest) or await self._read_meta(remote, digest)
        now = datetime.now(UTC)
        return cached or BlobInfo(digest, hashes.size, hashes.sha256, content_type, now)

    async def _write_meta(self, remote: Remote, info: BlobInfo) -> None:
        await self._place_small(remote, _encode_meta(info), self._meta_path(info.digest), ".meta")

    async def _place_small(
        self, remote: Remote, data: bytes, final: str, kind: str, *, sync: bool = True
    ) -> None:
        """A small file at ``final``, all or nothing: written to a temp name, then renamed."""
        temp = self._temp_path(kind)
        try:
            f = await self._open_temp(remote, temp)
            try:
                await self._write(f, data, 0)
                if sync:
                    await self._sync(f)
            except BaseException:
                await f.close_quietly()
                raise
            await self._close(f)
            await self._in_dir(remote, final, lambda: _replace(remote, temp, final))
        except BaseException:
            await _remove_quietly(remote, temp)
            raise

    async def _index_sha256(self, remote: Remote, info: BlobInfo) -> None:
        index = self._sha256_path(info.sha256.hex())
        # Relative, exactly as DiskBackend links it, so the tree stays valid when copied.
        target = posixpath.join("../../../blobs", *info.digest.shard(), info.digest.hex)
        try:
            await self._in_dir(remote, index, lambda: remote.symlink(target, index))
        except _EXISTS:
            if not await remote.lexists(index):
                raise
            # The same SHA-256 is the same bytes: the existing entry already points here.
        except (asyncssh.SFTPOpUnsupported, asyncssh.SFTPPermissionDenied):
            await self._place_small(remote, info.digest.hex.encode(), index, ".sha256", sync=False)

    async def delete(self, digest: Digest) -> bool:
        self._info.pop(digest, None)
        return await self._run(lambda remote: self._delete(remote, digest))

    async def _delete(self, remote: Remote, digest: Digest) -> bool:
        info = await self._read_meta(remote, digest)
        try:
            # The blob's own name goes first: from then on it does not exist for any reader.
            await remote.remove(self._blob_path(digest))
        except asyncssh.SFTPNoSuchFile:
            return False
        leftovers = [self._meta_path(digest)]
        if info is not None:
            leftovers.append(self._sha256_path(info.sha256.hex()))
        for path in leftovers:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await remote.remove(path)
        return True


def _full(vfs: asyncssh.SFTPVFSAttrs) -> bool:
    """Whether a file system is out of space or inodes for us."""
    no_inodes = vfs.files > 0 and vfs.favail == 0  # 0 files: the FS does not count them
    return vfs.bavail * vfs.frsize < _NEARLY_FULL or no_inodes


async def _mkdirs(remote: Remote, path: str, root: str) -> None:
    """``mkdir -p`` below ``root``, from the bottom up: one request when only the last level is
    missing. ``root`` itself is never made here (SFTPNoSuchFile when it is missing).

    asyncssh's ``makedirs`` walks down from ``/`` with a mkdir and a stat per level, some twenty
    round trips for a shard directory, which made them most of a small upload's cost.
    """
    try:
        await remote.mkdir(path)
    except asyncssh.SFTPNoSuchFile:
        parent = posixpath.dirname(path)
        if parent in (path, "", root):
            raise
        await _mkdirs(remote, parent, root)
        with contextlib.suppress(*_EXISTS):
            await remote.mkdir(path)
    except _EXISTS:
        pass  # there already, or made by a concurrent upload; a real failure shows in the retry


async def _replace(remote: Remote, source: str, target: str) -> None:
    try:
        await remote.posix_rename(source, target)
    except asyncssh.SFTPOpUnsupported:
        # Not atomic, but only metadata goes this way, and readers check the blob first.
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await remote.remove(target)
        await remote.rename(source, target)


async def _read_small(remote: Remote, path: str) -> bytes:
    async with await remote.open(path, "rb") as f:
        return await f.read(_SMALL_FILE, 0)


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


async def _remove_quietly(remote: Remote, path: str) -> None:
    """Best effort: a temp file that cannot be removed now is swept later."""
    with contextlib.suppress(asyncssh.Error, OSError):
        await remote.remove(path)


def _describe(where: str, exc: BaseException) -> str:
    if isinstance(exc, Stalled):
        return f"{where}: {exc}"
    return f"{where}: connection lost: {exc or type(exc).__name__}"


def _temp_stem(name: str) -> str:
    """``<stem>.part``, ``<stem>.meta.part`` -> ``<stem>``."""
    return name.split(".", 1)[0]


def _is_shard(name: str) -> bool:
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)
