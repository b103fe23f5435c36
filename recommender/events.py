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

    ``weight`` is the per-event multiplier (NaN where the event had none); ``at`` is epoch seconds.
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


def encode_events(events: Iterable[Event]) -> EventColumns:
    """Turn events into columns; ids are numbered in order of first appearance."""
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    kind_index: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    kinds: list[int] = []
    weights: list[float] = []
    times: list[float] = []
    for event in events:
        user = user_index.get(event.user)
        if user is None:
            user = user_index[check_id(event.user, "user")] = len(user_index)
        key = asset_key(event.asset)
        item = item_index.get(key)
        if item is None:
            item = item_index[check_id(key, "asset")] = len(item_index)
        kind = kind_index.get(event.kind)
        if kind is None:
            kind = kind_index[event.kind] = len(kind_index)
        weight = math.nan if event.weight is None else float(event.weight)
        if event.weight is not None and not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"event weight must be finite and >= 0: {event.weight!r}")
        users.append(user)
        items.append(item)
        kinds.append(kind)
        weights.append(weight)
        times.append(epoch_seconds(event.at))
    if len(kind_index) > np.iinfo(np.int16).max:
        raise ValueError("too many distinct event kinds")
    return EventColumns(
        user=np.asarray(users, dtype=np.int32),
        item=np.asarray(items, dtype=np.int32),
        kind=np.asarray(kinds, dtype=np.int16),
        weight=np.asarray(weights, dtype=np.float32),
        at=np.asarray(times, dtype=np.float64),
        user_ids=list(user_index),
        item_ids=list(item_index),
        kinds=list(kind_index),
    )
