"""Usage events on their way to the catalog: a bounded in-memory buffer written in batches.

Why a buffer: one INSERT per event would make every download wait for the database and cap
ingestion at the database's transaction rate; one multi-row INSERT per batch of up to
``recommender_batch_size`` rows is many times cheaper per event.

Back-pressure: the buffer holds at most ``recommender_buffer_size`` events. ``put`` (POST
/events) waits until the whole batch fits, so when the catalog is slow or down clients see
slow answers instead of the worker growing without bound. ``offer`` (downloads) never waits:
a download must not stall because the catalog is slow, so when the buffer is full the event is
dropped and counted (``origin_events_dropped_total``). A batch the catalog could not write
(down, busy) stays in the buffer and is tried again after a back-off. A batch it refuses for
what the rows hold (``catalog.is_refused``: a value too long, a byte the encoding lacks) would
fail every retry and hold up every later event, so it is split in halves until the refused
events are alone; those are logged and dropped (``origin_events_rejected_total``), the rest
written. On graceful shutdown everything left is written.

Events a worker accepted are visible to its own recommendations at once (``pending_for``),
before they reach the catalog; other workers see them once written (within
``recommender_flush_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import Counter

from .catalog import EventRecord, is_refused

log = logging.getLogger(__name__)

EVENTS_WRITTEN = Counter("origin_events_written_total", "Usage events written to the catalog")
EVENTS_DROPPED = Counter(
    "origin_events_dropped_total", "Download events dropped because the event buffer was full"
)

EVENTS_REJECTED = Counter(
    "origin_events_rejected_total", "Usage events dropped because the catalog refused them"
)

Sink = Callable[[Sequence[EventRecord]], Awaitable[None]]
_RETRY_MAX = 5.0


class EventBuffer:
    def __init__(
        self, sink: Sink, *, capacity: int, batch_size: int, flush_interval: float
    ) -> None:
        self._sink = sink
        self.capacity = capacity
        self._batch_size = batch_size
        self._interval = flush_interval
        self._queue: deque[EventRecord] = deque()
        # Events in the buffer or being written, by user: what recommendations fold in
        # before the catalog has them.
        self._by_user: dict[str, list[EventRecord]] = {}
        self._space = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        self._closing = False  # one batch at a time: flush() may race the writer
        self.written = 0
        self.dropped = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._queue)

    async def put(self, batch: Sequence[EventRecord]) -> None:
        """Add the batch whole, waiting while it does not fit (back-pressure)."""
        if len(batch) > self.capacity:
            raise ValueError(f"a batch of {len(batch)} events exceeds the buffer ({self.capacity})")
        async with self._space:
            await self._space.wait_for(lambda: len(self._queue) + len(batch) <= self.capacity)
            self._add(batch)

    def offer(self, event: EventRecord) -> bool:
        """Add one event if there is room; False (and counted) when the buffer is full."""
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            EVENTS_DROPPED.inc()
            return False
        self._add((event,))
        return True

    def _add(self, batch: Sequence[EventRecord]) -> None:
        self._queue.extend(batch)
        for event in batch:
            self._by_user.setdefault(event.user, []).append(event)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def pending_for(self, user: str) -> list[EventRecord]:
        return list(self._by_user.get(user, ()))

    def has_pending(self, user: str) -> bool:
        return user in self._by_user

    # -- writing ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-buffer")

    async def _run(self) -> None:
        delay = self._interval
        while not self._closing:
            # asyncio.timeout, not wait_for: before 3.12 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while self._queue:
                    await self._write_one()
                delay = self._interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Kept for the next attempt; writers wait once the buffer is full.
                delay = min(_RETRY_MAX, max(delay * 2, 0.1))
                log.warning("writing %d buffered events failed (%s); retry in %.1fs",
                            len(self._queue), exc, delay)  # fmt: skip

    async def _write_one(self) -> None:
        async with self._writing:
            if self._queue:
                await self._write_batch()

    async def _write_batch(self) -> None:
        batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
        rejected = await self._write_or_reject(batch)
        # Only now: until the catalog has them, the events stay visible in pending_for.
        for _ in batch:
            self._queue.popleft()
        written = {id(e) for e in batch}
        for user in {e.user for e in batch}:
            left = [e for e in self._by_user[user] if id(e) not in written]
            if left:
                self._by_user[user] = left
            else:
                del self._by_user[user]
        self.written += len(batch) - rejected
        EVENTS_WRITTEN.inc(len(batch) - rejected)
        async with self._space:
            self._space.notify_all()

    async def _write_or_reject(self, batch: list[EventRecord]) -> int:
        """Write ``batch`` but the events the catalog refuses; returns how many it refused.
        A half written before a later half fails is written again on the retry, which the
        sink allows (events carry their ids; rows already there are skipped)."""
        try:
            await self._sink(batch)
            return 0
        except Exception as exc:
            if not is_refused(exc):
                raise
            if len(batch) == 1:
                (event,) = batch
                log.error("the catalog refused event %s (user %r, asset %s), dropped: %s",
                          event.id, event.user[:100], event.asset, exc)  # fmt: skip
                self.rejected += 1
                EVENTS_REJECTED.inc()
                return 1
        half = len(batch) // 2
        return await self._write_or_reject(batch[:half]) + await self._write_or_reject(batch[half:])

    async def flush(self) -> None:
        """Write everything buffered now (the admin's "train now" wants the latest events)."""
        while self._queue:
            await self._write_one()

    async def close(self, attempts: int = 5) -> None:
        """Stop the writer and write what is left; what cannot be written is logged as lost."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # Let a write under way finish rather than cancel it after its commit.
            done, _ = await asyncio.wait([self._task], timeout=10)
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for attempt in range(attempts):
            try:
                await self.flush()
                return
            except Exception as exc:
                log.warning("flushing events at shutdown failed (%s), attempt %d", exc, attempt)
                await asyncio.sleep(0.2 * (attempt + 1))
        log.error("%d buffered events were lost at shutdown", len(self._queue))
