"""Events as the recommender sees them, one at a time (``Event``) or column-wise (``EventColumns``).

Column form exists because the numeric code (matrix building, splitting, the synthetic generator,
the 20M-event benchmark) must stay vectorised; ``Event`` is the convenient form for callers with
a handful of rows. ``encode_events`` is the only Python loop over events and is meant for
catalog-sized inputs read in batches, not for the benchmark path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import numpy as np
from numpy.typing import NDArray

AssetId = str | UUID


def asset_key(asset: AssetId) -> str:
    """The one spelling of an asset id used in maps: UUIDs as their canonical string."""
    return str(asset) if isinstance(asset, UUID) else asset


def epoch_seconds(at: datetime) -> float:
    """Seconds since the epoch; a naive datetime is taken as UTC (the catalog stores UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def check_id(value: str, what: str) -> str:
    # NUL separates ids in the model file; an empty id is almost certainly a caller bug.
    if not value or "\x00" in value:
        raise ValueError(f"{what} id must be a non-empty string without NUL: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction: ``user`` did ``kind`` to ``asset`` at ``at``.

    ``weight`` multiplies the configured weight of the kind (``None`` means 1), so a client can
    send graded signals without a new kind.
    """

    user: str
    asset: AssetId
    kind: str
    weight: float | None
    at: datetime


@dataclass(frozen=True)
class EventColumns:
    """Events column-wise; codes index into ``user_ids``, ``item_ids`` and ``kinds``.

    ``weight`` is the per-event multiplier (NaN where the event had none), in float32 to halve
    the column at tens of millions of events; ``at`` is epoch seconds.
    """

    user: NDArray[np.int32]
    item: NDArray[np.int32]
    kind: NDArray[np.int16]
    weight: NDArray[np.float32]
    at: NDArray[np.float64]
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    kinds: Sequence[str]

    def __post_init__(self) -> None:
        n = len(self.user)
        if not (len(self.item) == len(self.kind) == len(self.weight) == len(self.at) == n):
            raise ValueError("event columns must have equal lengths")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask_or_index: NDArray[np.bool_] | NDArray[np.intp]) -> EventColumns:
        """A subset of the events, keeping every id map (so matrices stay aligned)."""
        return EventColumns(
            user=self.user[mask_or_index],
            item=self.item[mask_or_index],
            kind=self.kind[mask_or_index],
            weight=self.weight[mask_or_index],
            at=self.at[mask_or_index],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            kinds=self.kinds,
        )


class ColumnsBuilder:
    """Events to ``EventColumns`` one at a time, ids numbered in order of first appearance
    (for callers that read events in pages, such as the origin's trainer)."""

    def __init__(self) -> None:
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._kinds: dict[str, int] = {}
        self._user: list[int] = []
        self._item: list[int] = []
        self._kind: list[int] = []
        self._weight: list[float] = []
        self._at: list[float] = []

    def add(self, user: str, item: str, kind: str, weight: float, at: float) -> None:
        """One event; ``at`` in epoch seconds, ``weight`` NaN for "the kind's weight"."""
        u = self._users.get(user)
        if u is None:
            u = self._users[check_id(user, "user")] = len(self._users)
        i = self._items.get(item)
        if i is None:
            i = self._items[check_id(item, "asset")] = len(self._items)
        k = self._kinds.get(kind)
        if k is None:
            k = self._kinds[kind] = len(self._kinds)
        self._user.append(u)
        self._item.append(i)
        self._kind.append(k)
        self._weight.append(weight)
        self._at.append(at)

    def build(self) -> EventColumns:
        if len(self._kinds) > np.iinfo(np.int16).max:
            raise ValueError("too many distinct event kinds")
        return EventColumns(
            user=np.asarray(self._user, dtype=np.int32),
            item=np.asarray(self._item, dtype=np.int32),
            kind=np.asarray(self._kind, dtype=np.int16),
            weight=np.asarray(self._weight, dtype=np.float32),
            at=np.asarray(self._at, dtype=np.float64),
            user_ids=list(self._users),
            item_ids=list(self._items),
            kinds=list(self._kinds),
        )


def encode_events(events: Iterable[Event]) -> EventColumns:
    """Turn events into columns; ids are numbered in order of first appearance."""
    builder = ColumnsBuilder()
    for event in events:
        weight = math.nan if event.weight is None else float(event.weight)
        if event.weight is not None and not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"event weight must be finite and >= 0: {event.weight!r}")
        builder.add(event.user, asset_key(event.asset), event.kind, weight, epoch_seconds(event.at))
    return builder.build()
