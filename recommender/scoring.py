"""Numeric kernels used at serve time and in evaluation: numpy only, no ids, no state.

Fold-in solves the same normal equations implicit's ALS uses for one user with the item factors
held fixed (``recalculate_user`` / Hu, Koren & Volinsky): with confidences ``c = alpha * w`` on
the user's items ``I``,
``(YᵀY + λI + Y_Iᵀ diag(c - 1) Y_I) x = Y_Iᵀ c``.
``YᵀY + λI`` is the same for every user, so it is computed once per model (``gram``); a fold-in
then costs O(|I|·f² + f³), well under a millisecond at f = 64.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Float32Array = NDArray[np.float32]


def gram(item_factors: Float32Array, regularization: float) -> NDArray[np.float64]:
    """``YᵀY + λI`` in float64 (the solve is ill-conditioned enough that float32 shows)."""
    y = item_factors.astype(np.float64, copy=False)
    result = y.T @ y
    result[np.diag_indices_from(result)] += regularization
    return result


def fold_in(
    item_factors: Float32Array,
    gram_matrix: NDArray[np.float64],
    items: NDArray[np.integer],
    weights: NDArray[np.floating],
    alpha: float,
) -> Float32Array:
    """Least-squares user vector for a user whose row is (items, weights)."""
    y = item_factors[items].astype(np.float64)
    confidence = alpha * np.asarray(weights, dtype=np.float64)
    a = gram_matrix + (y.T * (confidence - 1.0)) @ y
    b = y.T @ confidence
    return np.linalg.solve(a, b).astype(np.float32)


def top_n(
    scores: NDArray[np.floating], n: int, allowed: NDArray[np.bool_] | None = None
) -> tuple[NDArray[np.intp], NDArray[np.floating]]:
    """Indices and scores of the ``n`` best allowed entries, best first (excluded ones dropped).

    Same selection as ``top_n_rows`` so a user's list does not depend on being batched.
    """
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    ids, best = top_n_rows(scores[np.newaxis, :], n)
    keep = np.isfinite(best[0])
    return ids[0][keep], best[0][keep]


# Candidate pre-selection kicks in above this many columns: below it argpartition is cheap.
_SAMPLE = 4096


def top_n_rows(
    scores: NDArray[np.floating], n: int
) -> tuple[NDArray[np.intp], NDArray[np.floating]]:
    """Row-wise top ``n`` of a (users x items) block, best first; excluded entries are -inf.

    Rows with fewer than ``n`` finite scores end in -inf entries; callers drop them.

    Why not argpartition over each full row: at 200k items it costs ~0.5-1 ms a row, more than
    the matrix product that made the scores. Instead a strided sample of ~4k scores gives a
    per-row threshold that ~100s of entries exceed; one vectorised comparison finds those
    candidates and only they are partitioned. Exact: whenever at least ``n`` entries reach the
    threshold, the top ``n`` are among them; otherwise (rare, e.g. mostly -inf rows) the row
    falls back to the full argpartition.
    """
    rows, size = scores.shape
    n = min(n, size)
    ids = np.zeros((rows, max(n, 0)), dtype=np.intp)
    best = np.full((rows, max(n, 0)), -np.inf, dtype=scores.dtype)
    if n <= 0:
        return ids, best
    thresholds: NDArray[np.floating] | None = None
    if size > 8 * _SAMPLE and n * 64 < size:
        sample = scores[:, :: size // _SAMPLE]
        width = sample.shape[1]
        # 8+ sampled entries above the threshold -> ~8 * size/width expected candidates, far
        # more than n; the chance of fewer than n is negligible (and handled).
        m = min(width, max(8, 4 * -(-n * width // size)))
        thresholds = np.partition(sample, width - m, axis=1)[:, width - m]
    for r in range(rows):
        row = scores[r]
        candidates = None
        if thresholds is not None:
            candidates = np.flatnonzero(row >= thresholds[r])
            if len(candidates) < n:
                candidates = None
        if candidates is None:
            candidates = np.argpartition(-row, n - 1)[:n] if n < size else np.arange(size)
        elif len(candidates) > n:
            candidates = candidates[np.argpartition(-row[candidates], n - 1)[:n]]
        order = candidates[np.argsort(-row[candidates], kind="stable")]
        ids[r] = order
        best[r] = row[order]
    return ids, best


# First block of the norm-ordered scan: on the 200k-asset benchmark model the scan stops after
# ~1.2k items for the median user (p90 1.5k), so one 4k block usually settles it.
_FIRST_BLOCK = 4096
# Relative slack on the stopping bound: a float32 dot over f <= a few hundred terms is off by
# far less than 1e-4 of |x||y|, so an item the bound rules out can never round its way in.
_BOUND_SLACK = 1e-4


class InnerProductIndex:
    """Exact top ``n`` by inner product with the item factors, scanning few items per query.

    Items are kept in order of decreasing factor norm. By Cauchy-Schwarz, ``x . y <= |x| |y|``,
    so once the n-th best score found so far beats ``|x|`` times the norm of the next unscanned
    item, no later item can enter the top n and the scan stops. ALS gives popular items long
    vectors and power-law popularity makes the norms fall off fast, so a query reads a few
    thousand rows instead of all of them: 0.05 ms instead of 2 ms for one user at 200k assets
    x 64 factors, where the full product is bound by memory bandwidth (51 MB of factors a
    call). The answer is the same as a full scan (ties aside); the worst case (a filter that
    allows only a few items) reads every row once, like the full scan, in growing blocks.

    Costs one norm-ordered copy of the item factors.
    """

    def __init__(self, factors: Float32Array) -> None:
        norms = np.linalg.norm(factors.astype(np.float64, copy=False), axis=1)
        self.order: NDArray[np.intp] = np.argsort(-norms, kind="stable").astype(np.intp)
        self.factors: Float32Array = np.ascontiguousarray(factors[self.order], dtype=np.float32)
        # Bound per position with the slack folded in; -> 0 for the all-zero tail.
        self._bounds: NDArray[np.float64] = norms[self.order] * (1.0 + _BOUND_SLACK)

    def __len__(self) -> int:
        return len(self.order)

    def bound(self, position: int) -> float:
        """Upper bound on ``|y|`` (slack included) of every item from ``position`` on in norm
        order, so ``|x| * bound(p)`` caps any score those items can reach; 0 past the end."""
        return float(self._bounds[position]) if position < len(self._bounds) else 0.0

    def top_n(
        self, vector: NDArray[np.floating], n: int, allowed: NDArray[np.bool_] | None = None
    ) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        """Indices (in the original item order) and scores of the ``n`` best allowed items,
        best first, ties by lower index; fewer when fewer are allowed."""
        size = len(self.order)
        n = min(n, size)
        if n <= 0:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float32)
        x = np.asarray(vector, dtype=np.float32)
        x_norm = float(np.linalg.norm(x.astype(np.float64)))
        ids = np.empty(0, dtype=np.intp)
        best = np.empty(0, dtype=np.float32)
        start, block = 0, _FIRST_BLOCK
        while start < size:
            stop = min(size, start + block)
            scores = self.factors[start:stop] @ x
            block_ids = self.order[start:stop]
            if allowed is not None:
                keep = allowed[block_ids]
                scores, block_ids = scores[keep], block_ids[keep]
            ids = np.concatenate([ids, block_ids])
            best = np.concatenate([best, scores])
            if len(best) > n:
                part = np.argpartition(-best, n - 1)[:n]
                ids, best = ids[part], best[part]
            start, block = stop, block * 2
            if len(best) == n and start < size and float(best.min()) > x_norm * self._bounds[start]:
                break
        order = np.lexsort((ids, -best))
        return ids[order], best[order]


def normalize_rows(factors: Float32Array) -> Float32Array:
    """Unit-length rows for cosine similarity; all-zero rows stay zero."""
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return (factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
