"""All configuration in one place: defaults < TOML file < ``ORIGIN_*`` variables < flags.

Every value is checked when the origin starts; an error names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "ORIGIN_"
# Environment variables that are not settings in the file: where the file is, and the
# uploader's server and token (`origin upload`).
_ENV_ONLY = {"ORIGIN_CONFIG", "ORIGIN_URL", "ORIGIN_TOKEN"}

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_SIZE = re.compile(r"\s*([0-9]+)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
# ASCII only: int() and float() also take "5_0", fullwidth and other scripts' digits.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE
)
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
    # Seconds a graceful stop (SIGTERM) may take before the supervisor kills its workers: keep
    # it under the orchestrator's grace period (docker-compose.yml gives 40 s).
    shutdown_timeout: float = 30.0
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
        """Check every value (types, ranges, URLs, files); ConfigError names the first bad key."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _kind(f)
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name}: expected an integer (got {value!r})")
            if kind == "float" and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ConfigError(f"{f.name}: expected a finite number (got {value!r})")
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
            ("redis_max_object", self.redis_max_object >= 0, "must not be negative"),
            ("redis_timeout", 0 < self.redis_timeout <= 10, "must be in (0, 10] seconds"),
            ("sftp_url", self.sftp_url is None or self.sftp_url.startswith("sftp://"),
             "must be an sftp://user@host:port/path URL"),
            ("sftp_key", self.sftp_url is None or self.sftp_key is not None,
             "is required with sftp_url (key authentication only)"),
            ("sftp_known_hosts", self.sftp_url is None or self.sftp_known_hosts is not None,
             "is required with sftp_url (host keys are always checked)"),
            ("sftp_pool", 1 <= self.sftp_pool <= 64, "must be 1..64"),
            ("disk_cache_size", self.disk_cache_size > 0, "must be positive"),
            # The back-off starts at 0.5 s; below that (or negative) a failed tier was never
            # skipped at all (cache/health.py).
            ("tier_retry_max", 0.5 <= self.tier_retry_max <= 3600, "must be 0.5..3600 seconds"),
            ("shutdown_timeout", 1 <= self.shutdown_timeout <= 3600, "must be 1..3600 seconds"),
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
            ("recommender_train_interval", self.recommender_train_interval == 0
             or 1 <= self.recommender_train_interval <= _YEAR,
             "must be 0 (no schedule) or 1..31536000 seconds (a year)"),
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
            ("recommender_regularization", 0 <= self.recommender_regularization <= 1000,
             "must be 0..1000"),
            ("recommender_alpha", 0 < self.recommender_alpha <= 10_000, "must be in (0, 10000]"),
            ("recommender_half_life", self.recommender_half_life == 0
             or 60 <= self.recommender_half_life <= 100 * _YEAR,
             "must be 0 (no decay) or 60..3153600000 seconds (a minute to a century)"),
            ("recommender_lease_ttl", 1 <= self.recommender_lease_ttl <= 86_400,
             "must be 1..86400 seconds"),
            ("recommender_precompute", 0 <= self.recommender_precompute <= 1000,
             "must be 0..1000 (0: no precomputed lists)"),
            ("recommender_tail_interval", 0.01 <= self.recommender_tail_interval <= 60,
             "must be 0.01..60 seconds"),
            ("recommender_commit_lag", 0 <= self.recommender_commit_lag <= 60,
             "must be 0..60 seconds"),
        ]  # fmt: skip
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {self._shown(key)})")
        # What the libraries would refuse only when the origin starts (a traceback then).
        problems: list[tuple[str, str | None]] = [
            ("redis_url", _redis_url_problem(self.redis_url) if self.redis_url else None),
            ("database_url",
             _database_url_problem(self.database_url) if self.database_url else None),
        ]  # fmt: skip
        if self.sftp_url:
            problems.append(("sftp_url", _sftp_url_problem(self.sftp_url)))
        self._raise_first(problems)
        return self

    def check_files(self) -> None:
        """The files the configuration names can be read here (ConfigError if not). Apart
        from ``validate``: they are this machine's, not the configuration's (a compose file's
        secrets are mounted only in the container), so commands check them as they start."""
        if self.sftp_url:
            assert self.sftp_key is not None  # validated
            assert self.sftp_known_hosts is not None
            self._raise_first([
                ("sftp_key", _file_problem(self.sftp_key)),
                ("sftp_known_hosts", _file_problem(self.sftp_known_hosts)),
            ])  # fmt: skip

    def _raise_first(self, problems: list[tuple[str, str | None]]) -> None:
        for key, problem in problems:
            if problem:
                raise ConfigError(f"{key}: {problem} (got {self._shown(key)})")

    def _shown(self, key: str) -> str:
        """The value for an error message, without secrets."""
        value = getattr(self, key)
        if key == "admin_token" and value is not None:
            return f"{len(value)} characters"
        if key in ("database_url", "redis_url") and value is not None:
            return repr(hide_password(value))
        return repr(str(value) if isinstance(value, Path) else value)


