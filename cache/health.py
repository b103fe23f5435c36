"""Per-tier health: a tier that fails is skipped for a back-off, then tried again."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthReport:
    name: str
    healthy: bool
    failures: int
    retry_in: float
    last_error: str | None


class TierHealth:
    """Exponential back-off from ``base`` to ``cap`` seconds after consecutive failures.

    While backing off the tier is not asked at all, so a dead Redis costs no request its
    timeout; when the back-off ends the next request is the probe (half-open).
    """

    def __init__(self, name: str, base: float = 0.5, cap: float = 30.0) -> None:
        self.name = name
        self._base = base
        self._cap = cap
        self._failures = 0
        self._down_until = 0.0
        self._last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, error: BaseException) -> None:
        self._last_error = f"{type(error).__name__}: {error}"
        if not self.healthy:
            # A request already under way when the tier went down: the same outage, not one
            # more step (under 16 concurrent requests, a 0.2 s Redis restart had backed the
            # tier off for 29 s).
            return
        self._failures += 1
        backoff = min(self._cap, self._base * 2 ** (self._failures - 1))
        self._down_until = time.monotonic() + backoff

    def succeeded(self) -> None:
        self._failures = 0
        self._down_until = 0.0

    def report(self) -> HealthReport:
        retry_in = max(0.0, self._down_until - time.monotonic())
        return HealthReport(
            self.name, retry_in == 0 and self._failures == 0, self._failures, retry_in,
            self._last_error if self._failures else None,
        )  # fmt: skip
