"""Prometheus metrics, aggregated across ``--workers`` processes.

prometheus-client's multiprocess mode keeps each process's values in files under
``PROMETHEUS_MULTIPROC_DIR`` and sums them when scraped. It decides the mode when it is first
imported, so ``origin serve`` sets that variable before any worker imports this module
(``origin.server.prepare_metrics_dir``), and ``create_app`` imports this module lazily.
"""

from __future__ import annotations

import os
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
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
REQUEST_SECONDS = Histogram(
    "origin_request_duration_seconds",
    "Time until the handler answered (a sendfile body is sent after that)",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)


class PrometheusEvents:
    """``cache.CacheEvents`` as Prometheus counters."""

    def hit(self, tier: str, nbytes: int) -> None:
        CACHE_HITS.labels(tier).inc()
        CACHE_BYTES.labels(tier).inc(nbytes)

    def miss(self, tier: str) -> None:
        CACHE_MISSES.labels(tier).inc()

    def promoted(self, tier: str) -> None:
        PROMOTIONS.labels(tier).inc()

    def evicted(self, tier: str, count: int = 1) -> None:
        EVICTIONS.labels(tier).inc(count)

    def flight_joined(self) -> None:
        FLIGHT_JOINS.inc()

    def durable_read(self) -> None:
        DURABLE_READS.inc()


@web.middleware
async def latency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        # The route pattern, not the path: one series per route, not per digest.
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        REQUEST_SECONDS.labels(name, request.method, str(status)).observe(
            time.perf_counter() - start
        )


async def metrics_handler(request: web.Request) -> web.Response:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
