"""Training runs: one at a time across all nodes, in a separate process, model into the store.

A run: take the ``recommender-train`` lease in the catalog (an upsert that only wins when the
lease is free, expired or already ours, so it works on CockroachDB, where there are no advisory
locks), renew it every third of ``recommender_lease_ttl`` while working, and release it at the
end. A trainer that dies stops renewing and its lease expires; the next run takes it over.

The work (read every event, build the matrix, fit ALS, a quick held-out evaluation, write the
model file) runs in a fresh process started with the ``spawn`` method, so a worker's event loop
keeps serving and the process's memory is returned when it exits. The parent streams the file
into the origin's own blob store (``put``: hashed, verified, atomic), records the blob and a
row in ``models``; every worker's poll then swaps to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blobstore import BlobBackend, Expectation
from recommender import (
    ALSConfig,
    ColumnsBuilder,
    EventColumns,
    InteractionConfig,
    build_from_columns,
    evaluate_columns,
    precompute_top,
    save_model,
    train,
)

from .catalog import Catalog, ModelRecord, RecommenderCatalog, create_engine
from .config import Config

log = logging.getLogger(__name__)

LEASE = "recommender-train"
MODEL_CONTENT_TYPE = "application/vnd.origin.recommender-model"
# A held-out evaluation needs enough events to mean anything; below this it is skipped.
_MIN_EVENTS_TO_EVALUATE = 200


class TrainerBusy(RuntimeError):
    """Another trainer holds the lease."""

    def __init__(self, holder: str | None, expires_at: datetime | None) -> None:
        when = f" until {expires_at.isoformat()}" if expires_at else ""
        super().__init__(f"a training run is already under way ({holder or 'unknown'}{when})")
        self.holder = holder
        self.expires_at = expires_at


@dataclass(frozen=True)
class TrainingJob:
    """Everything the training process needs, picklable."""

    catalog_url: str
    kind_weights: dict[str, float]
    half_life: float | None
    als: dict[str, Any]
    out: str
    evaluate: bool = True
    # Train on the events recorded at or before this time (ISO 8601); serving folds in the
    # rest. None: every event.
    recorded_upto: str | None = None
    precompute: int = 0  # each user's top N stored with the model


def interaction_config(config: Config) -> InteractionConfig:
    half_life = config.recommender_half_life or None
    return InteractionConfig(config.recommender_kind_weights, half_life)


def als_config(config: Config) -> ALSConfig:
    return ALSConfig(
        factors=config.recommender_factors,
        regularization=config.recommender_regularization,
        alpha=config.recommender_alpha,
        iterations=config.recommender_iterations,
    )


async def read_columns(
    catalog: RecommenderCatalog, recorded_upto: datetime | None = None
) -> EventColumns:
    """Every event in the catalog (recorded up to ``recorded_upto``), column-wise (ids
    numbered in order of appearance)."""
    columns = ColumnsBuilder()
    async for page in catalog.event_pages(recorded_upto=recorded_upto):
        for e in page:
            columns.add(e.user, str(e.asset), e.kind, e.weight, e.at.timestamp())
    return columns.build()


async def _read_from(url: str, recorded_upto: datetime | None) -> EventColumns:
    engine = create_engine(url)
    try:
        return await read_columns(RecommenderCatalog(engine), recorded_upto)
    finally:
        await engine.dispose()


def run_job(job: TrainingJob) -> dict[str, Any]:
    """The training process's entry point; returns the details recorded with the model."""
    started = time.perf_counter()
    upto = None if job.recorded_upto is None else datetime.fromisoformat(job.recorded_upto)
    columns = asyncio.run(_read_from(job.catalog_url, upto))
    read_seconds = time.perf_counter() - started
    interactions_config = InteractionConfig(job.kind_weights, job.half_life)
    als = ALSConfig.from_dict(job.als)
    model = train(build_from_columns(columns, interactions_config), als)
    precompute_seconds = 0.0
    if job.precompute > 0:
        model, stats = precompute_top(model, job.precompute)
        precompute_seconds = stats.seconds
    save_model(model, job.out)
    meta = model.meta
    details: dict[str, Any] = {
        "users": meta.n_users,
        "assets": meta.n_items,
        "events": meta.n_events,
        "nnz": meta.nnz,
        "factors": model.factors,
        "newest_event_at": meta.newest_event_at,
        "read_seconds": round(read_seconds, 3),
        "training_seconds": round(meta.training_seconds, 3),
        "precompute": model.top_k,
        "precompute_seconds": round(precompute_seconds, 3),
        "events_cutoff": job.recorded_upto,
        "evaluation": None,
    }
    if job.evaluate and len(columns) >= _MIN_EVENTS_TO_EVALUATE:
        try:
            evaluation = evaluate_columns(columns, interactions_config, als, max_users=2_000)
        except ValueError as exc:  # e.g. no held-out users: the model is still good to serve
            details["evaluation"] = {"error": str(exc)}
            return details
        details["evaluation"] = {
            "split": evaluation.method,
            "k": evaluation.k,
            "cold_users": evaluation.cold_users,  # ranked by popularity in both rows
            "rows": [
                {"model": r.name, "users": r.users, "precision": r.precision,
                 "recall": r.recall, "ndcg": r.ndcg, "coverage": r.coverage}
                for r in evaluation.rows
            ],
        }  # fmt: skip
    return details


