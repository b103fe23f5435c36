"""Typed keys for what the app factory puts in ``web.Application`` state."""

from __future__ import annotations

from aiohttp import web

from blobstore import BlobBackend
from cache import TieredStore

from .catalog import Catalog
from .config import Config
from .inflight import InFlight
from .tokens import Tokens

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", BlobBackend)
TOKENS = web.AppKey("tokens", Tokens)
CATALOG = web.AppKey("catalog", Catalog)
TIERS = web.AppKey("tiers", TieredStore)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
