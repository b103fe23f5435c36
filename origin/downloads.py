"""Download events: who fetched which asset, from ``/assets/{id}/content`` and blob GETs.

A blob GET is the CDN's hot path, so it pays only for a header lookup when anonymous and a
``put_nowait`` when it carries a token. Everything else happens in a background task: the token
is checked (through the tokens' per-worker cache), the blob is mapped to its asset (a bounded
per-worker cache, filled from the catalog on a miss and holding "no asset" answers too, so a
stream of GETs for one blob costs one query per cache period), and the event goes to the buffer.

One download is one event: a client that follows the content redirect to the blob, or fetches
a large blob in many ``Range`` requests, would otherwise count many times. A user's repeated
downloads of one asset within ``DEDUP_SECONDS`` on one worker count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime

from cachetools import TTLCache

from .catalog import EventRecord, RecommenderCatalog
from .events import EventBuffer
from .tokens import Tokens

log = logging.getLogger(__name__)

DOWNLOAD_KIND = "download"
DEDUP_SECONDS = 60.0
BLOB_CACHE_SIZE = 100_000
BLOB_CACHE_SECONDS = 60.0
_QUEUE_SIZE = 10_000


class Downloads:
    def __init__(
        self, buffer: EventBuffer, tokens: Tokens, catalog: RecommenderCatalog, *, enabled: bool
    ) -> None:
        self._buffer = buffer
        self._tokens = tokens
        self._catalog = catalog
        self.enabled = enabled  # False when "download" is not a configured kind
        self._queue: asyncio.Queue[tuple[str, str, datetime]] = asyncio.Queue(_QUEUE_SIZE)
        self._blob_assets: TTLCache[str, uuid.UUID | None] = TTLCache(
            BLOB_CACHE_SIZE, BLOB_CACHE_SECONDS
        )
        self._recent: TTLCache[tuple[str, uuid.UUID], bool] = TTLCache(100_000, DEDUP_SECONDS)
        self._task: asyncio.Task[None] | None = None

    def blob_get(self, authorization: str, digest: str) -> None:
        """From the blob GET handler: note the request, do the work later."""
        if self.enabled:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait((authorization, digest, datetime.now(UTC)))

    def record(self, user: str, asset: uuid.UUID, at: datetime | None = None) -> bool:
        """One download of ``asset`` by ``user``; False when it was a repeat (or dropped)."""
        if not self.enabled or (user, asset) in self._recent:
            return False
        self._recent[(user, asset)] = True
        event = EventRecord(uuid.uuid4(), user, asset, DOWNLOAD_KIND, 1.0, at or datetime.now(UTC))
        return self._buffer.offer(event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="downloads")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # What is still queued was served; attribute it before the buffer's last flush.
        while not self._queue.empty():
            await self._attribute(*self._queue.get_nowait())

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._attribute(*item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not attribute a blob download: %s", exc)

    async def _attribute(self, authorization: str, digest: str, at: datetime) -> None:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return  # blob reads are public: a malformed header is ignored, not refused
        token = await self._tokens.authenticate(secret.strip())
        if token is None:
            return
        if digest in self._blob_assets:
            asset = self._blob_assets[digest]
        else:
            asset = self._blob_assets[digest] = await self._catalog.asset_for_blob(digest)
        if asset is not None:
            self.record(token.subject, asset, at)
