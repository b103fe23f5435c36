"""Group commit: rows that concurrent callers add while a write is under way go in one write.

Each caller waits for its own row's commit, as with a write of its own. A lone row is written
at once: there is no timer and no batch size to wait for; batches form only from what arrives
while the previous write runs, so they grow exactly when the database is the bottleneck.

A failed batch of several rows is written again row by row, so a row that cannot be written
fails its own caller only, and every caller sees the error its row alone would have raised.
The writes run in a task of their own: a caller that is cancelled (its client went away) does
not cancel the others' write, and its row is still written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[Sequence[T]], Awaitable[None]], max_rows: int) -> None:
        self._write = write
        self._max_rows = max_rows
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, row: T) -> None:
        """Return once ``row`` is committed; raise what writing it raised."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        # Retrieved even when its caller is gone, so no "exception never retrieved" noise.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append((row, done))
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            writer = asyncio.ensure_future(self._drain())
            writer.add_done_callback(self._unstarted)
            self._writer = writer
        await asyncio.shield(done)

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_rows]
                del self._pending[: len(batch)]
                await self._write_batch(batch)
        except BaseException as exc:  # cancelled with the loop: nobody may wait forever
            for _, done in [*batch, *self._pending]:
                _settle(done, exc)
            self._pending.clear()
            raise
        finally:
            self._writer = None

    def _unstarted(self, writer: asyncio.Task[None]) -> None:
        """A writer cancelled before its first step ran neither its ``except`` nor its
        ``finally``: fail the rows it would have written, and let the next row start another."""
        if self._writer is writer:
            self._writer = None
            for _, done in self._pending:
                _settle(done, asyncio.CancelledError())
            self._pending.clear()

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._write([row for row, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for row, done in batch:
                try:
                    await self._write([row])
                except Exception as alone:
                    _settle(done, alone)
                else:
                    _settle(done, None)
            return
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    # A caller of a loop since closed (a catalog outliving one asyncio.run) waits no more.
    if done.done() or done.get_loop().is_closed():
        return
    if error is None:
        done.set_result(None)
    elif isinstance(error, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(error)
