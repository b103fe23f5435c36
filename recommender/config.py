"""Configuration for the recommender: how events become weights, and how ALS is trained.

Plain frozen dataclasses with validation, so the server can build them from its own config file
and the model file can record them (``to_dict``/``from_dict``) for the admin page and for
re-using the same weights when folding in events at serve time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DEFAULT_KIND_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"download": 1.0, "use": 2.0, "like": 4.0}
)


@dataclass(frozen=True)
class InteractionConfig:
    """How events are turned into user x asset confidences.

    ``kind_weights``: weight per event kind (download < use < like by default). Events of a kind
    not listed are ignored and counted, so dropping a kind from the config never breaks training.
    ``half_life_seconds``: if set, an event's weight is halved for every half-life it lies before
    the reference time (training time); ``None`` turns decay off.
    """

    kind_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    half_life_seconds: float | None = None

    def __post_init__(self) -> None:
        for kind, weight in self.kind_weights.items():
            if not kind or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"kind weight for {kind!r} must be finite and >= 0")
        if self.half_life_seconds is not None and not (
            math.isfinite(self.half_life_seconds) and self.half_life_seconds > 0
        ):
            raise ValueError("half_life_seconds must be > 0 or None")
        # Freeze a private copy: the caller's dict must not change a model's recorded weights.
        object.__setattr__(self, "kind_weights", MappingProxyType(dict(self.kind_weights)))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self.kind_weights))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind_weights": dict(self.kind_weights),
            "half_life_seconds": self.half_life_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InteractionConfig:
        half_life = data.get("half_life_seconds")
        return cls(
            kind_weights={str(k): float(v) for k, v in dict(data["kind_weights"]).items()},
            half_life_seconds=None if half_life is None else float(half_life),
        )


@dataclass(frozen=True)
class ALSConfig:
    """Hyper-parameters of implicit's ALS plus how many threads it may use.

    ``alpha`` scales confidences (implicit multiplies the matrix by it); ``num_threads`` 0 means
    one per core. ``seed`` makes training reproducible for tests and benchmarks.
    """

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 10.0
    iterations: int = 15
    num_threads: int = 0
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ValueError("factors must be >= 1")
        if not (math.isfinite(self.regularization) and self.regularization >= 0):
            raise ValueError("regularization must be finite and >= 0")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError("alpha must be finite and > 0")
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.num_threads < 0:
            raise ValueError("num_threads must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "num_threads": self.num_threads,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ALSConfig:
        seed = data.get("seed")
        return cls(
            factors=int(data["factors"]),
            regularization=float(data["regularization"]),
            alpha=float(data["alpha"]),
            iterations=int(data["iterations"]),
            num_threads=int(data.get("num_threads", 0)),
            seed=None if seed is None else int(seed),
        )
