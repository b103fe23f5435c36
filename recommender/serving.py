"""Serving: rank assets for a user from a trained model plus the events that came after it.

Numpy only (implicit is never imported here), so a server worker loads fast and small.

How a user's list is made:
* Known user, no events since training: their trained factor.
* Any events since training (``add_events``, or ``recent=`` on the call): the user's factor is
  re-solved from their whole current row (training row + new events) against the fixed item
  factors, the same least squares as implicit's ``recalculate_user``. This is what makes one
  new event change the list at once, and it works for users the model has never seen.
* No usable row at all (unknown user with no events, or only events on assets the model has
  not seen): the time-decayed popularity ranking, flagged ``fallback=True``.

New events are weighted like training weighted them (the model records the kind weights and
half-life). Events after the model's reference time count in full for the user's row; for
popularity they count ``2 ** (Δt / half_life)`` relative to the stored (reference-time)
popularity, which ranks exactly like decaying everything to "now" without touching every entry.

Assets the model has not seen get no collaborative score; they enter the popularity ranking as
soon as events name them. Deleted assets (``mark_deleted``/``set_deleted``) and, when ``kind``
is given, assets of another or unknown kind are never returned by any method.

BLAS threads: a server worker should call ``pin_blas_threads()`` once at start (or set
``OPENBLAS_NUM_THREADS=1`` before numpy is imported). Per-request products are far too small
to gain from BLAS threads, and the thread hand-off dominates: measured here on 2 cores, a
10,000 x 64 matrix-vector product takes 1.5 ms with 2 OpenBLAS threads and 0.06 ms with one.
The library does not pin on import because that would change BLAS for the whole process.

Single-user ``recommend`` does not score every asset: ``scoring.InnerProductIndex`` scans the
item factors in order of decreasing norm and stops once no remaining asset can enter the top n
(exact, same answer as the full product). ``recommend_batch`` does the same per user, except
with a kind filter: then one matrix product per block of users, which costs less per user
when the filter makes the early stop unlikely.

Thread safety: every public method takes one lock, so calls may come from several threads
(e.g. the event loop feeding ``add_events`` while an executor scores); they are serialised.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .events import AssetId, Event, asset_key, epoch_seconds
from .model import Model
from .scoring import InnerProductIndex, fold_in, gram, normalize_rows, top_n, top_n_rows

# Popularity boost exponent cap: a model 60 half-lives old is long overdue for retraining, and
# 2**60 keeps float64 sums exact enough while never overflowing.
_MAX_BOOST_EXPONENT = 60.0
# Score blocks in recommend_batch stay under ~64 MB whatever the catalogue size.
_BATCH_BLOCK_BYTES = 64 * 1024 * 1024


def pin_blas_threads(threads: int = 1) -> None:
    """Limit every loaded BLAS to ``threads`` for the rest of the process (see module doc)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads, user_api="blas")


@dataclass(frozen=True)
class Recommendations:
    """Ranked ``(asset_id, score)`` pairs, best first; ``fallback`` when popularity ranked them
    (scores are then decayed popularity, not ALS scores, and not comparable to them)."""

    items: tuple[tuple[str, float], ...]
    fallback: bool

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [asset for asset, _ in self.items]

    def to_list(self) -> list[tuple[str, float]]:
        return list(self.items)


@dataclass(frozen=True)
class _Pending:
    """One event newer than the model, reduced to what ranking needs."""

    asset: str
    weight: float
    at: float


