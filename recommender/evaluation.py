"""Offline evaluation: hold out part of the data, rank for held-out users, score the rankings.

Splits:
* ``split_random``: each (user, asset) pair of users with at least ``min_items`` assets is held
  out with probability ``test_fraction``; the rest trains. Measures how well the model fills in
  a user's known taste.
* ``split_by_time``: events before the cutoff train, pairs first seen after it are the test set
  (pairs already in training are dropped: they are excluded from rankings as "owned"). Closer to
  production, where the model predicts what users take next.

Metrics at k, averaged over test users (binary relevance):
precision = hits / k; recall = hits / |held-out|; nDCG = DCG / ideal DCG with the ideal list
of length min(k, |held-out|); coverage = distinct assets recommended / assets in the catalogue.
Both ALS and the popularity baseline rank all assets minus the user's training assets, so the
comparison is like for like.

The "als" row scores what serving would answer, not the bare factors: a test user without
training interactions (with the time split, a user first seen after the cutoff) has a zero
factor, and ``Recommender.recommend`` gives such a user the popularity ranking, so the "als"
row ranks them by popularity too (``served_rankings``). ``Evaluation.cold_users`` counts them;
they score the same in both rows, so the lift is over the users ALS ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from .config import ALSConfig, InteractionConfig
from .events import EventColumns
from .interactions import Interactions, build_from_columns
from .model import Model
from .scoring import top_n_rows
from .training import train

_BLOCK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Split:
    """Training interactions and a binary (users x assets) matrix of held-out pairs."""

    train: Interactions
    test: sp.csr_matrix
    method: str


def split_random(
    interactions: Interactions, test_fraction: float = 0.2, seed: int = 0, min_items: int = 2
) -> Split:
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    matrix = interactions.matrix.tocoo()
    rng = np.random.default_rng(seed)
    per_user = np.diff(interactions.matrix.indptr)
    eligible = per_user[matrix.row] >= min_items
    held = eligible & (rng.random(matrix.nnz) < test_fraction)
    shape = matrix.shape
    train_matrix = sp.csr_matrix(
        (matrix.data[~held], (matrix.row[~held], matrix.col[~held])), shape=shape
    )
    test = sp.csr_matrix(
        (np.ones(int(held.sum()), dtype=np.float32), (matrix.row[held], matrix.col[held])),
        shape=shape,
    )
    # The popularity baseline is recomputed from this training matrix, so it sees no test pair.
    return Split(train=replace(interactions, matrix=train_matrix), test=test, method="random")


def split_by_time(
    columns: EventColumns,
    config: InteractionConfig,
    test_fraction: float = 0.2,
    cutoff: float | None = None,
) -> Split:
    """``cutoff`` (epoch seconds) defaults to the time that leaves ``test_fraction`` after it."""
    if cutoff is None:
        if not 0 < test_fraction < 1:
            raise ValueError("test_fraction must be in (0, 1)")
        cutoff = float(np.quantile(columns.at, 1 - test_fraction)) if len(columns) else 0.0
    before = columns.at <= cutoff
    train_data = build_from_columns(columns.take(before), config, reference_time=cutoff)
    later = build_from_columns(columns.take(~before), config, reference_time=cutoff).matrix
    later.data[:] = 1.0
    # Remove pairs the user already had: (later - train>0) keeps only new pairs.
    seen = train_data.matrix.copy()
    seen.data[:] = 1.0
    test = (later - later.multiply(seen)).tocsr()
    test.eliminate_zeros()
    return Split(train=train_data, test=sp.csr_matrix(test, dtype=np.float32), method="time")


@dataclass(frozen=True)
class Metrics:
    name: str
    k: int
    users: int
    precision: float
    recall: float
    ndcg: float
    coverage: float


def ranking_metrics(
    name: str, rankings: NDArray[np.intp], users: NDArray[np.intp], test: sp.csr_matrix, k: int
) -> Metrics:
    """``rankings[j]`` are asset indices for ``users[j]`` (-1 pads short lists)."""
    n_items = test.shape[1]
    rankings = rankings[:, :k]
    relevant = test[users]
    relevant.sort_indices()
    rows = np.repeat(np.arange(len(users)), np.diff(relevant.indptr))
    keys = rows.astype(np.int64) * n_items + relevant.indices
    rank_keys = np.arange(len(users), dtype=np.int64)[:, None] * n_items + rankings
    hits = np.isin(rank_keys, keys) & (rankings >= 0)
    n_relevant = np.diff(relevant.indptr)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    hit_count = hits.sum(axis=1)
    recommended = np.unique(rankings[rankings >= 0])
    return Metrics(
        name=name,
        k=k,
        users=len(users),
        precision=float((hit_count / k).mean()) if len(users) else 0.0,
        recall=float((hit_count / n_relevant).mean()) if len(users) else 0.0,
        ndcg=float((dcg / ideal).mean()) if len(users) else 0.0,
        coverage=len(recommended) / n_items if n_items else 0.0,
    )


def _rank_blocks(
    score_block: Callable[[NDArray[np.intp]], NDArray[np.float32]],
    owned: sp.csr_matrix,
    users: NDArray[np.intp],
    k: int,
) -> NDArray[np.intp]:
    n_items = owned.shape[1]
    block = max(1, _BLOCK_BYTES // (4 * max(n_items, 1)))
    out = np.full((len(users), k), -1, dtype=np.intp)
    for start in range(0, len(users), block):
        chunk = users[start : start + block]
        scores = score_block(chunk)
        rows = owned[chunk]
        row_ids = np.repeat(np.arange(len(chunk)), np.diff(rows.indptr))
        scores[row_ids, rows.indices] = -np.inf
        ids, best = top_n_rows(scores, k)
        ids[~np.isfinite(best)] = -1
        out[start : start + len(chunk), : ids.shape[1]] = ids
    return out


def als_rankings(
    model: Model, owned: sp.csr_matrix, users: NDArray[np.intp], k: int
) -> NDArray[np.intp]:
    item_t = np.ascontiguousarray(model.item_factors.T)
    return _rank_blocks(lambda chunk: model.user_factors[chunk] @ item_t, owned, users, k)


def popularity_rankings(
    popularity: NDArray[np.floating], owned: sp.csr_matrix, users: NDArray[np.intp], k: int
) -> NDArray[np.intp]:
    scores = np.where(popularity > 0, popularity, -np.inf).astype(np.float32)
    return _rank_blocks(lambda chunk: np.tile(scores, (len(chunk), 1)), owned, users, k)


def cold_mask(owned: sp.csr_matrix, users: NDArray[np.intp]) -> NDArray[np.bool_]:
    """Users without a training row (``Recommender.has_history`` is False for them)."""
    empty: NDArray[np.bool_] = np.diff(owned.indptr)[users] == 0
    return empty


def served_rankings(
    model: Model, owned: sp.csr_matrix, users: NDArray[np.intp], k: int
) -> NDArray[np.intp]:
    """What ``Recommender.recommend`` answers a user with no newer events: the ALS ranking for
    users with a training row, the popularity ranking for those without (``cold_mask``)."""
    cold = cold_mask(owned, users)
    out = np.empty((len(users), k), dtype=np.intp)
    out[~cold] = als_rankings(model, owned, users[~cold], k)
    out[cold] = popularity_rankings(model.popularity, owned, users[cold], k)
    return out


@dataclass(frozen=True)
class Evaluation:
    method: str
    k: int
    rows: tuple[Metrics, ...]
    model: Model
    # Test users without training interactions, ranked by popularity in the "als" row as well.
    cold_users: int = 0

    def lift(self, metric: str = "precision") -> float:
        """ALS over popularity on one metric (inf when popularity scored 0)."""
        scores = {row.name: float(getattr(row, metric)) for row in self.rows}
        base = scores["popularity"]
        return scores["als"] / base if base else float("inf")

    def table(self) -> list[list[str]]:
        """Header row then one row per ranking, as strings ready to print."""
        k = self.k
        header = [
            "model",
            "split",
            "users",
            f"precision@{k}",
            f"recall@{k}",
            f"ndcg@{k}",
            "coverage",
        ]
        body = [
            [
                row.name,
                self.method,
                str(row.users),
                f"{row.precision:.4f}",
                f"{row.recall:.4f}",
                f"{row.ndcg:.4f}",
                f"{row.coverage:.4f}",
            ]
            for row in self.rows
        ]
        return [header, *body]


def evaluate_split(
    split: Split,
    als: ALSConfig | None = None,
    k: int = 10,
    max_users: int | None = 10_000,
    seed: int = 0,
) -> Evaluation:
    """Train on ``split.train`` and score ALS (as served: popularity for users without training
    interactions) and popularity on up to ``max_users`` test users."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if max_users is not None and max_users < 1:
        # No users would average to 0 in both rows and report an infinite lift.
        raise ValueError(f"max_users must be at least 1, not {max_users}")
    model = train(split.train, als)
    users = np.flatnonzero(np.diff(split.test.indptr) > 0)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    owned = split.train.matrix
    rows = (
        ranking_metrics("als", served_rankings(model, owned, users, k), users, split.test, k),
        ranking_metrics(
            "popularity",
            popularity_rankings(model.popularity, owned, users, k),
            users,
            split.test,
            k,
        ),
    )
    cold = int(cold_mask(owned, users).sum())
    return Evaluation(method=split.method, k=k, rows=rows, model=model, cold_users=cold)


def evaluate_columns(
    columns: EventColumns,
    interactions: InteractionConfig | None = None,
    als: ALSConfig | None = None,
    *,
    method: str = "time",
    test_fraction: float = 0.2,
    k: int = 10,
    max_users: int | None = 10_000,
    seed: int = 0,
) -> Evaluation:
    """The CLI entry point: split events by ``method`` ("time" or "random") and evaluate."""
    config = interactions or InteractionConfig()
    if method == "time":
        split = split_by_time(columns, config, test_fraction)
    elif method == "random":
        split = split_random(build_from_columns(columns, config), test_fraction, seed)
    else:
        raise ValueError(f"unknown split method {method!r}; use 'time' or 'random'")
    return evaluate_split(split, als, k=k, max_users=max_users, seed=seed)
