"""Per-worker recommendation serving: the current model, hot swaps, and the answers.

Every worker polls the catalog every ``recommender_poll_interval`` seconds for assets that
changed (names, kinds, deletions) and for a newer row in ``models``. A new model is read from
the blob store (memory-mapped when the store has a local file) and its ``Recommender`` is built
in a thread; then one attribute is reassigned. A request reads that attribute once, so it is
answered wholly by the old model or wholly by the new one, and no request waits for the swap.

A request costs no catalog query. A user's list folds in their events recorded after the
model's cutoff: those this worker holds in memory (``RecentEvents``: its own writes at once,
everyone else's tailed from the catalog every ``recommender_tail_interval``) and those still in
its event buffer. So an event changes the list at once on the worker that took it, and on every
other worker within flush interval + commit lag + tail interval. Before a first model exists
the answer is the catalog's popularity ranking with ``fallback: true``, without what the user
already has (known the same way: before a model, every event counts as recent). With a model,
it is the model's popularity ranking plus the events after its cutoff, counted as they come.

Three paths, cheapest first:
* a user with no newer events: the model's precomputed list, filtered (deleted, kind; owned
  items are not in it), on the event loop (a few microseconds, no thread hop); a user the model
  has no events of (unknown, or an empty training row): the popularity ranking, computed
  once per (limit, kind) per model and asset state;
* otherwise, or when the stored list cannot fill the answer: live scoring with fold-in in one
  thread per worker (the ``Recommender`` serialises calls anyway), so the event loop keeps
  answering other requests while a large catalogue is scored.

Answers are encoded to JSON bytes by hand from per-asset fragments cached until the asset
changes: ``json.dumps`` of the dicts cost more than the lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from blobstore import BlobBackend, Digest
from recommender import Event, Model, Recommender, load_model, model_from_bytes, pin_blas_threads

from .catalog import AssetBrief, EventRecord, ModelRecord, RecommenderCatalog
from .config import Config
from .events import EventBuffer
from .recent_events import RecentEvents

log = logging.getLogger(__name__)

MAX_LIMIT = 100
# Fold-in reads at most this many of a user's newest events; beyond that the model is stale
# for them anyway and the next training takes them all.
MAX_RECENT = 1000
# Asset changes are read back this far before the previous read began: a transaction that
# stamped its updated_at earlier but committed later is still picked up. Relative to the read,
# not to the newest change seen: after a bulk import of N assets in one instant, the latter
# would re-read all N on every poll until some other asset changed.
_ASSET_OVERLAP = timedelta(seconds=10)
_GC_THRESHOLDS = (50_000, 20, 100)  # (young, middle, old), see start()


@dataclass(frozen=True, slots=True)
class Ranking:
    items: tuple[tuple[str, float], ...]  # (asset id, score), best first
    model_version: str | None
    fallback: bool


@dataclass(frozen=True, slots=True)
class LoadedModel:
    record: ModelRecord
    recommender: Recommender
    # Events recorded after this are not in the model (details["events_cutoff"]; models from
    # before that key fall back to their newest event time).
    cutoff: datetime | None
    version: str  # str(record.id), once rather than per answer
    # The answer's JSON fragments by the model's item index (as ``_fragments``, without the
    # dict lookups of the asset id: the stored-list path, which yields indices).
    fragments: list[tuple[str, str] | None]
    tail: str  # the end of a non-fallback answer from this model


class RecommenderService:
    def __init__(
        self,
        config: Config,
        catalog: RecommenderCatalog,
        store: BlobBackend,
        buffer: EventBuffer,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._store = store
        self._buffer = buffer
        self._kind_weights = config.recommender_kind_weights
        self.assets: dict[str, AssetBrief] = {}
        # Live (not deleted) assets by their canonical id string: POST /events checks ids
        # here without parsing them or asking the catalog.
        self.live_ids: dict[str, uuid.UUID] = {}
        self._asset_cursor: datetime | None = None  # when the previous asset read began
        self.loaded: LoadedModel | None = None
        self._popularity_of: LoadedModel | None = None  # whose popularity has the recent events
        self._popular: list[tuple[str, float]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="recommender")
        self._refreshing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._tail_task: asyncio.Task[None] | None = None
        self.recent = RecentEvents(catalog, commit_lag=config.recommender_commit_lag)
        # JSON of an item without its score, split around it: asset id -> (head, tail).
        self._fragments: dict[str, tuple[str, str]] = {}
        self._tails: dict[tuple[str | None, bool], str] = {}  # the answer's end, per model
        # Popularity answers for users without any signal, per (limit, kind); cleared when
        # the model or any asset changes.
        self._fallbacks: dict[tuple[int, str | None], bytes] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # Fewer, larger young collections. With the default (700 allocations) a fast ingest,
        # whose buffered events live for seconds and so reach the old generations, ran a full
        # collection over the worker's million-object heap (assets, the model's id maps, the
        # buffer) about once a second: 30 % of the worker's CPU, measured with gc.callbacks;
        # 6 % after this. Process-wide, but this is what makes a worker's heap that large.
        gc.set_threshold(*_GC_THRESHOLDS)
        # Per-request products are too small to gain from BLAS threads (recommender.serving).
        await asyncio.get_running_loop().run_in_executor(self._executor, pin_blas_threads)
        try:
            await self.refresh()
        except Exception:
            log.exception("recommender: first refresh failed; retrying on the poll schedule")
        self._task = asyncio.create_task(self._poll(), name="recommender-poll")
        self._tail_task = asyncio.create_task(self._tail(), name="recommender-tail")

    async def close(self) -> None:
        for task in (self._task, self._tail_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _tail(self) -> None:
        while True:  # the first read at once: the events since the cutoff, or all before a model
            try:
                await self.recent.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("recommender: reading recent events failed: %s", exc)
            await asyncio.sleep(self._config.recommender_tail_interval)

    async def _count_recent_in_popularity(self) -> None:
        """Events newer than the model count in its popularity ranking, each once, every poll
        interval: an asset that became popular since the training, or new since, is recommended
        to users without history before the next training (a model trained on no events at all
        would otherwise answer everyone with nothing). Not every tail interval: each count
        clears the cached popularity answers, and under a fast ingest that cost a third of the
        recommendations' throughput (docs/BENCHMARKS.md)."""
        loaded = self.loaded
        if loaded is None:
            return  # before a model, popularity is the catalog's
        if self._popularity_of is not loaded:  # a new model: all the events after its cutoff
            events = self.recent.everything()
            self._popularity_of = loaded
        else:
            events = self.recent.take_fresh()
        if events:
            await self._in_executor(loaded.recommender.add_popularity, events)
            if self.loaded is loaded:
                self._fallbacks.clear()

    def note_written(self, batch: list[EventRecord], recorded_at: datetime) -> None:
        """This worker's buffer wrote ``batch`` (before it leaves ``pending_for``)."""
        self.recent.note_written(batch, recorded_at)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._config.recommender_poll_interval)
            try:
                await self.refresh()
                await self._count_recent_in_popularity()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("recommender refresh failed: %s", exc)

    async def refresh(self) -> None:
        async with self._refreshing:
            changed = await self._read_asset_changes()
            await self._apply_asset_changes(changed)
            await self._load_newest_model()
            if self.loaded is None:
                ranked = await self._catalog.popularity(self._kind_weights, limit=10 * MAX_LIMIT)
                self._popular = [(str(a), s) for a, s in ranked]

    async def _read_asset_changes(self) -> list[AssetBrief]:
        since = None if self._asset_cursor is None else self._asset_cursor - _ASSET_OVERLAP
        started = datetime.now(UTC)
        changed: list[AssetBrief] = []
        after: uuid.UUID | None = None
        while True:
            page = await self._catalog.assets_changed(since, after)
            changed.extend(page)
            if len(page) < 50_000:
                break
            since, after = page[-1].updated_at, page[-1].id
        self._asset_cursor = started
        return changed

    async def _apply_asset_changes(self, changed: list[AssetBrief]) -> None:
        fresh = [b for b in changed if self.assets.get(str(b.id)) != b]
        for brief in fresh:
            key = str(brief.id)
            self.assets[key] = brief
            self._fragments.pop(key, None)
            if self.loaded is not None:
                index = self.loaded.recommender.model.item_index.get(key)
                if index is not None:
                    self.loaded.fragments[index] = None
            if brief.deleted:
                self.live_ids.pop(key, None)
            else:
                self.live_ids[key] = brief.id
        if fresh:
            self._fallbacks.clear()
        loaded = self.loaded
        if fresh and loaded is not None:
            await self._in_executor(_apply_to, loaded.recommender, fresh)

    async def _load_newest_model(self) -> None:
        record = await self._catalog.latest_model()
        if record is None or (self.loaded is not None and self.loaded.record.id == record.id):
            return
        digest = Digest(record.blob_digest)
        path = self._store.local_path(digest)
        model: Model
        if path is not None and await asyncio.to_thread(path.exists):
            model = await asyncio.to_thread(load_model, path, use_mmap=True)
        else:
            data = b"".join([chunk async for chunk in self._store.open(digest)])
            model = await asyncio.to_thread(model_from_bytes, data)
        await asyncio.to_thread(_prefault_lists, model)
        kinds = {key: b.kind for key, b in self.assets.items()}
        deleted = [key for key, b in self.assets.items() if b.deleted]
        recommender = await asyncio.to_thread(
            partial(Recommender, model, asset_kinds=kinds, deleted=deleted)
        )
        raw_cutoff = record.details.get("events_cutoff")
        cutoff = (
            datetime.fromisoformat(raw_cutoff)
            if isinstance(raw_cutoff, str)
            else model.meta.newest_event_datetime
        )
        # No await from here on: requests see the new model and its cutoff together.
        version = str(record.id)
        self.loaded = LoadedModel(
            record, recommender, cutoff, version, [None] * len(model.item_ids),
            self._answer_end(version, False),
        )  # fmt: skip
        self.recent.set_cutoff(cutoff or datetime.min.replace(tzinfo=UTC))
        self._fallbacks.clear()
        log.info("recommender: now serving model %s (%d users, %d assets)",
                 record.id, model.meta.n_users, model.meta.n_items)  # fmt: skip

    async def _in_executor(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- answers ------------------------------------------------------------------------------

    def _recent(self, user: str) -> list[EventRecord]:
        """The user's events newer than the model: recorded after its cutoff (memory) and
        still buffered here (not yet recorded, so newer than any model)."""
        recent = list(self.recent.for_user(user))
        pending = self._buffer.pending_for(user)
        if pending:
            seen = {e.id for e in recent}
            recent.extend(e for e in pending if e.id not in seen)
        if len(recent) > MAX_RECENT:
            recent.sort(key=lambda e: e.at)
            recent = recent[-MAX_RECENT:]
        return recent

    def answer_now(self, user: str, limit: int, kind: str | None) -> bytes | None:
        """The answer of ``GET /users/{user}/recommendations`` as JSON bytes, when it needs no
        thread and no query (the common case: a user without newer events whose stored list
        fills the answer, or a user the model has no events of once their popularity answer is
        cached); None otherwise, and then ``answer_later`` has it."""
        loaded = self.loaded
        if loaded is None or self.recent.has(user) or self._buffer.has_pending(user):
            return None
        recommender = loaded.recommender
        found = recommender.stored_top(user, limit, kind)
        if found is not None:
            fragments, names = loaded.fragments, recommender.model.item_ids
            pairs = []
            for index, score in zip(*found, strict=True):
                pair = fragments[index]
                if pair is None:
                    pair = fragments[index] = self._fragment(names[index])
                pairs.append((pair, score))
            return _body(pairs, loaded.tail)
        if not recommender.has_history(user):
            return self._fallbacks.get((limit, kind))
        return None

    async def answer_later(self, user: str, limit: int, kind: str | None) -> bytes:
        """The answer where ``answer_now`` has none (called right after it, with no await in
        between, so it sees the same state): before a first model, a user with newer events, a
        stored list that the filters leave short, or a popularity answer not cached yet."""
        loaded = self.loaded  # once: the whole answer comes from one model
        if loaded is None:
            # Before the first model: every event is "recent" (the tail reads from the start,
            # bounded), so what the user already has comes from memory too.
            owned = {str(e.asset) for e in self._recent(user)}
            return self.encode(Ranking(self._popular_items(limit, kind, owned), None, True))
        recent = self._recent(user)
        recommender = loaded.recommender
        if not recent and not recommender.has_history(user):
            # Unknown, or no training row: the popularity answer, computed once per model.
            key = (limit, kind)
            body = self._fallbacks.get(key)
            if body is None:
                result = await self._in_executor(
                    partial(recommender.recommend, user, limit, kind, True, ())
                )
                body = self._encode(result.items, loaded.version, result.fallback)
                if self.loaded is loaded:
                    self._fallbacks[key] = body
            return body
        events = [Event(e.user, str(e.asset), e.kind, e.weight, e.at) for e in recent]
        result = await self._in_executor(
            partial(recommender.recommend, user, limit, kind, True, events)
        )
        return self._encode(result.items, loaded.version, result.fallback)

    def encode(self, ranking: Ranking) -> bytes:
        return self._encode(ranking.items, ranking.model_version, ranking.fallback)

    def _encode(
        self, items: tuple[tuple[str, float], ...], version: str | None, fallback: bool
    ) -> bytes:
        """``{"items": [{asset, score, name, kind}...], "model_version", "fallback"}`` as
        bytes, from cached per-asset fragments."""
        pairs = [(self._fragment(asset), score) for asset, score in items]
        return _body(pairs, self._answer_end(version, fallback))

    def _fragment(self, asset: str) -> tuple[str, str]:
        """An item's JSON without its score, split around it (cached until the asset
        changes)."""
        pair = self._fragments.get(asset)
        if pair is None:
            brief = self.assets.get(asset)
            head = json.dumps(asset)
            name = json.dumps(brief.name if brief else None)
            kind = json.dumps(brief.kind if brief else None)
            pair = (f'{{"asset":{head},"score":', f',"name":{name},"kind":{kind}}}')
            if len(self._fragments) < 1_000_000:
                self._fragments[asset] = pair
        return pair

    def _answer_end(self, version: str | None, fallback: bool) -> str:
        tail = self._tails.get((version, fallback))
        if tail is None:
            flag = "true" if fallback else "false"
            tail = self._tails[(version, fallback)] = (
                f'],"model_version":{json.dumps(version)},"fallback":{flag}}}'
            )
        return tail

    async def similar(self, asset: uuid.UUID, limit: int, kind: str | None) -> Ranking | None:
        """None when there is no such (live) asset."""
        key = str(asset)
        brief = self.assets.get(key)
        if brief is None:
            if not await self._catalog.live_assets([asset]):
                return None
        elif brief.deleted:
            return None
        loaded = self.loaded
        if loaded is None:
            return Ranking(self._popular_items(limit, kind, {key}), None, True)
        result = await self._in_executor(partial(loaded.recommender.similar, key, limit, kind))
        return Ranking(result.items, str(loaded.record.id), result.fallback)

    def _popular_items(
        self, limit: int, kind: str | None, exclude: set[str]
    ) -> tuple[tuple[str, float], ...]:
        items: list[tuple[str, float]] = []
        for asset, score in self._popular:
            brief = self.assets.get(asset)
            if asset in exclude or (brief is not None and brief.deleted):
                continue
            if kind is not None and (brief is None or brief.kind != kind):
                continue
            items.append((asset, score))
            if len(items) == limit:
                break
        return tuple(items)

    async def stats(self) -> dict[str, Any]:
        loaded = self.loaded
        body: dict[str, Any] = {
            "model_version": None,
            "trained_at": None,
            "users": 0,
            "assets": 0,
            "events": 0,
            "evaluation": None,
            "catalog_events": await self._catalog.event_count(),
            "buffered_events": len(self._buffer),
            "dropped_events": self._buffer.dropped,
        }
        if loaded is not None:
            stats = await self._in_executor(loaded.recommender.stats)
            details = loaded.record.details
            body |= {
                "model_version": str(loaded.record.id),
                "trained_at": loaded.record.trained_at.isoformat(),
                "users": stats["users"],
                "assets": stats["assets"],
                "events": stats["events"],
                "factors": stats["factors"],
                "model_blob": loaded.record.blob_digest,
                "training_seconds": details.get("training_seconds"),
                "evaluation": details.get("evaluation"),
            }
        return body


def _body(pairs: list[tuple[tuple[str, str], float]], end: str) -> bytes:
    """An answer's JSON: each item's fragments around its score, then ``end``."""
    parts = [f"{head}{score!r}{tail}" for (head, tail), score in pairs]  # repr(float) is JSON's
    return f'{{"items":[{",".join(parts)}{end}'.encode()


def _prefault_lists(model: Model) -> None:
    """Touch every page of the memory-mapped precomputed lists before serving from them.

    Otherwise each user's first request takes page faults (the file is in the page cache but
    not yet mapped into this process), a few microseconds each in a VM, on the event loop;
    at 1M users that lasts for minutes of traffic. Here it is one pass in the loading thread,
    in slices so that the loop gets the GIL back in between."""
    for array in (model.top_items, model.top_scores):
        if array is None or array.ndim != 2 or not array.shape[1]:
            continue
        for start in range(0, array.shape[0], 1 << 16):
            array[start : start + (1 << 16), 0].sum()  # the first entry of each row: every page


def _apply_to(recommender: Recommender, changed: list[AssetBrief]) -> None:
    recommender.update_asset_kinds({str(b.id): b.kind for b in changed})
    recommender.mark_deleted([str(b.id) for b in changed if b.deleted])
    recommender.unmark_deleted([str(b.id) for b in changed if not b.deleted])
