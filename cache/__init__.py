"""Tiers in front of a durable backend: memory LRU, Redis, a local disk LRU, and the chain.

Public interface: the ``CacheTier`` protocol, the tiers, ``TieredStore`` (itself a
``BlobBackend``), ``CacheEvents`` for metrics, and the health records.
"""

from .disk_cache import DiskCache
from .events import CacheEvents, NoEvents
from .health import HealthReport, TierHealth
from .memory import MemoryTier
from .redis_tier import RedisTier
from .singleflight import SingleFlight
from .tier import CacheTier
from .tiered import TieredStore

__all__ = [
    "CacheEvents",
    "CacheTier",
    "DiskCache",
    "HealthReport",
    "MemoryTier",
    "NoEvents",
    "RedisTier",
    "SingleFlight",
    "TierHealth",
    "TieredStore",
]
