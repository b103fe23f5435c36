"""A trained model: factors, id maps, the training matrix and metadata, all plain arrays.

The training matrix (``user_items``) travels with the model because serving needs each user's
history twice: to drop what they already have, and as the row that fold-in re-solves when newer
events arrive. Saving and loading live in ``storage``; this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from .config import ALSConfig, InteractionConfig
from .events import from_epoch

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelMeta:
    """What the admin page shows and what serving needs to treat new events like training did."""

    trained_at: float
    reference_time: float
    newest_event_at: float | None
    als: ALSConfig
    interactions: InteractionConfig
    n_users: int
    n_items: int
    n_events: int
    nnz: int
    training_seconds: float
    format_version: int = FORMAT_VERSION

    @property
    def trained_at_datetime(self) -> datetime:
        return from_epoch(self.trained_at)

    @property
    def newest_event_datetime(self) -> datetime | None:
        return None if self.newest_event_at is None else from_epoch(self.newest_event_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "trained_at": self.trained_at,
            "reference_time": self.reference_time,
            "newest_event_at": self.newest_event_at,
            "als": self.als.to_dict(),
            "interactions": self.interactions.to_dict(),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_events": self.n_events,
            "nnz": self.nnz,
            "training_seconds": self.training_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMeta:
        newest = data.get("newest_event_at")
        return cls(
            format_version=int(data["format_version"]),
            trained_at=float(data["trained_at"]),
            reference_time=float(data["reference_time"]),
            newest_event_at=None if newest is None else float(newest),
            als=ALSConfig.from_dict(data["als"]),
            interactions=InteractionConfig.from_dict(data["interactions"]),
            n_users=int(data["n_users"]),
            n_items=int(data["n_items"]),
            n_events=int(data["n_events"]),
            nnz=int(data["nnz"]),
            training_seconds=float(data["training_seconds"]),
        )


@dataclass(frozen=True, eq=False)
class Model:
    """Row ``u`` of ``user_factors`` belongs to ``user_ids[u]``; likewise for items."""

    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    user_items: sp.csr_matrix
    popularity: NDArray[np.float64]
    meta: ModelMeta
    # Optional precomputed rankings (``precompute_top``): row ``u`` holds user ``u``'s best
    # model item indices, best first, excluding their training row; -1 pads short rows.
    top_items: NDArray[np.int32] | None = None
    top_scores: NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n_users, n_items = len(self.user_ids), len(self.item_ids)
        if self.user_factors.shape[0] != n_users or self.item_factors.shape[0] != n_items:
            raise ValueError("factor rows do not match the id maps")
        if self.user_factors.shape[1] != self.item_factors.shape[1]:
            raise ValueError("user and item factors differ in width")
        if self.user_items.shape != (n_users, n_items) or self.popularity.shape != (n_items,):
            raise ValueError("user_items or popularity do not match the id maps")
        if (self.top_items is None) != (self.top_scores is None):
            raise ValueError("top_items and top_scores come together")
        if self.top_items is not None and self.top_scores is not None:
            if self.top_items.ndim != 2 or self.top_items.shape[0] != n_users:
                raise ValueError("top_items must have one row per user")
            if self.top_scores.shape != self.top_items.shape:
                raise ValueError("top_scores must match top_items")

    @property
    def top_k(self) -> int:
        """Entries per user in the precomputed rankings (0: none stored)."""
        return 0 if self.top_items is None else int(self.top_items.shape[1])

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.item_ids)}

    def user_row(self, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """(item indices, weights) the user had at training time."""
        start, end = self.user_items.indptr[user], self.user_items.indptr[user + 1]
        return self.user_items.indices[start:end], self.user_items.data[start:end]
