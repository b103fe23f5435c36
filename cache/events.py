"""What the tiers report: hits, misses, bytes, promotions, evictions, the disk cache's size;
origin makes metrics."""

from __future__ import annotations

from typing import Protocol


class CacheEvents(Protocol):
    def hit(self, tier: str, nbytes: int) -> None: ...
    def miss(self, tier: str) -> None: ...
    def promoted(self, tier: str) -> None: ...
    def evicted(self, tier: str, count: int = 1) -> None: ...
    def flight_joined(self) -> None: ...
    def durable_read(self) -> None: ...
    def sized(self, tier: str, used: int, capacity: int) -> None: ...


class NoEvents:
    def hit(self, tier: str, nbytes: int) -> None:
        pass

    def miss(self, tier: str) -> None:
        pass

    def promoted(self, tier: str) -> None:
        pass

    def evicted(self, tier: str, count: int = 1) -> None:
        pass

    def flight_joined(self) -> None:
        pass

    def durable_read(self) -> None:
        pass

    def sized(self, tier: str, used: int, capacity: int) -> None:
        pass
