"""Local disk as a byte-bounded LRU cache of whole blobs, for when the durable store is remote.

The bytes live in a ``DiskBackend`` (same atomic commit, same layout, sendfile-able). Access
order lives in a small SQLite index beside them (``lru.sqlite``: digest, size, last access), so
a restart knows what to evict without scanning millions of files; the scan that reconciles the
index with the files runs in the background. Accesses are remembered in memory and written in
batches. Eviction runs in the background once the total passes the bound, oldest access first,
down to 90 %, skipping blobs this process is reading or writing; a reader in another worker
keeps its open file, which Linux keeps readable after the name is gone. One process evicts at a
time (a lock file); all SQLite work runs on one dedicated thread.

The bound is ``max_bytes``, or less when the file system cannot hold that much (a disk smaller
than configured, other files on it, the catalog beside the cache on one node): the cache then
leaves 5 % of it free (at most 1 GiB), as nginx's ``min_free`` does. That ``capacity`` is read again
at every sweep, counting the cache's own blobs and copies under way as room it may use; a blob
larger than half of it is not cached at all. A copy that still finds the disk full (others
wrote to it since the sweep) wakes a sweep that frees a tenth of the capacity more. Without
this a full disk refused every fill and nothing new was ever cached, while the catalog on the
same disk answered 507.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from blobstore import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BlobInfo,
    Digest,
    DiskBackend,
    Expectation,
    PutResult,
    StorageFull,
)

from . import node_fill
from .events import CacheEvents, NoEvents

log = logging.getLogger(__name__)
T = TypeVar("T")

_LOW_WATERMARK = 0.9
# Kept free on the cache's file system: 5 % of it, at most 1 GiB (on a large disk 5 % is more
# than the origin's other writes, logs and catalog, need).
_MIN_FREE_FRACTION = 0.05
_MIN_FREE_MAX = 1 << 30
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
                                    atime REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_atime ON entries (atime);
"""