class Recommender:
    """Answers ``recommend``/``similar``/``popular`` for one model; see the module docstring."""

    def __init__(
        self,
        model: Model,
        *,
        asset_kinds: Mapping[str, str] | Mapping[AssetId, str] | None = None,
        deleted: Iterable[AssetId] = (),
    ) -> None:
        self._lock = threading.RLock()
        self.model = model
        meta = model.meta
        self._alpha = meta.als.alpha
        self._kind_weights = dict(meta.interactions.kind_weights)
        self._half_life = meta.interactions.half_life_seconds
        self._reference = meta.reference_time
        self._user_index = model.user_index  # built now so the first request is not slow
        self._model_index = model.item_index
        self._item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self._user_factors = model.user_factors
        self._gram = gram(self._item_factors, meta.als.regularization)
        # Norm-ordered copy of the item factors for single-user ranking (scoring module).
        self._ranker = InnerProductIndex(self._item_factors)
        self._unit_factors: NDArray[np.float32] | None = None
        self._n_model = len(model.item_ids)
        # "Extended" item space: model items first, then assets first seen in newer events.
        self._new_ids: list[str] = []
        self._new_index: dict[str, int] = {}
        self._n_items = self._n_model
        self._popularity = np.array(model.popularity, dtype=np.float64)
        self._kind_code = np.full(self._n_model, -1, dtype=np.int16)
        self._deleted_mask = np.zeros(self._n_model, dtype=np.bool_)
        self._kind_codes: dict[str, int] = {}
        # Python mirrors of the two arrays above for the model's items, for the per-element
        # reads of ``recommend_stored`` (a list index or set lookup beats a numpy scalar read).
        self._kind_list: list[int] = [-1] * self._n_model
        self._deleted_model: set[int] = set()
        self._kind_of: dict[str, str] = {}
        self._deleted: set[str] = set()
        self._pending: dict[str, list[_Pending]] = {}
        self._pending_count = 0
        if asset_kinds:
            self.update_asset_kinds(asset_kinds)
        if deleted:
            self.mark_deleted(deleted)

    # ------------------------------------------------------------------ caller-maintained state

    def update_asset_kinds(self, kinds: Mapping[str, str] | Mapping[AssetId, str]) -> None:
        """Add or change asset → kind entries (kinds filter ``recommend``/``similar``)."""
        with self._lock:
            for asset, kind in kinds.items():
                key = asset_key(asset)
                self._kind_of[key] = kind
                index = self._index(key)
                if index is not None:
                    self._kind_code[index] = self._code_for(kind)
                    if index < self._n_model:
                        self._kind_list[index] = int(self._kind_code[index])

    def set_asset_kinds(self, kinds: Mapping[str, str] | Mapping[AssetId, str]) -> None:
        """Replace the whole asset → kind mapping."""
        with self._lock:
            self._kind_of.clear()
            self._kind_code[:] = -1
            self._kind_list = [-1] * self._n_model
            self.update_asset_kinds(kinds)

    def mark_deleted(self, assets: Iterable[AssetId]) -> None:
        with self._lock:
            for asset in assets:
                key = asset_key(asset)
                self._deleted.add(key)
                index = self._index(key)
                if index is not None:
                    self._deleted_mask[index] = True
                    if index < self._n_model:
                        self._deleted_model.add(index)

    def unmark_deleted(self, assets: Iterable[AssetId]) -> None:
        with self._lock:
            for asset in assets:
                key = asset_key(asset)
                self._deleted.discard(key)
                index = self._index(key)
                if index is not None:
                    self._deleted_mask[index] = False
                    self._deleted_model.discard(index)

    def set_deleted(self, assets: Iterable[AssetId]) -> None:
        """Replace the whole set of deleted assets."""
        with self._lock:
            self._deleted.clear()
            self._deleted_mask[:] = False
            self._deleted_model = set()
            self.mark_deleted(assets)

    def add_events(self, events: Iterable[Event]) -> int:
        """Remember events newer than the model (the caller must not pass events the model was
        trained on: they would count twice). Returns how many were used; events of kinds the
        model's config does not weight are ignored, as in training."""
        used = 0
        with self._lock:
            for event in events:
                counted = self._count_popularity(event)
                if counted is not None:
                    self._pending.setdefault(event.user, []).append(counted)
                    used += 1
            self._pending_count += used
        return used

    def add_popularity(self, events: Iterable[Event]) -> int:
        """Count events newer than the model in the popularity ranking only, for servers that
        pass each user's newer events to ``recommend`` themselves (``recent``); the same
        caution as ``add_events``. Returns how many were counted."""
        with self._lock:
            return sum(self._count_popularity(event) is not None for event in events)

    def _count_popularity(self, event: Event) -> _Pending | None:
        weight = self._event_weight(event)
        if weight is None:
            return None
        key = asset_key(event.asset)
        at = epoch_seconds(event.at)
        index = self._ensure_item(key)  # first: it may grow (replace) the array
        self._popularity[index] += weight * self._popularity_boost(at)
        return _Pending(key, weight, at)

    def with_model(self, model: Model) -> Recommender:
        """A recommender on a new model that keeps kinds, deletions and the events the new
        model has not seen (those after its ``newest_event_at``); for hot-swapping."""
        with self._lock:
            fresh = Recommender(model, asset_kinds=self._kind_of, deleted=self._deleted)
            cutoff = model.meta.newest_event_at
            replay = [
                (user, p)
                for user, pending in self._pending.items()
                for p in pending
                if cutoff is None or p.at > cutoff
            ]
        with fresh._lock:
            for user, p in replay:
                index = fresh._ensure_item(p.asset)
                fresh._popularity[index] += p.weight * fresh._popularity_boost(p.at)
                fresh._pending.setdefault(user, []).append(p)
            fresh._pending_count = len(replay)
        return fresh

    def stats(self) -> dict[str, Any]:
        """Numbers for the admin page."""
        with self._lock:
            meta = self.model.meta
            return {
                "trained_at": meta.trained_at_datetime.isoformat(),
                "users": meta.n_users,
                "assets": meta.n_items,
                "events": meta.n_events,
                "factors": self.model.factors,
                "pending_events": self._pending_count,
                "pending_users": len(self._pending),
                "new_assets": len(self._new_ids),
                "deleted": len(self._deleted),
            }

    # ----------------------------------------------------------------------------- queries

    def recommend(
        self,
        user: str,
        n: int = 10,
        kind: str | None = None,
        exclude_owned: bool = True,
        recent: Iterable[Event] | None = None,
    ) -> Recommendations:
        """Top ``n`` assets for ``user``. ``recent``, when given, is the complete list of this
        user's events newer than the model and replaces what ``add_events`` collected for them
        (for servers that read it from the database per request instead)."""
        with self._lock:
            pending = self._pending_for(user, recent)
            vector, owned = self._user_vector(user, pending)
            if vector is None:
                return self._popular(n, kind, owned if exclude_owned else None)
            allowed = self._allowed(kind, self._n_model)
            if exclude_owned:
                allowed[owned[owned < self._n_model]] = False
            return self._result(*self._ranker.top_n(vector, n, allowed), fallback=False)

    def has_history(self, user: str) -> bool:
        """Whether the model holds any of ``user``'s events. A user without (unknown, or
        known with an empty training row) gets the same answer from ``recommend`` as every
        other such user while they have no newer events: the popularity ranking, nothing
        excluded, which a server can compute once and reuse."""
        u = self._user_index.get(user)
        if u is None:
            return False
        indptr = self.model.user_items.indptr
        return bool(indptr[u + 1] > indptr[u])

    def recommend_stored(
        self, user: str, n: int = 10, kind: str | None = None
    ) -> Recommendations | None:
        """``recommend(user, n, kind)`` from the model's precomputed lists, for a user with no
        events newer than the model; None when the list cannot give the whole answer (no
        lists, unknown user, or fewer than ``n`` entries survive deletions and ``kind`` while
        the stored list was cut at its length): then score with ``recommend``.

        Takes no lock, so a request is never stuck behind a scoring thread: it reads the
        immutable lists and Python mirrors of the deletion/kind state (a set and a list, each
        read once; single updates to them are atomic under the GIL), so the answer reflects a
        concurrent ``mark_deleted`` or not, as a call just before or after it would."""
        found = self.stored_top(user, n, kind)
        if found is None:
            return None
        names = self.model.item_ids
        return Recommendations(tuple((names[i], s) for i, s in zip(*found, strict=True)), False)

    def stored_top(
        self, user: str, n: int = 10, kind: str | None = None
    ) -> tuple[list[int], list[float]] | None:
        """``recommend_stored`` as the model's item indices and their scores, for a server
        that encodes answers from per-index fragments."""
        top = self.model.top_items
        scores = self.model.top_scores
        u = self._user_index.get(user)
        if top is None or scores is None or u is None or n <= 0:
            return None
        # Read the head of the row first: converting all k entries to Python costs more than
        # the rest of the lookup, and without filters n of them are enough.
        width = top.shape[1]
        span = min(width, 2 * n + 8 if kind is None else 8 * n + 16)
        row: list[int] = top[u, :span].tolist()
        if not row or row[0] < 0:
            return None  # no list (e.g. no training row: popularity is ``recommend``'s job)
        code = None
        if kind is not None:
            code = self._kind_codes.get(kind)
            if code is None:
                return [], []
        deleted, kinds = self._deleted_model, self._kind_list
        while True:
            picked: list[int] = []
            for pos, i in enumerate(row):
                if i < 0:
                    break  # the list holds every candidate there was: the answer is complete
                if i in deleted or (code is not None and kinds[i] != code):
                    continue
                picked.append(pos)
                if len(picked) == n:
                    break
            if len(picked) == n or row[-1] < 0:
                break
            if span == width:
                return None  # the list was cut at its length: items beyond it may qualify
            span = width
            row = top[u].tolist()
        if not picked:
            return [], []
        if picked[-1] == len(picked) - 1:  # nothing filtered out: the head as it is
            return row[: len(picked)], scores[u, : len(picked)].tolist()
        values = scores[u, : picked[-1] + 1].tolist()
        return [row[p] for p in picked], [values[p] for p in picked]

    def recommend_batch(
        self,
        users: Sequence[str],
        n: int = 10,
        kind: str | None = None,
        exclude_owned: bool = True,
    ) -> list[Recommendations]:
        """``recommend`` for many users. Without ``kind``, each user gets the early-stopping
        norm-ordered scan (a few thousand rows each). With ``kind``, a filter can leave few
        allowed assets and make that scan read everything, so users are scored in blocks with
        one matrix product per block, which reads the item factors once per block."""
        with self._lock:
            results: list[Recommendations | None] = [None] * len(users)
            vectors: list[NDArray[np.float32]] = []
            owned_rows: list[NDArray[np.intp]] = []
            slots: list[int] = []
            for slot, user in enumerate(users):
                vector, owned = self._user_vector(user, self._pending.get(user, []))
                if vector is None:
                    results[slot] = self._popular(n, kind, owned if exclude_owned else None)
                    continue
                vectors.append(vector)
                owned_rows.append(owned[owned < self._n_model])
                slots.append(slot)
            if vectors and kind is None:
                base = self._allowed(None, self._n_model)
                for vector, owned_row, slot in zip(vectors, owned_rows, slots, strict=True):
                    allowed = base.copy()
                    if exclude_owned:
                        allowed[owned_row] = False
                    ids, best = self._ranker.top_n(vector, n, allowed)
                    results[slot] = self._result(ids, best, fallback=False)
            elif vectors:
                allowed = self._allowed(kind, self._n_model)
                disallowed = np.flatnonzero(~allowed)
                block = max(1, _BATCH_BLOCK_BYTES // (4 * max(self._n_model, 1)))
                for start in range(0, len(vectors), block):
                    stop = min(start + block, len(vectors))
                    scores = np.stack(vectors[start:stop]) @ self._item_factors.T
                    scores[:, disallowed] = -np.inf
                    if exclude_owned:
                        rows = np.repeat(
                            np.arange(stop - start), [len(o) for o in owned_rows[start:stop]]
                        )
                        if len(rows):
                            scores[rows, np.concatenate(owned_rows[start:stop])] = -np.inf
                    ids, best = top_n_rows(scores, n)
                    for row in range(stop - start):
                        keep = np.isfinite(best[row])
                        results[slots[start + row]] = self._result(
                            ids[row][keep], best[row][keep], fallback=False
                        )
            return [r if r is not None else Recommendations((), False) for r in results]

    def similar(self, asset: AssetId, n: int = 10, kind: str | None = None) -> Recommendations:
        """Assets whose item factors point the same way (cosine). An asset the model has not
        seen, or saw without any interactions, gets the popularity ranking (fallback)."""
        with self._lock:
            key = asset_key(asset)
            index = self._model_index.get(key)
            unit = self._unit()
            if index is None or not unit[index].any():
                own = self._index(key)
                exclude = np.array([own] if own is not None else [], dtype=np.intp)
                return self._popular(n, kind, exclude)
            scores = unit @ unit[index]
            allowed = self._allowed(kind, self._n_model)
            allowed[index] = False
            return self._result(*top_n(scores, n, allowed), fallback=False)

    def popular(
        self, n: int = 10, kind: str | None = None, exclude: Iterable[AssetId] = ()
    ) -> Recommendations:
        """The time-decayed popularity ranking (always ``fallback=True``)."""
        with self._lock:
            indices = [self._index(asset_key(a)) for a in exclude]
            excluded = np.array([i for i in indices if i is not None], dtype=np.intp)
            return self._popular(n, kind, excluded)

    # ----------------------------------------------------------------------------- internals

    def _index(self, key: str) -> int | None:
        index = self._model_index.get(key)
        return index if index is not None else self._new_index.get(key)

    def _asset_id(self, index: int) -> str:
        if index < self._n_model:
            return self.model.item_ids[index]
        return self._new_ids[index - self._n_model]

    def _code_for(self, kind: str) -> int:
        code = self._kind_codes.get(kind)
        if code is None:
            if len(self._kind_codes) >= np.iinfo(np.int16).max:
                raise ValueError("too many distinct asset kinds")
            code = self._kind_codes[kind] = len(self._kind_codes)
        return code

    def _ensure_item(self, key: str) -> int:
        index = self._index(key)
        if index is not None:
            return index
        index = self._n_items
        if index >= len(self._popularity):
            # Grow by doubling so a stream of new assets costs amortised O(1) each.
            extra = max(1024, len(self._popularity))
            self._popularity = np.concatenate([self._popularity, np.zeros(extra)])
            self._kind_code = np.concatenate([self._kind_code, np.full(extra, -1, np.int16)])
            self._deleted_mask = np.concatenate([self._deleted_mask, np.zeros(extra, np.bool_)])
        self._new_ids.append(key)
        self._new_index[key] = index
        self._n_items += 1
        kind = self._kind_of.get(key)
        if kind is not None:
            self._kind_code[index] = self._code_for(kind)
        self._deleted_mask[index] = key in self._deleted
        return index

    def _event_weight(self, event: Event) -> float | None:
        base = self._kind_weights.get(event.kind)
        if base is None:
            return None
        if event.weight is None:
            return base
        if not (math.isfinite(event.weight) and event.weight >= 0):
            raise ValueError(f"event weight must be finite and >= 0: {event.weight!r}")
        return base * event.weight

    def _row_factor(self, at: float) -> float:
        """Decay of a pending event in the user's row, as training would have applied it."""
        if self._half_life is None or at >= self._reference:
            return 1.0
        return math.exp2((at - self._reference) / self._half_life)

    def _popularity_boost(self, at: float) -> float:
        if self._half_life is None:
            return 1.0
        exponent = (at - self._reference) / self._half_life
        return math.exp2(min(exponent, _MAX_BOOST_EXPONENT))

    def _pending_for(self, user: str, recent: Iterable[Event] | None) -> list[_Pending]:
        if recent is None:
            return self._pending.get(user, [])
        pending = []
        for event in recent:
            if event.user != user:
                raise ValueError(f"recent event of user {event.user!r}, expected {user!r}")
            weight = self._event_weight(event)
            if weight is not None:
                pending.append(_Pending(asset_key(event.asset), weight, epoch_seconds(event.at)))
        return pending

    def _user_vector(
        self, user: str, pending: Sequence[_Pending]
    ) -> tuple[NDArray[np.float32] | None, NDArray[np.intp]]:
        """The user's factor (None → popularity) and the extended indices they already have."""
        u = self._user_index.get(user)
        if u is not None:
            items, weights = self.model.user_row(u)
        else:
            items = np.empty(0, dtype=np.int32)
            weights = np.empty(0, dtype=np.float32)
        if not pending:
            owned = items.astype(np.intp)
            if u is None or not len(items):
                return None, owned
            return np.asarray(self._user_factors[u], dtype=np.float32), owned
        # Pending assets the model never saw are owned (never recommended back) but have no
        # factor to contribute to the solve; they are still in the extended space, so index
        # them there rather than dropping them.
        extra_items = np.array([self._ensure_item(p.asset) for p in pending], dtype=np.intp)
        extra_weights = np.array([p.weight * self._row_factor(p.at) for p in pending])
        all_items = np.concatenate([items.astype(np.intp), extra_items])
        all_weights = np.concatenate([weights.astype(np.float64), extra_weights])
        owned, inverse = np.unique(all_items, return_inverse=True)
        summed = np.bincount(inverse, weights=all_weights, minlength=len(owned)).astype(np.float64)
        known = (owned < self._n_model) & (summed > 0)
        if not known.any():
            return None, owned
        vector = fold_in(self._item_factors, self._gram, owned[known], summed[known], self._alpha)
        return vector, owned

    def _allowed(self, kind: str | None, size: int) -> NDArray[np.bool_]:
        """A fresh mask over the first ``size`` extended items (callers modify it)."""
        allowed = ~self._deleted_mask[:size]
        if kind is not None:
            code = self._kind_codes.get(kind)
            if code is None:
                return np.zeros(size, dtype=np.bool_)
            allowed &= self._kind_code[:size] == code
        return allowed

    def _popular(
        self, n: int, kind: str | None, exclude: NDArray[np.intp] | None
    ) -> Recommendations:
        size = self._n_items
        scores = self._popularity[:size]
        allowed = self._allowed(kind, size)
        allowed &= scores > 0  # never "recommend" an asset nobody has touched
        if exclude is not None and len(exclude):
            allowed[exclude] = False
        return self._result(*top_n(scores, n, allowed), fallback=True)

    def _unit(self) -> NDArray[np.float32]:
        if self._unit_factors is None:
            self._unit_factors = normalize_rows(self._item_factors)
        return self._unit_factors

    def _result(
        self, indices: NDArray[np.intp], scores: NDArray[np.floating], *, fallback: bool
    ) -> Recommendations:
        return Recommendations(
            tuple(
                (self._asset_id(int(i)), float(s))
                for i, s in zip(indices.tolist(), scores.tolist(), strict=True)
            ),
            fallback,
        )
