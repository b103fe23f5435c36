"""Copy a blob into the local cache while the request that asked for it reads the same bytes.

The first byte of a cold GET does not wait for the whole blob to reach the local disk: each
chunk read from below goes, through a small queue, to the cache's ``put`` (which hashes and
verifies it like any upload), and through another to the request that leads.

The copy goes at the pace of the store and the disk, never at the client's: a client that
stops reading (a phone in a tunnel) must not hold up the copy that every other request for the
blob waits for. When the leading client falls ``_LEAD_CHUNKS`` behind, it is let go and
continues from where it is by following the copy. If the client goes away, the copy finishes
without it.

Other requests for the blob, and a leading client that was let go, follow the copy: they read
the cache's temp file up to what it has written so far (``on_written``), waiting when they
catch up, so their first byte does not wait for the whole blob and the durable store is read
once (ATS calls this read-while-writer). Once the copy is over they continue with ``rest``:
the cached file, or the store below if the copy failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

_END = None
_LEAD_CHUNKS = 8  # what a slow leading client may have waiting for it before it is let go
_FOLLOW_READ = 1 << 20  # bytes per read of the temp file by a follower

OnWritten = Callable[[Path, int], None]
Store = Callable[[AsyncIterator[bytes], OnWritten], Awaitable[object]]

Item = bytes | BaseException | None


class LocalFill:
    def __init__(self, source: AsyncIterator[bytes], store: Store) -> None:
        self._source = source
        self._feed: asyncio.Queue[Item] = asyncio.Queue(maxsize=8)
        self._lead: asyncio.Queue[Item] = asyncio.Queue(maxsize=_LEAD_CHUNKS)
        self._lead_let_go = False  # the leading client fell behind, or left
        self._fed_all = False  # the store has taken the last item (the end, or an error)
        self._temp: Path | None = None  # the copy's temp file, once it has one
        self._in_temp = 0  # bytes readable there
        self._changed = asyncio.Event()  # set (and replaced) when either of those moves
        self.done: asyncio.Future[bool] = asyncio.ensure_future(self._store(store))
        self.done.add_done_callback(lambda _: self._wake_followers())
        self._copy = asyncio.ensure_future(self._read_source())

    def _on_written(self, temp: Path, in_file: int) -> None:
        self._temp, self._in_temp = temp, in_file
        self._wake_followers()

    def _wake_followers(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _store(self, store: Store) -> bool:
        try:
            await store(self._drain(), self._on_written)
            return True
        except Exception as exc:
            log.warning("local cache fill failed, serving from below: %s", exc)
            if not self._fed_all:
                async for _ in self._drain():  # keep taking chunks so the copy never blocks
                    pass
            return False

    async def _drain(self) -> AsyncIterator[bytes]:
        while (item := await self._feed.get()) is not _END:
            if isinstance(item, BaseException):
                self._fed_all = True
                raise item
            yield item
        self._fed_all = True

    async def _read_source(self) -> None:
        try:
            async for chunk in self._source:
                self._offer_lead(chunk)
                await self._feed.put(chunk)
        except Exception as exc:
            self._offer_lead(exc)
            await self._feed.put(exc)
            return
        self._offer_lead(_END)
        await self._feed.put(_END)

    def _offer_lead(self, item: Item) -> None:
        if self._lead_let_go:
            return
        try:
            self._lead.put_nowait(item)
        except asyncio.QueueFull:
            self._lead_let_go = True

    async def stream(
        self,
        start: int,
        end: int | None,
        rest: Callable[[int], AsyncGenerator[bytes, None]],
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` for the leading request, as they arrive from below; once it
        has been let go, ``rest(position)`` gives the bytes from ``position`` to ``end``."""
        pos = 0
        try:
            while True:
                if self._lead_let_go and self._lead.empty():
                    follow = self.follow(max(start, pos), end, rest)
                    async with contextlib.aclosing(follow) as chunks:
                        async for chunk in chunks:
                            yield chunk
                    return
                item = await self._lead.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                stop = pos + len(item) if end is None else min(end, pos + len(item))
                if max(start, pos) < stop:
                    yield item[max(start, pos) - pos : stop - pos]
                pos += len(item)
                if end is not None and pos >= end:
                    return  # the range is served; the copy goes on without it
        finally:
            # The client left, or has its bytes: nothing more is queued for it.
            self._lead_let_go = True

    async def follow(
        self,
        start: int,
        end: int | None,
        rest: Callable[[int], AsyncGenerator[bytes, None]],
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` from the copy's temp file as it is written; once the copy is
        over, ``rest(position)`` gives what is left."""
        pos = start
        fd = -1
        try:
            while not self.done.done() and (end is None or pos < end):
                changed = self._changed  # taken before looking: no wake-up is missed
                upto = self._in_temp if end is None else min(end, self._in_temp)
                if self._temp is None or pos >= upto:
                    await changed.wait()
                    continue
                if fd < 0:
                    try:
                        fd = await open_for_reading(self._temp)
                    except FileNotFoundError:  # committed meanwhile (linked, the temp name gone)
                        await asyncio.wait([self.done])
                        break
                chunk = await asyncio.to_thread(os.pread, fd, min(_FOLLOW_READ, upto - pos), pos)
                if not chunk:  # cannot be, short of a truncation behind us: let rest decide
                    break
                pos += len(chunk)
                yield chunk
        finally:
            if fd >= 0:
                os.close(fd)
        async with contextlib.aclosing(then(rest, pos, end)) as chunks:
            async for chunk in chunks:
                yield chunk


async def then(
    rest: Callable[[int], AsyncGenerator[bytes, None]], pos: int, end: int | None
) -> AsyncGenerator[bytes, None]:
    """What a follower reads once the copy it followed is over: ``rest(pos)``, if anything is
    left of ``[pos, end)``."""
    if end is None or pos < end:
        async with contextlib.aclosing(rest(pos)) as chunks:
            async for chunk in chunks:
                yield chunk


async def open_for_reading(path: Path) -> int:
    """``os.open`` in a thread; a caller cancelled meanwhile does not leak the descriptor."""
    opening = asyncio.ensure_future(asyncio.to_thread(os.open, path, os.O_RDONLY))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[int]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())
