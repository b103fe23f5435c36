"""The application factory: wiring of config, store, tokens, middleware and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict

from aiohttp import web
from aiohttp.typedefs import Handler

from blobstore import NEVER_STORED, DiskBackend, SftpBackend
from cache import CacheEvents, CacheTier, DiskCache, MemoryTier, RedisTier, TieredStore

from . import asset_routes, blob_routes, recommend_routes
from .appkeys import CATALOG, CONFIG, IN_FLIGHT, STORE, TIERS, TOKENS
from .catalog import Catalog, check_schema, current_revision, upgrade
from .config import Config
from .inflight import InFlight
from .metrics import PrometheusEvents, flush_periodically, metrics_handler, record_request
from .problems import Problem, for_exception, from_http_exception
from .tokens import Tokens

log = logging.getLogger(__name__)


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Times every request and answers every error as problem+json.

    One middleware rather than two: each layer costs a coroutine per request, which shows on
    the 4 KiB GET path.
    """
    start = time.perf_counter()
    in_flight = request.app[IN_FLIGHT]
    in_flight.begin()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            record_request(request, exc.status, start)
            raise
        response = await _problem_response(request, from_http_exception(exc, request))
    except Exception as exc:
        if _client_gone(request):
            log.debug("%s %s: the client left (%r)", request.method, request.path, exc)
            response = _dropped(499)
        elif request.writer.output_size:
            # The status line and part of the body are out: a problem response written now
            # would land inside the body, and the client would wait for the rest. Dropping
            # the connection makes it a failed download.
            log.error("%s %s failed after its response began: %r",
                      request.method, request.path, exc)  # fmt: skip
            assert request.transport is not None
            request.transport.close()
            response = _dropped(500)
        else:
            response = await _problem_response(request, for_exception(exc, request))
    finally:
        in_flight.end()
    if in_flight.draining:
        response.force_close()
    record_request(request, response.status, start)
    return response


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _dropped(status: int) -> web.Response:
    """What is handed back for a connection that is closed: aiohttp's write of it fails as a
    lost connection, which it takes quietly (access log only). Raising instead has aiohttp log
    a traceback for every client that leaves mid-request. 499 is nginx's "client closed"."""
    return web.Response(status=status)


async def _problem_response(request: web.Request, problem: Problem) -> web.Response:
    response = problem.response()
    if not await _drain_body(request, request.app[CONFIG].drain_limit):
        response.force_close()
    return response


async def _drain_body(request: web.Request, limit: int) -> bool:
    """Read and discard what is left of a rejected request's body, up to ``limit`` bytes.

    Godot's HTTPClient sends the whole body before it reads a response and reports a closed
    connection as a failure, so an error is only visible to it once the body has been taken.
    Returns False when the body was not read to its end (the connection must then close).
    """
    content = request.content
    if not request.body_exists or content.at_eof():
        return True
    if request.content_length is not None and request.content_length > limit:
        return False
    read = 0
    try:
        while chunk := await content.readany():
            read += len(chunk)
            if read > limit:
                return False
    except Exception:
        return False
    return content.at_eof()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while the durable store answers; cache tiers that are down make it "degraded"."""
    tiered = request.app[TIERS]
    tiers = [asdict(report) for report in await tiered.health()]
    store = tiered.durable
    try:
        # SFTP: a temp file made and removed, and the server's statvfs: that it takes writes.
        await (store.ready() if isinstance(store, SftpBackend) else store.exists(NEVER_STORED))
        durable: dict[str, object] = {"name": "durable", "healthy": True}
    except Exception as exc:
        durable = {"name": "durable", "healthy": False, "last_error": str(exc)}
    all_ok = durable["healthy"] and all(t["healthy"] for t in tiers)
    # Without its durable store a node with a local cache still serves what it holds.
    serving = durable["healthy"] or tiered.local_cache is not None
    status = "ready" if all_ok else "degraded" if serving else "unavailable"
    body = {"status": status, "tiers": [*tiers, durable]}
    return web.json_response(body, status=503 if status == "unavailable" else 200)


async def open_catalog(config: Config, catalog: Catalog) -> None:
    """Check the schema; the embedded default creates its database on first start.

    A database that has a schema at another revision, or any external database without one,
    is left to the operator: ``origin db upgrade`` (SchemaMismatch says so).
    """
    if config.database_url is None:
        await asyncio.to_thread(config.data_dir.mkdir, parents=True, exist_ok=True)
        if await current_revision(catalog.engine) is None:
            await upgrade(catalog.engine)
    await check_schema(catalog.engine)


DurableStore = DiskBackend | SftpBackend


def build_durable(config: Config) -> DurableStore:
    """The store that keeps every blob: the local disk by default, the SFTP bulk store with
    ``sftp_url``."""
    if config.sftp_url:
        assert config.sftp_key is not None  # validated
        return SftpBackend.from_url(
            config.sftp_url,
            client_keys=[config.sftp_key],
            known_hosts=config.sftp_known_hosts,
            pool_size=config.sftp_pool,
            chunk_size=config.chunk_size,
        )
    return DiskBackend(config.data_dir, chunk_size=config.chunk_size, direct_io=config.direct_io)


@contextlib.asynccontextmanager
async def durable_store(config: Config) -> AsyncIterator[DurableStore]:
    """The durable store alone, started, for the commands that work on it beside running
    servers (``origin verify``, ``origin recommender train``): none of the cache tiers, so no
    second disk cache maintaining a node's cache directory, no Redis connection, no memory."""
    durable = build_durable(config)
    await _start_durable(durable)
    try:
        yield durable
    finally:
        if isinstance(durable, SftpBackend):
            await durable.close()


