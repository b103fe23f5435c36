"""Concurrent calls for one key share one execution (Go's singleflight, for asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[T]] = {}

    def in_flight(self, key: K) -> bool:
        return key in self._flights

    async def do(self, key: K, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(result, shared)``: shared is True for callers that joined a running flight.

        The work runs in its own task, so a caller that is cancelled (its client went away)
        does not cancel the fetch the other callers are waiting for.
        """
        task = self._flights.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task), shared

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may be gone
