"""Synthetic events with planted structure, for tests and the benchmark.

The model of the world: assets fall into ``communities`` of equal size; users belong to one
taste group each, group g favouring community g. An event picks its user by a log-normal
activity level, then with probability ``in_group`` an asset from the user's community, else
(noise) an asset from the whole catalogue. Both choices follow a Zipf law of exponent
``item_exponent`` over a random order of assets, so popularity is power-law at both levels and
a popularity ranking is a strong but structure-blind baseline. Kinds and times are independent
of everything else, so any lift of ALS over popularity comes from the planted groups.

Everything is vectorised (a few ``searchsorted`` over cumulative weights) and seeded: the same
config gives the same events on any machine with the same numpy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from .events import Event, EventColumns, from_epoch


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 5_000
    n_items: int = 2_000
    n_events: int = 100_000
    communities: int = 10
    in_group: float = 0.8
    item_exponent: float = 1.0
    activity_sigma: float = 1.0
    kinds: tuple[str, ...] = ("download", "use", "like")
    kind_probabilities: tuple[float, ...] = (0.7, 0.25, 0.05)
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    span_seconds: float = 90 * 86_400.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_users, self.n_items, self.communities) < 1 or self.n_events < 0:
            raise ValueError("sizes must be positive")
        if self.n_items < self.communities:
            raise ValueError("need at least one asset per community")
        if not 0 <= self.in_group <= 1:
            raise ValueError("in_group must be a probability")
        if len(self.kinds) != len(self.kind_probabilities):
            raise ValueError("one probability per kind")


@dataclass(frozen=True)
class SyntheticData:
    columns: EventColumns
    user_group: NDArray[np.int32]
    item_community: NDArray[np.int32]
    config: SyntheticConfig

    def events(self) -> Iterator[Event]:
        """The events one by one (for small data; the benchmark uses ``columns``)."""
        c = self.columns
        for user, item, kind, at in zip(
            c.user.tolist(), c.item.tolist(), c.kind.tolist(), c.at.tolist(), strict=True
        ):
            yield Event(c.user_ids[user], c.item_ids[item], c.kinds[kind], None, from_epoch(at))

    def community_items(self, community: int) -> NDArray[np.intp]:
        return np.flatnonzero(self.item_community == community)


def _zipf_cdf(n: int, exponent: float) -> NDArray[np.float64]:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf: NDArray[np.float64] = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    config = config or SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    n_users, n_items, groups = config.n_users, config.n_items, config.communities

    # Equal-size communities over a random permutation: every community is non-empty and the
    # asset index says nothing about the community.
    permutation = rng.permutation(n_items)
    item_community = np.empty(n_items, dtype=np.int32)
    item_community[permutation] = np.arange(n_items) % groups
    # order[j] = asset at position j when assets are laid out community by community, in
    # Zipf-rank order inside each; cumulative weights per community are shifted by the
    # community number, so one searchsorted over all of them samples "rank within g".
    order = np.argsort(item_community, kind="stable")
    sizes = np.bincount(item_community, minlength=groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    shifted_cdf = np.empty(n_items, dtype=np.float64)
    for g in range(groups):  # loops over communities (tens), not events
        shifted_cdf[starts[g] : starts[g] + sizes[g]] = g + _zipf_cdf(
            int(sizes[g]), config.item_exponent
        )
    global_rank = rng.permutation(n_items)  # global_rank[r] = asset of popularity rank r
    global_cdf = _zipf_cdf(n_items, config.item_exponent)

    user_group = rng.integers(0, groups, n_users, dtype=np.int32)
    activity = rng.lognormal(0.0, config.activity_sigma, n_users)
    activity_cdf = np.cumsum(activity)
    activity_cdf /= activity_cdf[-1]

    n = config.n_events
    users = np.minimum(
        np.searchsorted(activity_cdf, rng.random(n), side="right"), n_users - 1
    ).astype(np.int32)
    group = user_group[users]
    position = np.searchsorted(shifted_cdf, group + rng.random(n), side="left")
    # Guard rounding at a community's upper edge: stay inside the user's own community.
    position = np.clip(position, starts[group], starts[group] + sizes[group] - 1)
    in_group_items = order[position]
    noise_rank = np.minimum(np.searchsorted(global_cdf, rng.random(n), side="right"), n_items - 1)
    noise_items = global_rank[noise_rank]
    items = np.where(rng.random(n) < config.in_group, in_group_items, noise_items).astype(np.int32)
    kinds = rng.choice(
        len(config.kinds), size=n, p=np.asarray(config.kind_probabilities, dtype=np.float64)
    ).astype(np.int16)
    at = config.start.timestamp() + rng.random(n) * config.span_seconds

    user_ids = [f"user-{i:07d}" for i in range(n_users)]
    raw = rng.integers(0, 256, size=(n_items, 16), dtype=np.uint8)
    item_ids = [str(uuid.UUID(bytes=row.tobytes(), version=4)) for row in raw]
    columns = EventColumns(
        user=users,
        item=items,
        kind=kinds,
        weight=np.full(n, np.nan, dtype=np.float32),
        at=at,
        user_ids=user_ids,
        item_ids=item_ids,
        kinds=list(config.kinds),
    )
    return SyntheticData(
        columns=columns, user_group=user_group, item_community=item_community, config=config
    )