def _temp_model_file(directory: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix="model-", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(name)


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:  # noqa: ASYNC230 - each read below runs in a thread
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk


async def _in_process(job: TrainingJob) -> dict[str, Any]:
    """``run_job`` in a fresh spawned process; killed if the run is cancelled (shutdown)."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        details = await asyncio.get_running_loop().run_in_executor(pool, run_job, job)
    except BaseException:
        for proc in list((pool._processes or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    await asyncio.to_thread(pool.shutdown)
    return details


async def publish_model(
    catalog: Catalog, store: BlobBackend, path: Path, details: dict[str, Any]
) -> ModelRecord:
    """Store a model file as a blob and record it in ``models``: every worker's poll then
    swaps to it. ``details`` should carry ``events_cutoff`` (ISO time; serving folds in the
    events recorded after it)."""
    result = await store.put(_file_chunks(path), Expectation(), MODEL_CONTENT_TYPE)
    await catalog.record_blob(result.info)
    return await RecommenderCatalog(catalog.engine).record_model(
        str(result.info.digest), datetime.now(UTC), details
    )


class Trainer:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        store: BlobBackend,
        *,
        before: Callable[[], Awaitable[None]] | None = None,
        after: Callable[[ModelRecord], Awaitable[None]] | None = None,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._rcatalog = RecommenderCatalog(catalog.engine)
        self._store = store
        self._before = before  # e.g. flush this worker's buffered events
        self._after = after  # e.g. load the new model here without waiting for the poll
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[ModelRecord] | None = None
        # Requests at once on this worker: the lease is "already ours" to all but the first,
        # so without this each started a run, and the first to end released the lease.
        self._starting = asyncio.Lock()
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> asyncio.Task[ModelRecord]:
        """Take the lease (TrainerBusy if someone has it) and train in the background."""
        ttl = self._config.recommender_lease_ttl
        async with self._starting:
            if self.running or not await self._rcatalog.acquire_lease(LEASE, self.holder, ttl):
                holder = await self._rcatalog.lease_holder(LEASE)
                raise TrainerBusy(*(holder or (None, None)))
            self._task = asyncio.create_task(self._run(), name="recommender-train")
            return self._task

    async def lease_holder(self) -> str | None:
        """Who is training now, on any node (None: nobody)."""
        lease = await self._rcatalog.lease_holder(LEASE)
        return None if lease is None else lease[0]

    async def train(self) -> ModelRecord:
        return await (await self.start())

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _renew(self) -> None:
        ttl = self._config.recommender_lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                if not await self._rcatalog.renew_lease(LEASE, self.holder, ttl):
                    log.error("recommender: lost the training lease")
            except Exception as exc:
                log.warning("recommender: renewing the training lease failed: %s", exc)

    async def _run(self) -> ModelRecord:
        renew = asyncio.create_task(self._renew())
        out = await asyncio.to_thread(_temp_model_file, self._config.data_dir)
        try:
            if self._before is not None:
                await self._before()
            config = self._config
            # What other workers had buffered when the run was asked for reaches the catalog
            # within a flush interval: "train now" includes it.
            await asyncio.sleep(config.recommender_flush_interval)
            # Everything recorded up to now is in the run: a write stamped before the cutoff
            # commits within the commit lag, so wait that long before reading. Serving folds in
            # exactly the events recorded after the cutoff.
            cutoff = datetime.now(UTC)
            await asyncio.sleep(config.recommender_commit_lag)
            interactions = interaction_config(config)
            job = TrainingJob(
                catalog_url=config.catalog_url,
                kind_weights=dict(interactions.kind_weights),
                half_life=interactions.half_life_seconds,
                als=als_config(config).to_dict(),
                out=str(out),
                recorded_upto=cutoff.isoformat(),
                precompute=config.recommender_precompute,
            )
            started = datetime.now(UTC)
            details = await _in_process(job)
            details["started_at"] = started.isoformat()
            record = await publish_model(self._catalog, self._store, out, details)
            log.info("recommender: trained model %s (%s users, %s assets, %s events)",
                     record.id, details["users"], details["assets"], details["events"])  # fmt: skip
            self.last_error = None
            if self._after is not None:
                await self._after(record)
            return record
        except Exception as exc:
            self.last_error = str(exc)
            log.exception("recommender: training failed")
            raise
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            with contextlib.suppress(Exception):
                await self._rcatalog.release_lease(LEASE, self.holder)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(out.unlink)

    async def schedule(self) -> None:
        """Train every ``recommender_train_interval`` seconds (run as a task in each worker).

        Every worker tries; the lease picks one, and a run is skipped when another node trained
        within the last half interval, so workers that wake up just after a run do not repeat it.
        """
        interval = self._config.recommender_train_interval
        while True:
            await asyncio.sleep(interval)
            try:
                latest = await self._rcatalog.latest_model()
                age = None if latest is None else (datetime.now(UTC) - latest.trained_at)
                if age is not None and age.total_seconds() < interval / 2:
                    continue
                await self.train()
            except TrainerBusy:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("recommender: scheduled training failed: %s", exc)
