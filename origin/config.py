"""All configuration in one place: defaults < TOML file < ``ORIGIN_*`` variables < flags.

Every value is checked when the origin starts; an error names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "ORIGIN_"
# Environment variables that are not settings in the file: where the file is, and the
# uploader's server and token (`origin upload`).
_ENV_ONLY = {"ORIGIN_CONFIG", "ORIGIN_URL", "ORIGIN_TOKEN"}

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": KiB, "mb": 10**6, "mib": MiB, "gb": 10**9, "gib": GiB,
          "tb": 10**12, "tib": 1 << 40}  # fmt: skip
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


def _size(default: int) -> Any:
    return field(default=default, metadata={"size": True})


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    # The catalog: cockroachdb+asyncpg://, postgresql+asyncpg:// or sqlite+aiosqlite:// URL;
    # unset means SQLite in data_dir (the embedded default).
    database_url: str | None = field(default=None, repr=False)
    workers: int = 1
    # Largest blob accepted by PUT and POST; larger bodies get 413.
    max_blob_size: int = _size(16 * GiB)
    # A rejected upload's body is read and discarded up to this many bytes before the error is
    # sent, because Godot's HTTPClient reports a connection error, not the status, when the
    # server closes while it is still sending.
    drain_limit: int = _size(64 * MiB)
    # Block size for hashing and disk writes, and for streaming reads that cannot use sendfile.
    chunk_size: int = _size(1 * MiB)
    # Large uploads bypass the page cache (O_DIRECT) where the file system allows it: buffered
    # writeback is the bottleneck of a PUT on virtual disks (docs/DECISIONS.md).
    direct_io: bool = True
    max_missing_batch: int = 10_000
    # Memory tier: an LRU of whole blobs up to memory_max_object, bounded by memory_cache_size.
    memory_cache_size: int = _size(256 * MiB)
    memory_max_object: int = _size(2 * MiB)
    # Redis tier, shared by all nodes; set redis_url to enable it (redis://host:port/db).
    redis_url: str | None = None
    redis_max_object: int = _size(2 * MiB)
    redis_prefix: str = "origin:blob:"
    redis_timeout: float = 0.25
    # The shared SFTP bulk store (sftp://user@host:port/path). When set it is the durable
    # store, and the local disk under data_dir becomes an LRU cache of disk_cache_size bytes.
    sftp_url: str | None = None
    sftp_key: Path | None = None
    sftp_known_hosts: Path | None = None
    sftp_pool: int = 4
    disk_cache_size: int = _size(50 * GiB)
    # A cache tier that fails is skipped, retried after 0.5 s, 1 s, 2 s ... up to this many.
    tier_retry_max: float = 30.0
    log_level: str = "info"
    # Per-request log lines; off by default because the edge (nginx) keeps the access log.
    access_log: bool = False
    # X-Accel-Redirect mode, when nginx shares the origin's disk: the internal nginx location
    # (a URI prefix such as /_accel/) under which it finds data_dir's blob files. A GET served
    # from a local file then answers with the headers and that URI; nginx sends the bytes.
    accel_redirect: str | None = None
    # Admin bearer token given by the operator instead of the generated one; never in a file.
    admin_token: str | None = field(default=None, repr=False)
    # Recommender (README "Recommender"). Event kinds and their weights, "kind:weight,...";
    # POST /events refuses other kinds.
    recommender_kinds: str = "download:1,use:2,like:4"
    # Seconds between scheduled trainings (each worker tries; the catalog lease lets one run);
    # 0 disables the schedule (POST /admin/recommender/train and the CLI still train).
    recommender_train_interval: float = 3600.0
    recommender_poll_interval: float = 3.0  # how often each worker looks for a newer model
    recommender_flush_interval: float = 0.5  # buffered events reach the catalog within this
    recommender_buffer_size: int = 100_000  # events held per worker; then writers wait
    recommender_batch_size: int = 2_000  # rows per INSERT
    recommender_max_batch: int = 10_000  # events per POST /events
    recommender_factors: int = 64
    recommender_iterations: int = 15
    recommender_regularization: float = 0.05
    recommender_alpha: float = 10.0
    recommender_half_life: float = 0.0  # seconds; events lose half their weight per; 0: none
    recommender_lease_ttl: float = 120.0  # a trainer that stops renewing loses the lease
    # Each user's top N stored with the model so most requests are a lookup (0: score live).
    recommender_precompute: int = 100
    # How often each worker reads events other workers recorded (for fold-in, no query per
    # request), and how long a write may take to commit: events are read once they are this
    # old, and a training run includes what was recorded this long before it starts.
    recommender_tail_interval: float = 0.5
    recommender_commit_lag: float = 1.0

    @property
    def recommender_kind_weights(self) -> dict[str, float]:
        weights: dict[str, float] = {}
        for part in self.recommender_kinds.split(","):
            kind, sep, weight = part.partition(":")
            if not sep or not kind.strip() or kind.strip() in weights:
                raise ValueError(f"expected kind:weight, got {part!r}")
            value = float(weight)
            if not (0 < value < float("inf")):
                raise ValueError(f"weight of {kind.strip()!r} must be positive")
            weights[kind.strip()] = value
        return weights

    def _kinds_ok(self) -> bool:
        try:
            return bool(self.recommender_kind_weights)
        except ValueError:
            return False

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'catalog.sqlite'}"

    def validate(self) -> Config:
        checks: list[tuple[str, bool, str]] = [
            ("port", 0 <= self.port <= 65535, "must be between 0 and 65535"),
            ("workers", 1 <= self.workers <= 256, "must be between 1 and 256"),
            ("max_blob_size", self.max_blob_size > 0, "must be positive"),
            ("drain_limit", self.drain_limit >= 0, "must not be negative"),
            ("chunk_size", 4 * KiB <= self.chunk_size <= 64 * MiB, "must be 4KiB..64MiB"),
            ("max_missing_batch", self.max_missing_batch > 0, "must be positive"),
            ("log_level", self.log_level in LOG_LEVELS, f"must be one of {LOG_LEVELS}"),
            ("memory_cache_size", self.memory_cache_size >= 0, "must not be negative"),
            ("memory_max_object", self.memory_max_object >= 0, "must not be negative"),
            ("redis_url", self.redis_url is None
             or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
             "must be a redis://, rediss:// or unix:// URL"),
            ("redis_timeout", 0 < self.redis_timeout <= 10, "must be in (0, 10] seconds"),
            ("sftp_url", self.sftp_url is None or self.sftp_url.startswith("sftp://"),
             "must be an sftp://user@host:port/path URL"),
            ("sftp_key", self.sftp_url is None or self.sftp_key is not None,
             "is required with sftp_url (key authentication only)"),
            ("sftp_known_hosts", self.sftp_url is None or self.sftp_known_hosts is not None,
             "is required with sftp_url (host keys are always checked)"),
            ("sftp_pool", 1 <= self.sftp_pool <= 64, "must be 1..64"),
            ("disk_cache_size", self.disk_cache_size > 0, "must be positive"),
            ("accel_redirect", self.accel_redirect is None
             or re.fullmatch(r"/[A-Za-z0-9._~/-]*", self.accel_redirect) is not None,
             "must be a URI path such as /_accel/ (letters, digits, . _ ~ - and /)"),
            ("database_url", self.database_url is None or self.database_url.startswith(
                ("cockroachdb+asyncpg://", "postgresql+asyncpg://", "sqlite+aiosqlite://")),
             "must be a cockroachdb+asyncpg://, postgresql+asyncpg:// or sqlite+aiosqlite:// URL"),
            ("host", bool(self.host), "must not be empty"),
            ("admin_token", self.admin_token is None or len(self.admin_token) >= 16,
             "must be at least 16 characters"),
            ("recommender_kinds", self._kinds_ok(),
             "must be kind:weight pairs with positive weights, e.g. download:1,use:2,like:4"),
            ("recommender_train_interval", self.recommender_train_interval >= 0,
             "must not be negative (0 disables)"),
            ("recommender_poll_interval", 0.05 <= self.recommender_poll_interval <= 3600,
             "must be 0.05..3600 seconds"),
            ("recommender_flush_interval", 0.01 <= self.recommender_flush_interval <= 60,
             "must be 0.01..60 seconds"),
            ("recommender_buffer_size", self.recommender_buffer_size >= self.recommender_max_batch,
             "must hold at least recommender_max_batch events"),
            ("recommender_batch_size", 1 <= self.recommender_batch_size <= 5_000,
             "must be 1..5000 (rows per INSERT)"),
            ("recommender_max_batch", self.recommender_max_batch >= 1, "must be positive"),
            ("recommender_factors", 1 <= self.recommender_factors <= 1024, "must be 1..1024"),
            ("recommender_iterations", 1 <= self.recommender_iterations <= 1000,
             "must be 1..1000"),
            ("recommender_regularization", self.recommender_regularization >= 0,
             "must not be negative"),
            ("recommender_alpha", self.recommender_alpha > 0, "must be positive"),
            ("recommender_half_life", self.recommender_half_life >= 0,
             "must not be negative (0: no decay)"),
            ("recommender_lease_ttl", self.recommender_lease_ttl >= 1, "must be >= 1 second"),
            ("recommender_precompute", 0 <= self.recommender_precompute <= 1000,
             "must be 0..1000 (0: no precomputed lists)"),
            ("recommender_tail_interval", 0.01 <= self.recommender_tail_interval <= 60,
             "must be 0.01..60 seconds"),
            ("recommender_commit_lag", 0 <= self.recommender_commit_lag <= 60,
             "must be 0..60 seconds"),
        ]  # fmt: skip
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {getattr(self, key)!r})")
        return self


def parse_size(text: str | int) -> int:
    """``1048576``, ``"64MiB"``, ``"2 GB"`` -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"expected a size such as 1048576, 64MiB or 2GB, got {text!r}")
    return int(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]


