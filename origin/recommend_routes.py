"""The recommender rows of the HTTP contract, and the wiring of its per-worker parts.

``POST /events`` takes ``{"events": [{user, asset, kind, weight?, at?}, ...]}``, checks every
item, and either buffers all of them (202) or none (422 with one error per bad item).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from . import problems
from .appkeys import CATALOG, CONFIG, STORE, TOKENS
from .auth import authenticate, require
from .catalog import EventRecord, RecommenderCatalog
from .downloads import Downloads
from .events import EventBuffer
from .expect import expecting
from .json_body import MAX_JSON_BODY, read_json
from .problems import Problem
from .query import page_limit
from .recommendations import MAX_LIMIT, RecommenderService
from .trainer import Trainer, TrainerBusy

BUFFER = web.AppKey("event_buffer", EventBuffer)
DOWNLOADS = web.AppKey("downloads", Downloads)
RECOMMENDER = web.AppKey("recommender", RecommenderService)
TRAINER = web.AppKey("trainer", Trainer)

_EVENT_FIELDS = frozenset({"user", "asset", "kind", "weight", "at"})
_MAX_USER = 255
_MAX_WEIGHT = 1e6
# Clocks differ between clients and us; an event further in the future is a client bug.
_FUTURE_SKEW = timedelta(minutes=5)
_BYTES_PER_EVENT = 512


# -- download events from other routes ----------------------------------------------------


async def note_content_download(request: web.Request, asset_id: uuid.UUID) -> None:
    """``GET /assets/{id}/content`` with a token: a download by the token's subject. A bad
    token is a 401 here (the client asked to be attributed), unlike on blob reads."""
    token = await authenticate(request)
    if token is not None:
        request.app[DOWNLOADS].record(token.subject, asset_id)


def note_blob_download(request: web.Request, authorization: str, digest: str) -> None:
    request.app[DOWNLOADS].blob_get(authorization, digest)


# -- POST /events -------------------------------------------------------------------------


def _check_item(
    index: int, item: Any, kinds: dict[str, float], now: datetime
) -> tuple[list[dict[str, Any]], tuple[str, uuid.UUID, str, float, datetime] | None]:
    errors: list[dict[str, Any]] = []

    def error(field: str, detail: str) -> None:
        errors.append({"index": index, "field": field, "detail": detail})

    if not isinstance(item, dict):
        error("", "each event must be a JSON object")
        return errors, None
    for key in sorted(set(item) - _EVENT_FIELDS):
        error(key, "unknown field")
    user = item.get("user")
    if not isinstance(user, str) or not 0 < len(user) <= _MAX_USER or "\x00" in user:
        error("user", f"required: a string of 1 to {_MAX_USER} characters")
    asset: uuid.UUID | None = None
    with contextlib.suppress(ValueError):
        asset = uuid.UUID(item["asset"]) if isinstance(item.get("asset"), str) else None
    if asset is None:
        error("asset", "required: an asset id")
    kind = item.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        error("kind", f"required: one of {sorted(kinds)}")
    weight = item.get("weight", 1.0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not 0 < weight <= _MAX_WEIGHT  # false for NaN; no float() of a huge int
    ):
        error("weight", f"must be a number in (0, {_MAX_WEIGHT:g}]")
    at: datetime | None = now
    if "at" in item:
        at = _utc(item["at"])
        if at is None:
            error("at", "must be an RFC 3339 time with a UTC offset, e.g. 2025-01-01T12:00:00Z")
        elif at > now + _FUTURE_SKEW:
            error("at", "lies in the future")
    if errors:
        return errors, None
    assert isinstance(user, str)
    assert isinstance(kind, str)
    assert asset is not None
    assert at is not None
    return errors, (user, asset, kind, float(weight), at)


def _utc(raw: object) -> datetime | None:
    """An ISO 8601 time with an offset, in UTC; None for anything else, and for a time whose
    UTC falls outside the years 1 to 9999 (0001-01-01T00:30+01:00)."""
    if not isinstance(raw, str):
        return None
    try:
        at = datetime.fromisoformat(raw)
        return at.astimezone(UTC) if at.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


_Checked = tuple[str, uuid.UUID, str, float, datetime]


def _check_fast(
    item: Any, kinds: dict[str, float], live: dict[str, uuid.UUID], now: datetime
) -> _Checked | None:
    """The common valid event in a few dict lookups: the asset id is looked up in this
    worker's map of live assets (no UUID parsing, no query). None: not sure, let
    ``_check_item`` decide (and explain)."""
    if type(item) is not dict or not item.keys() <= _EVENT_FIELDS:
        return None
    user, raw_asset, kind = item.get("user"), item.get("asset"), item.get("kind")
    if (
        type(user) is not str
        or not 0 < len(user) <= _MAX_USER
        or "\x00" in user
        or type(raw_asset) is not str
        or type(kind) is not str
        or kind not in kinds
    ):
        return None
    asset = live.get(raw_asset)
    if asset is None:
        return None
    weight = item.get("weight", 1.0)
    if type(weight) is int and 0 < weight <= _MAX_WEIGHT:
        weight = float(weight)
    if type(weight) is not float or not 0 < weight <= _MAX_WEIGHT:  # NaN fails too
        return None
    if "at" not in item:
        return user, asset, kind, weight, now
    at = _utc(item["at"])
    if at is None or at > now + _FUTURE_SKEW:
        return None
    return user, asset, kind, weight, at


def _event_ids(count: int, *, time_ordered: bool) -> list[uuid.UUID]:
    """Event ids from one read of the OS's random source instead of one read each.

    ``time_ordered``: UUIDv7 layout (RFC 9562: 48-bit Unix milliseconds, then random bits), so
    new rows land at the end of the primary-key index instead of on a random page of it. On
    SQLite with 20M events that halves the time of a 2,000-row INSERT (each random row dirties
    its own index page, which the WAL then writes). Not on CockroachDB, where sequential keys
    send every insert to one range (its docs: use random UUIDs)."""
    raw = os.urandom(16 * count)
    if not time_ordered:
        return [uuid.UUID(bytes=raw[i : i + 16], version=4) for i in range(0, 16 * count, 16)]
    head = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76
    ids = []
    for i in range(0, 16 * count, 16):
        rand = int.from_bytes(raw[i : i + 16])
        value = head | (rand >> 52 & 0xFFF) << 64 | 0b10 << 62 | (rand & (1 << 62) - 1)
        ids.append(uuid.UUID(int=value))
    return ids


async def post_events(request: web.Request) -> web.Response:
    token = await require(request, "write")
    config = request.app[CONFIG]
    limit = config.recommender_max_batch
    doc = await read_json(request, max(MAX_JSON_BODY, limit * _BYTES_PER_EVENT))
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise problems.bad_request("bad-json", 'expected {"events": [{"user": ..., ...}, ...]}')
    items: list[Any] = doc["events"]
    if len(items) > limit:
        raise problems.bad_request("batch-too-large", f"at most {limit} events per request")
    kinds = config.recommender_kind_weights
    now = datetime.now(UTC)
    errors: list[dict[str, Any]] = []
    checked: list[tuple[int, _Checked]] = []
    live = request.app[RECOMMENDER].live_ids
    for index, item in enumerate(items):
        value = _check_fast(item, kinds, live, now)
        if value is None:
            item_errors, value = _check_item(index, item, kinds, now)
            errors.extend(item_errors)
        if value is not None:
            checked.append((index, value))
    if not token.allows("admin"):
        others = [i for i, v in checked if v[0] != token.subject]
        if others:
            raise Problem(
                403, "forbidden", "Not your events",
                f"a token of {token.subject!r} may only post that user's events "
                "(tokens with the admin scope post for anyone)",
                extra={"items": others[:100]},
            )  # fmt: skip
    # Ids the fast path took are live; others are looked up in the catalog (an asset created
    # since this worker's last poll, or an id written in another form).
    unknown_ids = {a for a in {v[1] for _, v in checked} if str(a) not in live}
    if unknown_ids:
        unknown_ids -= await RecommenderCatalog(request.app[CATALOG].engine).live_assets(
            unknown_ids
        )
    for index, value in checked:
        if value[1] in unknown_ids:
            errors.append({"index": index, "field": "asset", "detail": "no such asset"})
    if errors:
        errors.sort(key=lambda e: (e["index"], e["field"]))
        raise Problem(
            422, "invalid-events", "Invalid events",
            f"{len({e['index'] for e in errors})} of {len(items)} events are invalid; "
            "none were stored",
            extra={"errors": errors[:1000]},
        )  # fmt: skip
    records = [
        EventRecord(event_id, *value)
        for event_id, (_, value) in zip(
            _event_ids(len(checked), time_ordered=request.app[CATALOG].time_ordered_keys),
            checked,
            strict=True,
        )
    ]
    await request.app[BUFFER].put(records)
    return web.json_response({"accepted": len(records)}, status=202)


# -- reads --------------------------------------------------------------------------------


_RECOMMENDATION_HEADERS = CIMultiDict(
    {"Content-Type": "application/json", "Cache-Control": "no-store"}
)


def _limit_and_kind(request: web.Request) -> tuple[int, str | None]:
    return _parse_limit_and_kind(request.query_string)


@functools.lru_cache(maxsize=4096)
def _parse_limit_and_kind(query_string: str) -> tuple[int, str | None]:
    """Cached: clients send a handful of distinct query strings, and parsing one into a
    MultiDict costs more than the whole stored-list lookup. A bad one raises (not cached)."""
    # The parser behind request.query, on the same raw string.
    query = URL.build(query_string=query_string, encoded=True).query
    limit = page_limit(query, default=10, maximum=MAX_LIMIT)
    return limit, query.get("kind") or None


async def recommendations(request: web.Request) -> web.Response:
    limit, kind = _limit_and_kind(request)
    user = request.match_info["user"]
    service = request.app[RECOMMENDER]
    # Most answers need no await (a stored list, or the cached popularity answer): no
    # coroutine for them.
    body = service.answer_now(user, limit, kind)
    if body is None:
        body = await service.answer_later(user, limit, kind)
    return web.Response(body=body, headers=_RECOMMENDATION_HEADERS)


async def similar(request: web.Request) -> web.Response:
    limit, kind = _limit_and_kind(request)
    try:
        asset = uuid.UUID(request.match_info["asset_id"])
    except ValueError:
        raise problems.not_found(f"no asset {request.match_info['asset_id']!r}") from None
    ranking = await request.app[RECOMMENDER].similar(asset, limit, kind)
    if ranking is None:
        raise problems.not_found(f"no asset {asset}")
    body = request.app[RECOMMENDER].encode(ranking)
    return web.Response(body=body, content_type="application/json")


async def admin_status(request: web.Request) -> web.Response:
    await require(request, "admin")
    trainer = request.app[TRAINER]
    # Running anywhere, as the lease says (POST's 409 asks it too); last_error is this worker's.
    # Read before the model's stats: a run that ends in between then shows as still running,
    # never as over with its model missing (which is what a client polling for the end saw).
    running, last_error = trainer.running, trainer.last_error
    holder = await trainer.lease_holder()
    body = await request.app[RECOMMENDER].stats()
    body["training"] = {
        "running": running or holder is not None,
        "holder": holder,
        "last_error": last_error,
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def admin_train(request: web.Request) -> web.Response:
    await require(request, "admin")
    trainer = request.app[TRAINER]
    try:
        await trainer.start()
    except TrainerBusy as exc:
        raise Problem(
            409, "training-busy", "Training under way", str(exc),
            headers={"Retry-After": "30"}, extra={"holder": exc.holder},
        ) from None  # fmt: skip
    return web.json_response(
        {"status": "started", "holder": trainer.holder},
        status=202,
        headers={"Location": "/admin/recommender"},
    )


# -- wiring -------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """Create this worker's buffer, download recorder, serving state and trainer."""
    config = app[CONFIG]
    catalog = app[CATALOG]
    rcatalog = RecommenderCatalog(catalog.engine)
    service: RecommenderService | None = None

    async def write(batch: Sequence[EventRecord]) -> None:
        recorded_at = await rcatalog.add_events(batch)
        if service is not None:
            service.note_written(list(batch), recorded_at)

    buffer = EventBuffer(
        write,
        capacity=config.recommender_buffer_size,
        batch_size=config.recommender_batch_size,
        flush_interval=config.recommender_flush_interval,
    )
    enabled = "download" in config.recommender_kind_weights
    downloads = Downloads(buffer, app[TOKENS], rcatalog, enabled=enabled)
    service = RecommenderService(config, rcatalog, app[STORE], buffer)

    async def after_training(_record: object) -> None:
        await service.refresh()

    trainer = Trainer(config, catalog, app[STORE], before=buffer.flush, after=after_training)
    app[BUFFER] = buffer
    app[DOWNLOADS] = downloads
    app[RECOMMENDER] = service
    app[TRAINER] = trainer
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        # After the catalog is open (this runs after create_app's own startup hook).
        buffer.start()
        downloads.start()
        await service.start()
        if config.recommender_train_interval > 0:
            tasks.append(asyncio.create_task(trainer.schedule(), name="recommender-schedule"))

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        # Runs before the catalog closes: in-flight requests are done, buffered events go out.
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await trainer.close()
        await downloads.close()
        await buffer.close()
        await service.close()

    app.on_startup.append(start)
    app.cleanup_ctx.append(lifetime)
    router = app.router
    router.add_post("/events", post_events, expect_handler=expecting())
    router.add_get("/users/{user}/recommendations", recommendations)
    router.add_get("/assets/{asset_id}/similar", similar)
    router.add_get("/admin/recommender", admin_status)
    router.add_post("/admin/recommender/train", admin_train, expect_handler=expecting())
