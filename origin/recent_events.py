"""Each worker's copy of the events recorded after the serving model's cutoff, by user.

Why: fold-in needs a user's events newer than the model, and one catalog query per
recommendation (1.3 ms on SQLite) costs more than everything else in the request together.
So every worker keeps those events in memory and a request only asks a dict.

Where they come from:
* this worker's own writes, at the moment they are written (``note_written``; before that
  the event buffer's ``pending_for`` has them);
* everyone else's, by tailing the catalog every ``recommender_tail_interval`` seconds on the
  server-assigned ``recorded_at`` (``at`` is the client's time: a backdated event would be
  missed by a tail on ``at``). A row is read once it is ``recommender_commit_lag`` old: a
  write stamped earlier than that has committed (the stamp is taken inside the writing
  attempt), so reading in (recorded_at, id) order with a keyset cursor never skips a row and
  never reads one twice. Node clocks must agree to well within the lag (NTP; CockroachDB
  itself refuses nodes more than 500 ms apart).

A training run includes exactly the events recorded at or before its cutoff (origin.trainer),
so after a swap the events up to the new cutoff are dropped here and nothing counts twice.
Memory grows with the events since the last training (about 200 bytes each). They are kept
as tuples of ints, strings, floats and datetimes, not as ``EventRecord``s with ``UUID``s: the
garbage collector stops tracking such tuples (and dicts of them), whereas a million tracked
records made every full collection scan them all, which took about a quarter of a worker's
CPU during a fast ingest (measured with gc.callbacks).

Before the first model every event is newer than "the model": the tail reads from the start,
and the popularity fallback leaves out what each user already has from these (there is no
index on the user column to ask the catalog: migration 0004). Bounded by ``PRE_MODEL_MAX``
events; past that the tail stops until a model comes, and the fallback may show a user
something they have. Rows from before migration 0003 (no ``recorded_at``) are not read.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from recommender import Event

from .catalog import EventRecord, RecommenderCatalog

_LAST_ID = uuid.UUID(int=(1 << 128) - 1)
# Rows per tail query. Turning rows into records runs on the event loop (~10 us a row), so a
# page is also the longest the tail holds the loop: 2,000 rows ~ 20 ms.
_PAGE = 2_000
# Events kept before a first model exists (~200 bytes each).
PRE_MODEL_MAX = 200_000
# One kept event: (asset id as an int, kind, weight, at, recorded_at). Only untracked types.
_Kept = tuple[int, str, float, datetime, datetime | None]


class RecentEvents:
    def __init__(self, catalog: RecommenderCatalog, *, commit_lag: float) -> None:
        self._catalog = catalog
        self._lag = timedelta(seconds=commit_lag)
        self.cutoff: datetime | None = None  # None: no model yet, everything is kept
        self._cursor: tuple[datetime, uuid.UUID] | None = None  # None: from the start
        # user -> event id (as an int) -> _Kept
        self._by_user: dict[str, dict[int, _Kept]] = {}
        self.count = 0
        # Kept since the last take_fresh, for the serving model's popularity ranking (none
        # before a model: the first model's count starts from ``everything``).
        self._fresh: list[tuple[str, _Kept]] = []
        # One poll at a time: a second one beside the background tail would read the same page
        # and then give up at the moved cursor, returning before it had read everything.
        self._polling = asyncio.Lock()

    def for_user(self, user: str) -> list[EventRecord]:
        events = self._by_user.get(user)
        if events is None:
            return []
        return [
            EventRecord(uuid.UUID(int=key), user, uuid.UUID(int=a), kind, weight, at, recorded)
            for key, (a, kind, weight, at, recorded) in events.items()
        ]

    def has(self, user: str) -> bool:
        return user in self._by_user

    def take_fresh(self) -> list[Event]:
        """The events kept since the last call, each once (a row this worker wrote and then
        read back in the tail is one event)."""
        fresh, self._fresh = self._fresh, []
        return [_event(user, kept) for user, kept in fresh]

    def everything(self) -> list[Event]:
        """Every kept event (all those after the cutoff); what take_fresh held is dropped."""
        self._fresh = []
        return [_event(u, kept) for u, events in self._by_user.items() for kept in events.values()]

    def set_cutoff(self, cutoff: datetime) -> None:
        """A model trained on the events recorded up to ``cutoff`` is now served."""
        previous = self.cutoff
        self.cutoff = cutoff
        for user in list(self._by_user):
            kept = {k: e for k, e in self._by_user[user].items() if e[4] is None or e[4] > cutoff}
            if kept:
                self._by_user[user] = kept
            else:
                del self._by_user[user]
        self.count = sum(len(v) for v in self._by_user.values())
        start = (cutoff, _LAST_ID)
        if previous is None or cutoff < previous or self._cursor is None:
            # First model, or one with an earlier cutoff: read again from its cutoff (the
            # dict is keyed by event id, so what is read twice is kept once).
            self._cursor = start
        else:
            self._cursor = max(self._cursor, start)

    def note_written(self, batch: Iterable[EventRecord], recorded_at: datetime) -> None:
        """This worker's batch, just committed with ``recorded_at``."""
        if self.cutoff is not None and recorded_at <= self.cutoff:
            return
        for e in batch:
            if self.cutoff is None and self.count >= PRE_MODEL_MAX:
                return
            self._keep(e.user, e.id.int, (e.asset.int, e.kind, e.weight, e.at, recorded_at))

    def _keep(self, user: str, key: int, kept: _Kept) -> None:
        events = self._by_user.get(user)
        if events is None:
            events = self._by_user[user] = {}
        if key not in events:
            self.count += 1
            if self.cutoff is not None:
                self._fresh.append((user, kept))
        events[key] = kept

    async def poll(self) -> int:
        """Read what was recorded since the last poll (up to ``now - commit_lag``)."""
        async with self._polling:
            return await self._poll()

    async def _poll(self) -> int:
        upto = datetime.now(UTC) - self._lag
        read = 0
        while True:
            cursor, cutoff = self._cursor, self.cutoff
            if cutoff is None and self.count >= PRE_MODEL_MAX:
                return read  # the bound before a first model; set_cutoff moves the cursor
            page = await self._catalog.recorded_rows(cursor, upto, _PAGE)
            if self._cursor != cursor or self.cutoff != cutoff:
                return read  # a model swap moved the cursor meanwhile; the next poll goes on
            for key, user, asset, kind, weight, at, recorded in page:
                if cutoff is None or recorded > cutoff:
                    self._keep(user, key, (asset, kind, weight, at, recorded))
            read += len(page)
            if page:
                last = page[-1]
                self._cursor = (last[6], uuid.UUID(int=last[0]))
            if len(page) < _PAGE:
                return read


def _event(user: str, kept: _Kept) -> Event:
    asset, kind, weight, at, _ = kept
    return Event(user, str(uuid.UUID(int=asset)), kind, weight, at)