def _coerce(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    kind = kind.removesuffix(" | None")
    if f.metadata.get("size"):
        return parse_size(raw if isinstance(raw, int) else str(raw))
    if kind == "int":
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        return int(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(str(raw))
    if isinstance(raw, str | int | float):
        return str(raw)
    raise ValueError(f"expected a string, got {raw!r}")


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Layer the sources; ``file`` defaults to ``$ORIGIN_CONFIG`` when that is set."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(Config)}
    values: dict[str, Any] = {}

    def put(key: str, raw: Any, source: str) -> None:
        if key not in known:
            raise ConfigError(f"{key}: unknown setting (from {source})")
        try:
            values[key] = _coerce(known[key], raw)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc} (from {source})") from None

    file = file or (Path(env["ORIGIN_CONFIG"]) if env.get("ORIGIN_CONFIG") else None)
    if file is not None:
        try:
            doc = tomllib.loads(file.read_text())
        except OSError as exc:
            raise ConfigError(f"config file {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        for key, raw in doc.items():
            put(key, raw, str(file))
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX) and name not in _ENV_ONLY:
            put(name[len(ENV_PREFIX) :].lower(), raw, f"environment variable {name}")
    for key, raw in (overrides or {}).items():
        if raw is not None:
            put(key, raw, f"flag --{key.replace('_', '-')}")
    return Config(**values).validate()