def build_store(config: Config, events: CacheEvents) -> TieredStore:
    """Memory tier (and Redis when configured) over the durable store; with ``sftp_url`` the
    local disk becomes the durable store's LRU cache."""
    durable = build_durable(config)
    local: DiskCache | None = None
    if isinstance(durable, SftpBackend):
        local = DiskCache(
            config.data_dir / "cache",
            config.disk_cache_size,
            chunk_size=config.chunk_size,
            direct_io=config.direct_io,
            events=events,
        )
    tiers: list[CacheTier] = []
    if config.memory_cache_size > 0 and config.memory_max_object > 0:
        tiers.append(MemoryTier(config.memory_cache_size, config.memory_max_object, events))
    if config.redis_url:
        tiers.append(
            RedisTier(
                config.redis_url,
                max_object=config.redis_max_object,
                prefix=config.redis_prefix,
                timeout=config.redis_timeout,
            )
        )
    return TieredStore(
        tiers, durable, local_cache=local, events=events, retry_cap=config.tier_retry_max
    )


async def _start_durable(durable: DurableStore) -> None:
    swept = await durable.start()
    log.info("durable store ready (%d stale temp files swept)", swept)


async def start_store(tiered: TieredStore) -> None:
    durable = tiered.durable
    if isinstance(durable, DurableStore):
        await _start_durable(durable)
    if tiered.local_cache is not None:
        await tiered.local_cache.start()


async def stop_store(tiered: TieredStore) -> None:
    await tiered.drain()
    if tiered.local_cache is not None:
        await tiered.local_cache.close()
    if isinstance(tiered.durable, SftpBackend):
        await tiered.durable.close()
    for tier in tiered.tiers:
        if isinstance(tier, RedisTier):
            await tier.close()


def create_app(config: Config) -> web.Application:
    # aiohttp's client_max_size (1 MiB) is not what bounds a body here: JSON routes read
    # through json_body.read_json, each with its own limit, and blob bodies stream.
    app = web.Application(middlewares=[request_middleware])
    app[CONFIG] = config
    app[IN_FLIGHT] = InFlight()
    tiered = build_store(config, PrometheusEvents())
    app[TIERS] = tiered
    app[STORE] = tiered
    catalog = Catalog.connect(config.catalog_url)
    app[CATALOG] = catalog
    app[TOKENS] = Tokens(catalog, config.admin_token)

    async def start(app: web.Application) -> None:
        await open_catalog(config, catalog)
        await start_store(tiered)

    async def flush_metrics(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(flush_periodically())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(app: web.Application) -> None:
        await catalog.close()
        await stop_store(tiered)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.cleanup_ctx.append(flush_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    blob_routes.add_routes(app)
    asset_routes.add_routes(app)
    recommend_routes.setup(app)  # after the catalog's startup hook: it polls the catalog
    return app
