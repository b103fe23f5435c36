"""One cache fill of a blob per node, not one per worker process.

The workers of a node share its disk cache. Within a worker, the GETs of a blob being copied
into it follow that copy (``cache.fill``); across workers each used to start its own, so a cold
blob asked of N workers at once was read N times from the durable store.

The worker that starts a copy holds an exclusive ``flock`` on ``fills/<digest>`` in the cache
for as long as the copy runs, and writes the copy's temp file path into it once there is one.
A worker asked for the blob meanwhile finds the lock taken and follows that copy: it reads the
temp file up to its size (the bytes written so far; the O_DIRECT stage is not in it), looking
again every ``_POLL`` seconds, until the lock is free (the copy is over, or its worker died:
the kernel drops the lock with the process). Then ``rest(position)`` goes on: the cached file,
or the durable store when the copy did not land.

The lock file is removed when the copy ends; those of workers that died mid-copy are removed
at the next start of a worker (``sweep``: the ones nobody holds). A worker that opened it just
before either removal may then take the lock of a file nobody else will see, and copy the blob
a second time: wasted work, never wrong bytes (the commit keeps the first copy). A lock file
that cannot be made (inodes used up, the directory removed) costs the sharing, not the
request: the worker copies on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from blobstore import Digest

from .fill import open_for_reading, then

log = logging.getLogger(__name__)

_POLL = 0.02  # seconds between looks at another worker's copy
_READ = 1 << 20  # bytes per read of its temp file


class NodeFill:
    """This worker's claim on a blob's copy: the lock, held until ``release`` (``fd`` -1: a
    copy of this worker's own, with no lock to share it through)."""

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd = fd
        self._named = False

    def note_temp(self, temp: Path) -> None:
        """The copy's temp file, for the other workers (once: a few bytes in the page cache)."""
        if self._fd >= 0 and not self._named:
            os.pwrite(self._fd, os.fsencode(temp), 0)
            self._named = True

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        os.close(self._fd)  # and with it the lock
        self._fd = -1


def sweep(fills: Path) -> int:
    """Remove the lock files no worker holds: left by workers that died while copying (a
    live worker's copy keeps its lock). Blocking: call it off the loop. Returns how many."""
    removed = 0
    for entry in os.scandir(fills):
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except FileNotFoundError:  # its copy ended meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (a copy under way), or no locks on this file system
            continue
        else:
            # Under the lock, as release() unlinks: a worker that opened the file just before
            # and takes the lock after us copies the blob a second time, nothing worse.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        finally:
            os.close(fd)
    if removed:
        log.warning("swept %d stale cache fill lock(s) from %s", removed, fills)
    return removed


def claim(fills: Path, digest: Digest) -> NodeFill | None:
    """The claim on ``digest``'s copy, or None when another worker holds it (blocking: a
    local open and a non-blocking flock)."""
    path = fills / digest.hex
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.warning("cannot share the copy of %s with the other workers: %s", digest, exc)
        return NodeFill(path, -1)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:  # ENOLCK
        os.close(fd)
        log.warning("cannot share the copy of %s with the other workers: %s", digest, exc)
        return NodeFill(path, -1)
    os.ftruncate(fd, 0)  # a crashed worker's file: its temp name must not show through ours
    return NodeFill(path, fd)


async def follow_other(
    fills: Path,
    digest: Digest,
    start: int,
    end: int | None,
    rest: Callable[[int], AsyncGenerator[bytes, None]],
) -> AsyncGenerator[bytes, None]:
    """Bytes ``[start, end)`` from another worker's copy of ``digest`` as it is written, then
    ``rest(position)`` once that copy is over."""
    pos = start
    lock = temp = -1
    try:
        with contextlib.suppress(FileNotFoundError):  # gone: that copy is over already
            lock = await open_for_reading(fills / digest.hex)
        while lock >= 0 and (end is None or pos < end) and _held(lock):
            if temp < 0:
                name = await asyncio.to_thread(os.pread, lock, 4096, 0)
                try:
                    temp = await open_for_reading(Path(os.fsdecode(name))) if name else -1
                except FileNotFoundError:  # committed, its temp name gone: the lock goes next
                    temp = -1
                if temp < 0:
                    await asyncio.sleep(_POLL)
                    continue
            size = os.fstat(temp).st_size
            upto = size if end is None else min(end, size)
            if pos >= upto:
                await asyncio.sleep(_POLL)
                continue
            chunk = await asyncio.to_thread(os.pread, temp, min(_READ, upto - pos), pos)
            pos += len(chunk)
            yield chunk
    finally:
        for fd in (lock, temp):
            if fd >= 0:
                os.close(fd)
    async with contextlib.aclosing(then(rest, pos, end)) as chunks:
        async for chunk in chunks:
            yield chunk


def _held(lock: int) -> bool:
    """Whether the copy's worker still holds the lock (taking it shared, for a moment, if not)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(lock, fcntl.LOCK_UN)
    return False