_YEAR = 365 * 24 * 3600


def hide_password(url: str) -> str:
    """The URL with its password as ``***``, fit for a log line or an error message."""
    from sqlalchemy.engine import make_url  # only the server side loads SQLAlchemy
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # a URL SQLAlchemy cannot read: hide what it could be
        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url, count=1)


def _port_problem(parts: Any) -> str | None:
    """A URL's port (``urlsplit`` parts): absent, or a number 1..65535."""
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        return "the port must be a number 1..65535"
    return None


def _redis_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path"
    if problem := _port_problem(parts):
        return problem
    # redis-py ignores a database it cannot read as a number and uses 0.
    if not re.fullmatch(r"/?([0-9]+)?", parts.path):
        return "the path must be a database number, as in redis://host:6379/0"
    return None


def _database_url_problem(url: str) -> str | None:
    from sqlalchemy.engine import make_url  # only the server side loads SQLAlchemy
    from sqlalchemy.exc import ArgumentError

    try:
        port = make_url(url).port  # SQLAlchemy's own parser: what the catalog will use
    except (ArgumentError, ValueError):
        return "must be a URL such as postgresql+asyncpg://user:password@host:26257/db"
    if port is not None and not 1 <= port <= 65535:
        return "the port must be a number 1..65535"
    return None


def _sftp_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return "needs a host: sftp://user@host:port/path"
    if not parts.username:
        return "needs the user to log in as: sftp://user@host:port/path"
    return _port_problem(parts)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable regular file, or None."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return "is not a regular file"
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    return None


def parse_size(text: str | int) -> int:
    """``1048576``, ``"64MiB"``, ``"2 GB"`` -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"expected a size such as 1048576, 64MiB or 2GB, got {text!r}")
    return int(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]


def _kind(f: dataclasses.Field[Any]) -> str:
    """``int``, ``float``, ``bool``, ``str`` or ``Path`` (``| None`` dropped); sizes are int."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return kind.removesuffix(" | None")


def _coerce(f: dataclasses.Field[Any], raw: Any) -> Any:
    """One value from TOML (typed), the environment or a flag (strings), as the field's type.

    Numbers are what they say: an integer setting refuses 2.7 (int() made it 2), true (1)
    and "5_0"; a float setting refuses nan, inf and true.
    """
    kind = _kind(f)
    if f.metadata.get("size"):
        return parse_size(raw)
    if kind == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and _INT.fullmatch(raw.strip()):
            return int(raw.strip())
        raise ValueError(f"expected an integer, got {raw!r}")
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind == "float":
        value: float | None = None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw) if abs(raw) < 1e308 else math.inf
        elif isinstance(raw, str) and _FLOAT.fullmatch(raw.strip()):
            value = float(raw.strip())
        if value is None:
            raise ValueError(f"expected a number, got {raw!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        return value
    if kind == "Path":
        if isinstance(raw, os.PathLike) or (isinstance(raw, str) and raw.strip()):
            return Path(raw)
        raise ValueError(f"expected a path, got {raw!r}")
    if isinstance(raw, str):
        return raw
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

    sources: dict[str, str] = {}

    def put(key: str, raw: Any, source: str) -> None:
        if key not in known:
            raise ConfigError(f"{key}: unknown setting (from {source})")
        try:
            values[key] = _coerce(known[key], raw)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc} (from {source})") from None
        sources[key] = source

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
    try:
        return Config(**values).validate()
    except ConfigError as exc:  # "key: why (got value)" -> "key: why (got value, from source)"
        message = str(exc)
        source = sources.get(message.partition(":")[0], "the default")
        raise ConfigError(f"{message.removesuffix(')')}, from {source})") from None
