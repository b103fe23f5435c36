"""Copy a blob into the local cache while the request that asked for it reads the same bytes.

The first byte of a cold GET does not wait for the whole blob to reach the local disk: each
chunk read from below goes both to the client and, through a small queue, to the cache's
``put`` (which hashes and verifies it like any upload). If the client goes away, the copy
finishes without it. Other requests for the same blob wait for ``done`` and then read the
cached file, so the durable store is read once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)

_END = None


class LocalFill:
    def __init__(
        self,
        source: AsyncIterator[bytes],
        store: Callable[[AsyncIterator[bytes]], Awaitable[object]],
    ) -> None:
        self._source = source
        self._feed: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)
        self.done: asyncio.Future[bool] = asyncio.ensure_future(self._store(store))
        self._rest: asyncio.Task[None] | None = None
        self._fed_all = False  # the store has taken the last item (the end, or an error)

    async def _store(self, store: Callable[[AsyncIterator[bytes]], Awaitable[object]]) -> bool:
        try:
            await store(self._drain())
            return True
        except Exception as exc:
            log.warning("local cache fill failed, serving from below: %s", exc)
            if not self._fed_all:
                async for _ in self._drain():  # keep taking chunks so the reader never blocks
                    pass
            return False

    async def _drain(self) -> AsyncIterator[bytes]:
        while (item := await self._feed.get()) is not _END:
            if isinstance(item, BaseException):
                self._fed_all = True
                raise item
            yield item
        self._fed_all = True

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` for the leading request, as they arrive from below."""
        pos = 0
        try:
            async for chunk in self._source:
                await self._feed.put(chunk)
                stop = pos + len(chunk) if end is None else min(end, pos + len(chunk))
                if max(start, pos) < stop:
                    yield chunk[max(start, pos) - pos : stop - pos]
                pos += len(chunk)
                if end is not None and pos >= end:
                    break  # the range is served; the rest of the copy need not hold it up
            else:
                await self._feed.put(_END)
                return
            self._rest = asyncio.ensure_future(self._finish())
        except GeneratorExit:
            # The client went away (or had its range): finish the copy without it.
            self._rest = asyncio.ensure_future(self._finish())
            raise
        except BaseException as exc:
            await self._feed.put(exc)
            raise

    async def _finish(self) -> None:
        try:
            async for chunk in self._source:
                await self._feed.put(chunk)
        except Exception as exc:
            await self._feed.put(exc)
            return
        await self._feed.put(_END)
