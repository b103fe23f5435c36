"""Every known user's top ``k`` computed once, after training, so serving is a lookup.

Why: a request that has to score is tens of microseconds of numpy plus a thread hop, which is
several times what aiohttp itself spends on a request; a stored list is read and filtered in a
few microseconds. Serving still re-scores a user who has events newer than the model (fold-in)
or whose stored list does not survive the request's filters (deleted assets, a kind).

How, at 1M users x 200k assets: not one full product per user (200k x f each, then a selection
over 200k scores), but one matrix product per block of users against the ``prefix`` longest
item vectors only (``InnerProductIndex`` order), a row-wise top ``k`` there, and the
Cauchy-Schwarz bound from ``scoring`` to prove per row that no item outside the prefix could
enter: ``k-th score > |x| * |y_prefix|``. Rows the bound does not settle (users whose taste is
in the long tail) are answered by the exact single-user scan. The result is exact either way,
the same top ``k`` as ``Recommender.recommend(user, k)`` without filters (ties aside).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

from .model import Model
from .scoring import InnerProductIndex, top_n_rows

Progress = Callable[[int, int], None]  # (users done, users)


@dataclasses.dataclass(frozen=True)
class PrecomputeStats:
    users: int
    k: int
    seconds: float
    exact_scans: int  # rows the prefix bound did not settle


def precompute_top(
    model: Model,
    k: int,
    *,
    excluded: NDArray[np.bool_] | None = None,
    prefix: int = 16384,
    block: int = 2048,
    threads: int = 1,
    progress: Progress | None = None,
) -> tuple[Model, PrecomputeStats]:
    """``model`` with ``top_items``/``top_scores`` (k per user, -1 padded), and timings.

    ``excluded`` (one flag per model item, e.g. assets already deleted at training time) keeps
    those items out of every list so they do not waste its slots; the user's own training row
    is always left out, as ``recommend`` leaves it out."""
    started = time.perf_counter()
    n_users, n_items = len(model.user_ids), len(model.item_ids)
    k = max(0, min(k, n_items))
    top_items = np.full((n_users, k), -1, dtype=np.int32)
    top_scores = np.zeros((n_users, k), dtype=np.float32)
    exact = 0
    if k and n_users:
        index = InnerProductIndex(np.ascontiguousarray(model.item_factors, dtype=np.float32))
        order = index.order
        position = np.empty(n_items, dtype=np.intp)
        position[order] = np.arange(n_items)
        m = min(n_items, max(prefix, 2 * k))
        head = index.factors[:m]
        bound = index.bound(m)
        head_excluded = None if excluded is None else excluded[order[:m]]
        allowed = None if excluded is None else ~excluded
        indptr, indices = model.user_items.indptr, model.user_items.indices
        user_factors = model.user_factors

        def run(start: int) -> int:
            stop = min(n_users, start + block)
            x = np.asarray(user_factors[start:stop], dtype=np.float32)
            scores = x @ head.T
            if head_excluded is not None:
                scores[:, head_excluded] = -np.inf
            # The users' own items, where they fall inside the prefix.
            lo, hi = int(indptr[start]), int(indptr[stop])
            rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
            cols = position[indices[lo:hi]]
            inside = cols < m
            scores[rows[inside], cols[inside]] = -np.inf
            kk = min(k, m)
            part, best = top_n_rows(scores, kk)
            norms = np.linalg.norm(x.astype(np.float64), axis=1)
            settled = (best[:, -1] > norms * bound) & np.isfinite(best[:, -1]) & (kk == k)
            if m == n_items:
                settled[:] = True  # the prefix is everything: nothing lies outside it
            ids = order[part]
            ids[~np.isfinite(best)] = -1
            # A user without a training row gets popularity from ``recommend``, not ALS:
            # leave their list empty so serving asks ``recommend``.
            ids[np.diff(indptr[start : stop + 1]) == 0] = -1
            top_items[start:stop] = ids
            top_scores[start:stop] = np.where(np.isfinite(best), best, 0.0)
            unsettled = np.flatnonzero(~settled)
            for row in unsettled:
                u = start + int(row)
                owned = indices[indptr[u] : indptr[u + 1]]
                if not len(owned):
                    continue
                got_ids, got = index.top_n(x[row], k + len(owned), allowed)
                keep = ~np.isin(got_ids, owned)
                got_ids, got = got_ids[keep][:k], got[keep][:k]
                top_items[u] = -1
                top_items[u, : len(got_ids)] = got_ids
                top_scores[u] = 0.0
                top_scores[u, : len(got)] = got
            return len(unsettled)

        # Blocks write disjoint rows; numpy releases the GIL in the products and selections,
        # so threads use more than one core.
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for done, scans in enumerate(pool.map(run, range(0, n_users, block)), 1):
                exact += scans
                if progress is not None:
                    progress(min(n_users, done * block), n_users)
    stats = PrecomputeStats(n_users, k, time.perf_counter() - started, exact)
    return dataclasses.replace(model, top_items=top_items, top_scores=top_scores), stats