class DiskCache:
    name = "disk"

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        chunk_size: int = 1 << 20,
        direct_io: bool = True,
        events: CacheEvents | None = None,
        interval: float = 2.0,
        maintain: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.store = DiskBackend(root, chunk_size=chunk_size, direct_io=direct_io)
        self.fills = root / "fills"  # node_fill's locks: one copy of a blob at a time per node
        self._events = events or NoEvents()
        self._interval = interval
        self._maintain_in_background = maintain
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._sql = ThreadPoolExecutor(max_workers=1, thread_name_prefix="disk-cache-index")
        self._touched: dict[str, float] = {}
        self._pins: Counter[Digest] = Counter()
        self._used = 0
        self.capacity = max_bytes  # what it may hold now; read from the file system at start
        self._squeezed = False  # a put met a full file system: the next sweep makes room
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ---------------------------------------------------------------------------

    async def _in_db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._db is not None
            with self._db:
                return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._sql, run)

    async def start(self) -> None:
        await self.store.start()
        await asyncio.to_thread(self.fills.mkdir, exist_ok=True)
        await asyncio.to_thread(node_fill.sweep, self.fills)

        def connect() -> None:
            self._db = sqlite3.connect(self.root / "lru.sqlite", check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
            # Workers of one node share the file; switching a new database to WAL while another
            # worker does the same can answer "locked" without waiting for the busy timeout.
            # (This runs in the executor thread: tenacity's sleep does not block the loop.)
            for attempt in Retrying(
                retry=retry_if_exception(_locked),
                stop=stop_after_attempt(50),
                wait=wait_fixed(0.05),
                reraise=True,
            ):
                with attempt:
                    self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

        await asyncio.get_running_loop().run_in_executor(self._sql, connect)
        self._used = await self._in_db(_total_size)
        self.capacity = await self._in_db(lambda _: self._capacity(self._used))
        self._events.sized(self.name, self._used, self.capacity)
        if self._maintain_in_background:
            self._tasks = [
                asyncio.create_task(self._maintain()),
                asyncio.create_task(self._reconcile()),
            ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._db is not None:
            touched = self._take_touched()
            await self._in_db(lambda db: _set_atimes(db, touched))
            self._sql.submit(self._db.close).result()
        self._sql.shutdown()

    @property
    def used_bytes(self) -> int:
        return self._used

    # -- BlobBackend --------------------------------------------------------------------------

    def accepts(self, size: int) -> bool:
        return size <= self.capacity // 2

    async def stat(self, digest: Digest) -> BlobInfo | None:
        info = await self.store.stat(digest)
        if info is not None:
            self._touched[digest.hex] = self._clock()
        return info

    async def exists(self, digest: Digest) -> bool:
        return await self.store.exists(digest)

    def local_path(self, digest: Digest) -> Path | None:
        self._touched[digest.hex] = self._clock()
        return self.store.local_path(digest)

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        with self._pinned(digest):
            self._touched[digest.hex] = self._clock()
            async for chunk in self.store.open(digest, start, end):
                yield chunk

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        expected: Expectation = NOTHING_EXPECTED,
        content_type: str = DEFAULT_CONTENT_TYPE,
        *,
        on_written: Callable[[Path, int], None] | None = None,
    ) -> PutResult:
        pin = expected.blake3
        with self._pinned(pin) if pin is not None else contextlib.nullcontext():
            try:
                result = await self.store.put(chunks, expected, content_type, on_written=on_written)
            except StorageFull:
                self._squeezed = True
                self._wake.set()
                raise
        if result.created:
            digest_hex, size, now = result.info.digest.hex, result.info.size, self._clock()
            await self._in_db(lambda db: _record(db, digest_hex, size, now))
            self._used += result.info.size
            if self._used > self.capacity:
                self._wake.set()
        return result

    async def admit(self, info: BlobInfo, data: bytes) -> None:
        if not self.accepts(len(data)):
            return
        try:
            await self.put(_once(data), Expectation(blake3=info.digest), info.content_type)
        except StorageFull as exc:
            # A full cache is not a failing one: the sweep makes room, and the tier must not
            # be skipped for a back-off meanwhile (what is cached would not be served).
            log.debug("disk cache: no room for %s yet: %s", info.digest, exc)

    async def ping(self) -> None:
        await asyncio.to_thread(self.root.stat)

    async def delete(self, digest: Digest) -> bool:
        removed = await self.store.delete(digest)
        await self._in_db(partial(_forget, digests=[digest.hex]))
        return removed

    def iter_digests(self) -> AsyncIterator[Digest]:
        return self.store.iter_digests()

    async def resolve_sha256(self, sha256: bytes) -> Digest | None:
        return await self.store.resolve_sha256(sha256)

    # -- eviction -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _pinned(self, digest: Digest) -> Iterator[None]:
        self._pins[digest] += 1
        try:
            yield
        finally:
            self._pins[digest] -= 1
            if not self._pins[digest]:
                del self._pins[digest]

    def _take_touched(self) -> list[tuple[float, str]]:
        """Swapped out on the event loop, which is the only writer of the dict."""
        touched, self._touched = self._touched, {}
        return [(t, d) for d, t in touched.items()]

    async def _maintain(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.evict()
            except Exception:
                log.exception("disk cache maintenance failed; will retry")

    async def evict(self) -> int:
        """Bring the cache under its bound; returns how many blobs were removed."""
        pinned = {d.hex for d in self._pins}
        lock = self.root / "evict.lock"

        def choose(db: sqlite3.Connection) -> tuple[int, int, list[tuple[str, int]]]:
            _set_atimes(db, touched)
            total = _total_size(db)
            capacity = self._capacity(total)
            victims: list[tuple[str, int]] = []
            target = int(capacity * _LOW_WATERMARK)
            if squeezed:
                # Under the bound, yet a copy did not fit (copies under way, files of others
                # written since the last sweep): each such sweep frees a tenth more.
                target = min(target, total - (capacity - target))
            elif total <= capacity:
                return total, capacity, victims
            excess = total - target
            for digest, size in db.execute("SELECT digest, size FROM entries ORDER BY atime"):
                if excess <= 0:
                    break
                if digest not in pinned:
                    victims.append((digest, size))
                    excess -= size
            return total, capacity, victims

        lock_file = await asyncio.to_thread(open, lock, "w")
        with lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Another worker is evicting; this one's access times wait for later.
                self.capacity = await self._in_db(lambda db: self._capacity(_total_size(db)))
                return 0
            touched = self._take_touched()  # only now: taken and then dropped, they were lost
            squeezed, self._squeezed = self._squeezed, False
            total, self.capacity, victims = await self._in_db(choose)
            for digest_hex, size in victims:
                await self.store.delete(Digest(digest_hex))
                total -= size
            await self._in_db(partial(_forget, digests=[d for d, _ in victims]))
        self._used = total
        self._events.sized(self.name, total, self.capacity)
        if victims:
            self._events.evicted(self.name, len(victims))
        return len(victims)

    def _capacity(self, indexed: int) -> int:
        """``max_bytes``, or what the file system has room for (blocking: the SQLite thread)."""
        vfs = os.statvfs(self.root)
        reserve = min(int(vfs.f_blocks * vfs.f_frsize * _MIN_FREE_FRACTION), _MIN_FREE_MAX)
        room = indexed + self.store.temp_bytes() + vfs.f_bavail * vfs.f_frsize - reserve
        return max(0, min(self.max_bytes, room))

    async def _reconcile(self) -> None:
        """Index files the index does not know (a crash between commit and record), oldest."""
        rows = await self._in_db(lambda db: db.execute("SELECT digest FROM entries").fetchall())
        known = {row[0] for row in rows}
        found = 0
        async for digest in self.store.iter_digests():
            if digest.hex in known:
                continue
            info = await self.store.stat(digest)
            if info is not None:
                hex_, size = digest.hex, info.size
                await self._in_db(partial(_record, digest_hex=hex_, size=size, atime=0.0))
                self._used += size
                found += 1
        if found:
            log.info("disk cache: indexed %d blobs found on disk", found)
            self._wake.set()


def _set_atimes(db: sqlite3.Connection, touched: list[tuple[float, str]]) -> None:
    db.executemany("UPDATE entries SET atime=? WHERE digest=?", touched)


def _forget(db: sqlite3.Connection, digests: list[str]) -> None:
    db.executemany("DELETE FROM entries WHERE digest=?", [(d,) for d in digests])


def _total_size(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])


def _record(db: sqlite3.Connection, digest_hex: str, size: int, atime: float) -> None:
    db.execute(
        "INSERT OR REPLACE INTO entries (digest, size, atime) VALUES (?, ?, ?)",
        (digest_hex, size, atime),
    )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
