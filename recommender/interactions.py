"""Events -> users x assets confidence matrix (CSR, float32) with id maps both ways.

Weight of one event = configured weight of its kind x the event's own multiplier (1 if none)
x ``2 ** (-age / half_life)`` when decay is on, age measured back from the reference time
(events after it count in full). Repeated (user, asset) pairs are summed: three downloads say
more than one. Events of unconfigured kinds are dropped and counted in ``ignored_events``.

The numeric part (``event_weights``, ``confidence_matrix``) works on arrays only, so the same
path serves 20 events in a test and 20M in the benchmark.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from .config import InteractionConfig
from .events import Event, EventColumns, encode_events, epoch_seconds


@dataclass(frozen=True)
class Interactions:
    """The training input: ``matrix[u, i]`` is the summed, decayed weight of user u on asset i."""

    matrix: sp.csr_matrix
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    config: InteractionConfig
    reference_time: float
    newest_event_at: float | None
    n_events: int
    ignored_events: int
    user_index: dict[str, int] = field(init=False, repr=False)
    item_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.matrix.shape != (len(self.user_ids), len(self.item_ids)):
            raise ValueError("matrix shape does not match the id maps")
        object.__setattr__(self, "user_index", {u: i for i, u in enumerate(self.user_ids)})
        object.__setattr__(self, "item_index", {a: i for i, a in enumerate(self.item_ids)})
        if len(self.user_index) != len(self.user_ids) or len(self.item_index) != len(self.item_ids):
            raise ValueError("id maps contain duplicates")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.user_ids), len(self.item_ids))

    def popularity(self) -> NDArray[np.float64]:
        """Decayed weight per asset summed over users: the popularity fallback's ranking."""
        return np.asarray(self.matrix.sum(axis=0, dtype=np.float64)).ravel()


def kind_weight_table(kinds: Sequence[str], config: InteractionConfig) -> NDArray[np.float64]:
    """Weight per kind code; NaN marks kinds the config does not know."""
    return np.array([config.kind_weights.get(k, math.nan) for k in kinds], dtype=np.float64)


def decay_factors(
    at: NDArray[np.float64], reference_time: float, half_life_seconds: float
) -> NDArray[np.float64]:
    age = np.maximum(reference_time - at, 0.0)
    return np.exp2(-age / half_life_seconds)


def event_weights(
    columns: EventColumns, config: InteractionConfig, reference_time: float
) -> NDArray[np.float64]:
    """Final weight of every event; NaN for events of unknown kinds."""
    weights = kind_weight_table(columns.kinds, config)[columns.kind]
    multiplier = columns.weight.astype(np.float64)
    weights *= np.where(np.isnan(multiplier), 1.0, multiplier)
    if config.half_life_seconds is not None:
        weights *= decay_factors(columns.at, reference_time, config.half_life_seconds)
    return weights


def confidence_matrix(
    users: NDArray[np.integer],
    items: NDArray[np.integer],
    weights: NDArray[np.float64],
    shape: tuple[int, int],
) -> sp.csr_matrix:
    """Sum weights per (user, item) into a CSR with sorted indices and no explicit zeros: a
    pair whose sum is zero in float32 (an event decayed for many half-lives, a tiny weight)
    is stored as float32's smallest normal value. It trains as nothing, but it stays in the
    user's row, and the row is what tells serving what the user has: dropped, the asset was
    recommended back to them, and a user whose events all decayed got popularity with
    nothing left out."""
    # Summing in float64 keeps many tiny decayed weights from vanishing; stored as float32
    # because that is what implicit trains on and it halves memory at 20M entries.
    coo = sp.coo_matrix((weights, (users, items)), shape=shape, dtype=np.float64)
    matrix = coo.tocsr()  # tocsr sums duplicates
    del coo
    result = matrix.astype(np.float32)
    del matrix
    np.maximum(result.data, np.finfo(np.float32).tiny, out=result.data)  # also no subnormals
    result.sort_indices()
    return result


def build_from_columns(
    columns: EventColumns,
    config: InteractionConfig,
    reference_time: datetime | float | None = None,
) -> Interactions:
    """Vectorised builder; keeps the column id maps whole so splits stay aligned."""
    if isinstance(reference_time, datetime):
        ref = epoch_seconds(reference_time)
    elif reference_time is None:
        ref = float(columns.at.max()) if len(columns) else time.time()
    else:
        ref = float(reference_time)
    weights = event_weights(columns, config, ref)
    used = ~np.isnan(weights)
    n_used = int(used.sum())
    if n_used < len(columns):
        users, items, weights = columns.user[used], columns.item[used], weights[used]
    else:
        users, items = columns.user, columns.item
    newest = float(columns.at[used].max()) if n_used else None
    matrix = confidence_matrix(
        users, items, weights, (len(columns.user_ids), len(columns.item_ids))
    )
    return Interactions(
        matrix=matrix,
        user_ids=columns.user_ids,
        item_ids=columns.item_ids,
        config=config,
        reference_time=ref,
        newest_event_at=newest,
        n_events=n_used,
        ignored_events=len(columns) - n_used,
    )


def build_interactions(
    events: Iterable[Event],
    config: InteractionConfig | None = None,
    reference_time: datetime | None = None,
) -> Interactions:
    """Build the training matrix from events; ``reference_time`` defaults to the newest event."""
    return build_from_columns(encode_events(events), config or InteractionConfig(), reference_time)
