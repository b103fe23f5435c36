"""Prometheus metrics, aggregated across ``--workers`` processes.

prometheus-client's multiprocess mode keeps each process's values in files under
``PROMETHEUS_MULTIPROC_DIR`` and sums them when scraped. It decides the mode when it is first
imported, so ``origin serve --workers N`` sets that variable before it spawns the workers
(``origin.server.prepare_metrics_dir``).

Each update of a multiprocess value takes a lock and writes an mmap; per request that cost a
third of the CPU of a 4 KiB GET. So requests only count into plain dictionaries here, and
``Batch.flush`` moves the totals into prometheus-client once a second and before a scrape:
what a scrape sees from other workers is at most a second old.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections import defaultdict

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CACHE_HITS = Counter("origin_cache_hits_total", "Reads served by a tier", ["tier"])
CACHE_MISSES = Counter("origin_cache_misses_total", "Reads a tier could not serve", ["tier"])
CACHE_BYTES = Counter("origin_cache_bytes_total", "Bytes served by a tier", ["tier"])
EVICTIONS = Counter("origin_cache_evictions_total", "Blobs evicted from a tier", ["tier"])
PROMOTIONS = Counter("origin_cache_promotions_total", "Blobs admitted into a tier", ["tier"])
FLIGHT_JOINS = Counter(
    "origin_singleflight_waits_total", "Reads that joined a fetch already under way"
)
DURABLE_READS = Counter("origin_durable_reads_total", "Reads that reached the durable store")
# Every worker of a node sees the same cache directory: the largest live value, not the sum.
CACHE_SIZE = Gauge(
    "origin_cache_size_bytes", "Bytes a tier holds (the disk cache, at its last sweep)", ["tier"],
    multiprocess_mode="livemax",
)  # fmt: skip
CACHE_CAPACITY = Gauge(
    "origin_cache_capacity_bytes",
    "Bytes a tier may hold now (the disk cache: its bound, or less on a fuller disk)",
    ["tier"], multiprocess_mode="livemax",
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "origin_request_duration_seconds",
    "Time until the handler answered (a sendfile body is sent after that)",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)


_BOUNDS = REQUEST_SECONDS._upper_bounds  # the buckets above, with +Inf appended


class _Latencies:
    """One label set's observations since the last flush, bucketed as Histogram does."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(_BOUNDS)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(_BOUNDS, seconds)] += 1
        self.total += seconds


class Batch:
    """Counts in plain dictionaries; ``flush`` hands them to prometheus-client."""

    def __init__(self) -> None:
        self._counts: defaultdict[tuple[Counter, tuple[str, ...]], float] = defaultdict(float)
        self._latencies: dict[tuple[str, str, str], _Latencies] = {}

    def count(self, metric: Counter, labels: tuple[str, ...], amount: float = 1) -> None:
        self._counts[(metric, labels)] += amount

    def observe(self, labels: tuple[str, str, str], seconds: float) -> None:
        latencies = self._latencies.get(labels)
        if latencies is None:
            latencies = self._latencies[labels] = _Latencies()
        latencies.observe(seconds)

    def flush(self) -> None:
        counts, self._counts = self._counts, defaultdict(float)
        latencies, self._latencies = self._latencies, {}
        for (metric, labels), amount in counts.items():
            (metric.labels(*labels) if labels else metric).inc(amount)
        for labels, batch in latencies.items():
            # Histogram has no bulk observe; these are the two values observe() updates.
            child = REQUEST_SECONDS.labels(*labels)
            child._sum.inc(batch.total)
            for value, n in zip(child._buckets, batch.buckets, strict=True):
                if n:
                    value.inc(n)


BATCH = Batch()


class PrometheusEvents:
    """``cache.CacheEvents`` as Prometheus counters."""

    def hit(self, tier: str, nbytes: int) -> None:
        BATCH.count(CACHE_HITS, (tier,))
        BATCH.count(CACHE_BYTES, (tier,), nbytes)

    def miss(self, tier: str) -> None:
        BATCH.count(CACHE_MISSES, (tier,))

    def promoted(self, tier: str) -> None:
        BATCH.count(PROMOTIONS, (tier,))

    def evicted(self, tier: str, count: int = 1) -> None:
        BATCH.count(EVICTIONS, (tier,), count)

    def flight_joined(self) -> None:
        BATCH.count(FLIGHT_JOINS, ())

    def durable_read(self) -> None:
        BATCH.count(DURABLE_READS, ())

    def sized(self, tier: str, used: int, capacity: int) -> None:
        # A sweep's result, every few seconds: set at once, not batched.
        CACHE_SIZE.labels(tier).set(used)
        CACHE_CAPACITY.labels(tier).set(capacity)


def record_request(request: web.Request, status: int, start: float) -> None:
    # The route pattern, not the path: one series per route, not per digest.
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    BATCH.observe((name, request.method, str(status)), time.perf_counter() - start)


async def flush_periodically(interval: float = 1.0) -> None:
    try:
        while True:
            await asyncio.sleep(interval)
            BATCH.flush()
    finally:
        BATCH.flush()


async def metrics_handler(request: web.Request) -> web.Response:
    BATCH.flush()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
