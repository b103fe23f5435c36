"""``origin upload``: push a tree of files into an origin, sending only what it lacks.

For people used to ``sftp`` and ``rsync``: recursive, exclude globs and a gitignore-style
ignore file, ``put LOCAL [NAME]`` batch files like ``sftp -b``. Files are hashed in parallel on
every core, small files first and then the largest (hashes are cached by path, size and
mtime, so a re-run rehashes only what changed); as digests become known the origin is asked
in batches which it lacks (``POST /blobs/missing``), and each missing one goes up at once, over
N parallel streams with retries: sending starts while the rest of the tree is still being
hashed. A re-run after an interruption uploads only what is still missing. Special files
(FIFOs, devices) are reported, not read. Progress goes to a terminal as a live display,
elsewhere as plain lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import mimetypes
import os
import re
import shlex
import signal
import sys
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO

import aiohttp
import blake3
import pathspec
from aiohttp.abc import AbstractStreamWriter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity import wait_exponential_jitter as jitter

from .sendfile import send_file, unbuffered

MISSING_BATCH = 1000
MIN_BATCH = 64
# How long a batch of digests waits for more while files are still being hashed.
LINGER = 0.05
READ_BLOCK = 1 << 20
# Files up to this size are read whole (one thread hop) and sent as one body; their upload is
# mostly waiting for the origin's round trips to the store, so more of them go at once.
SMALL_FILE = 1 << 20
SMALL_PER_JOB = 4
RACY_NS = 2_000_000_000
# While hashing goes on, the hash cache is written at most this often, so that a run killed
# before the last file is hashed keeps what it hashed.
CACHE_SAVE_EVERY = 30.0
# Back-off between attempts at a request: 0.5 s doubling up to 10 s, with up to 1 s of jitter;
# never sooner than the origin's Retry-After (up to this, so a wrong one cannot stall a run).
BACKOFF = jitter(multiplier=0.5, max=10)
MAX_RETRY_AFTER = 60.0
# glTF media types, which the mimetypes module does not know everywhere.
MEDIA_TYPES = {".glb": "model/gltf-binary", ".gltf": "model/gltf+json", ".tscn": "text/plain"}


class UsageError(ValueError):
    """A bad path, pattern or batch line: reported before anything is sent."""


class Transient(Exception):
    """A failure worth retrying: the connection, a 5xx other than 507, a 429. ``retry_after``:
    the seconds the origin asked the client to wait (its Retry-After), when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OriginUnusable(Exception):
    """The origin could not say which blobs it lacks (unreachable, refusing, not an origin):
    the run stops. When that is its first answer, nothing has been sent."""


@dataclass
class Item:
    path: Path
    name: str  # the path relative to what was named on the command line, with / separators
    size: int = 0
    mtime_ns: int = 0
    digest: str | None = None
    error: str | None = None
    uploaded: bool = False
    present: bool = False  # the origin had it already
    asset_id: str | None = None


@dataclass
class Options:
    url: str
    token: str | None
    jobs: int = 4
    small_jobs: int | None = None  # None: SMALL_PER_JOB x jobs
    excludes: Sequence[str] = ()
    ignore_file: str = ".originignore"
    dry_run: bool = False
    register: bool = False
    kind: str | None = None
    manifest: Path | None = None
    hash_cache: Path | None = None
    retries: int = 5
    progress: bool | None = None  # None: a live display when stdout is a terminal


# -- what to send -----------------------------------------------------------------------------


def _patterns(lines: Iterable[str], source: str) -> pathspec.PathSpec[pathspec.Pattern]:
    try:
        return pathspec.PathSpec.from_lines("gitwildmatch", lines)
    except ValueError as exc:  # GitWildMatchPatternError
        raise UsageError(f"{source}: {exc}") from None


def check_url(url: str) -> None:
    """Raise UsageError unless ``url`` is an origin's address: http or https, with a host (and a
    port, if any, that is one). Before, ``host:port`` alone failed at the first request with a
    message that was only the URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError as exc:
        raise UsageError(f"--url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--url {url!r}: an origin's address is http:// or https:// and a host, such as "
            "http://127.0.0.1:8080"
        )


def read_text(path: Path) -> str:
    """An ignore or batch file; one that is not UTF-8 is a usage error."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason})") from None


def collect(paths: Sequence[str], options: Options) -> list[Item]:
    """Files under the given paths, minus excludes and what ignore files name. A directory that
    cannot be listed, and a link to a directory (not followed, as rsync does not), come back as
    items with their error, so the run reports them."""
    items: list[Item] = []
    excludes = _patterns(options.excludes, "--exclude")
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            spec = excludes
            ignore = root / options.ignore_file
            if ignore.is_file():
                spec = spec + _patterns(read_text(ignore).splitlines(), str(ignore))

            def unlisted(exc: OSError, root: Path = root) -> None:
                path = Path(exc.filename)
                name = path.relative_to(root).as_posix() if path != root else path.name
                items.append(Item(path, name, error=f"cannot list: {exc.strerror}"))

            for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
                rel_dir = Path(dirpath).relative_to(root)
                kept = [d for d in sorted(dirnames) if not spec.match_file(f"{rel_dir / d}/")]
                dirnames[:] = [d for d in kept if not (Path(dirpath) / d).is_symlink()]
                for link in sorted(set(kept) - set(dirnames)):
                    error = "a link to a directory, not followed"
                    items.append(
                        Item(Path(dirpath) / link, (rel_dir / link).as_posix(), error=error)
                    )
                for filename in sorted(filenames):
                    rel = (rel_dir / filename).as_posix()
                    if filename != options.ignore_file and not spec.match_file(rel):
                        items.append(Item(Path(dirpath) / filename, rel))
        elif root.exists() or root.is_symlink():
            if not excludes.match_file(root.name):
                items.append(Item(root, root.name))
        else:
            raise UsageError(f"{raw}: no such file or directory")
    return items


# sftp's put flags: -f (fsync) and -a (resume) are what every upload does here anyway, and -p
# and -P (keep times and modes) have nothing to keep on a content-addressed store.
_PUT_FLAGS = frozenset({"-f", "-a", "-p", "-P"})


def read_batch(lines: Iterable[str], source: str) -> list[Item]:
    """``put [-f] LOCAL [NAME]`` lines, as ``sftp -b`` reads them: words quoted or escaped as
    in a shell, # comments and blank lines skipped, a NAME ending in / taking LOCAL's file
    name, ``mkdir`` lines (``-mkdir`` too) skipped, since a name carries its folders."""
    items = []
    for number, line in enumerate(lines, 1):
        where = f"{source}:{number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:  # an unclosed quote
            raise UsageError(f"{where}: {exc}: {line.strip()!r}") from None
        if not words or words[0].lstrip("-") == "mkdir":
            continue
        command, *args = words
        while args and args[0] in _PUT_FLAGS:
            args.pop(0)
        if command.lstrip("-") != "put" or not 1 <= len(args) <= 2 or args[0].startswith("-"):
            raise UsageError(f"{where}: expected 'put [-f] LOCAL [NAME]', got {line.strip()!r}")
        local = Path(args[0])
        name = args[1] if len(args) == 2 else local.name
        items.append(Item(local, name + local.name if name.endswith("/") else name))
    return items


# -- hashing ----------------------------------------------------------------------------------


def _identity(stat: os.stat_result) -> list[int]:
    """What a cached digest is valid for. mtime alone misses a same-size rewrite whose mtime was
    put back (``cp -p``, ``rsync -t``, ``tar x``); ctime cannot be set back, and a new inode
    means a new file."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _hash_file(path: str) -> tuple[str, list[int]]:
    """Runs in a worker process: one file's BLAKE3, and the identity it was read under."""
    hasher = blake3.blake3()
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        while block := f.read(READ_BLOCK):
            hasher.update(block)
    return hasher.hexdigest(), _identity(stat)


def _hashing_process() -> None:
    os.nice(10)
    # Ctrl-C reaches the terminal's whole process group: the run stops here, in the parent,
    # which shuts the pool down; a KeyboardInterrupt in each worker would only add tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _load_cache(path: Path | None) -> dict[str, list[Any]]:
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


async def hashed(items: list[Item], cache_path: Path | None) -> AsyncGenerator[Item, None]:
    """Each item as its digest becomes known: those the cache knows at once (largest first), the
    rest as the worker processes (one per core) finish them. Unreadable items come with their
    error. The cache is saved while hashing goes on (every ``CACHE_SAVE_EVERY`` seconds, or ten
    times as long as a save takes) and once more when the iteration ends, early or not."""
    # The cache, and a stat of every file, are file-system work: off the event loop.
    cache = await asyncio.to_thread(_load_cache, cache_path)
    todo = await asyncio.to_thread(_not_cached, items, cache)
    for item in sorted(items, key=lambda i: i.size, reverse=True):
        if item.digest is not None or item.error is not None:
            yield item
    # A file changed within the file system's timestamp granularity of being hashed would keep
    # its identity ("racy git"): digests of files that recent are used but not cached.
    racy_after = time.time_ns() - RACY_NS
    fresh: list[tuple[Item, list[int]]] = []
    done: asyncio.Queue[Item] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # Niced: while uploads go on, sending what is known comes before hashing what is next (the
    # origin and the rest of the machine first); the hashing takes what is left, all of an idle
    # machine.
    pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 1, initializer=_hashing_process)

    def finished(item: Item, future: asyncio.Future[tuple[str, list[int]]]) -> None:
        if future.cancelled():
            return
        if isinstance(exc := future.exception(), OSError):
            item.error = f"cannot read: {exc.strerror}"
        elif exc is not None:
            item.error = f"cannot hash: {exc}"
        else:
            item.digest, key = future.result()
            item.size, item.mtime_ns = key[0], key[1]
            if max(key[1:3]) < racy_after:
                fresh.append((item, key))
        done.put_nowait(item)

    try:
        # Small files first (they hash in moments and then fill the gaps between the large
        # ones), then the rest largest first, the order they are sent in.
        for item in sorted(todo, key=lambda i: (i.size > SMALL_FILE, -i.size)):
            future = loop.run_in_executor(pool, _hash_file, str(item.path))
            future.add_done_callback(functools.partial(finished, item))
        next_save = time.monotonic() + CACHE_SAVE_EVERY
        for _ in todo:
            yield await done.get()
            if cache_path is not None and time.monotonic() >= next_save:
                began = time.monotonic()
                await asyncio.to_thread(_save_cache, cache_path, cache, fresh.copy())
                # json.dumps holds the GIL, so a save stalls the uploads for as long as it
                # takes: a cache of millions of files is saved at most a tenth of the time.
                took = time.monotonic() - began
                next_save = time.monotonic() + max(CACHE_SAVE_EVERY, 10 * took)
    finally:
        # On an early stop the workers finish the file they are on and exit; nothing waits.
        pool.shutdown(wait=False, cancel_futures=True)
        # Also on an early stop (Ctrl-C, a failed run): what was hashed is not hashed again.
        if cache_path is not None:
            await asyncio.to_thread(_save_cache, cache_path, cache, fresh)


def _not_cached(items: list[Item], cache: dict[str, list[Any]]) -> list[Item]:
    """Fills in the size of each item, and the digest of each the cache knows under its current
    identity; returns the ones to hash (unreadable ones get their error and are not among them)."""
    todo: list[Item] = []
    for item in items:
        if item.error is not None:  # found so by collect
            continue
        try:
            stat = item.path.stat()
        except OSError as exc:
            item.error = f"cannot read: {exc.strerror}"
            continue
        if not S_ISREG(stat.st_mode):
            # A FIFO or a device would block the hashing, or never end; rsync skips them too.
            item.error = "not a regular file"
            continue
        item.size, item.mtime_ns = stat.st_size, stat.st_mtime_ns
        cached = cache.get(str(item.path.resolve()))
        if cached and cached[:-1] == _identity(stat):
            item.digest = cached[-1]
        else:
            todo.append(item)
    return todo


def _save_cache(
    path: Path, cache: dict[str, list[Any]], fresh: list[tuple[Item, list[int]]]
) -> None:
    for item, key in fresh:
        cache[str(item.path.resolve())] = [*key, item.digest]
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(cache))
    temp.replace(path)


# -- talking to the origin --------------------------------------------------------------------


@dataclass
class Progress:
    """What is known to be missing grows while files are still being hashed and checked, so the
    totals grow too; the ETA is shown once every file has been checked."""

    to_check: int
    live: bool
    checked: int = 0
    total_files: int = 0
    total_bytes: int = 0
    done_files: int = 0
    failed_files: int = 0
    done_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    _last_line: float = field(default_factory=time.monotonic)  # the start, until a line
    _ended: bool = False
    _display: Any = None
    _task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )  # fmt: skip
            from rich.progress import (
                Progress as Bar,
            )

            self._display = Bar(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
            )  # fmt: skip
            self._display.start()
            self._task = self._display.add_task(self._description(), total=0, files=self._files())
        return self

    def found(self, files: int, nbytes: int) -> None:
        """``files`` more to send, ``nbytes`` in all."""
        self.total_files += files
        self.total_bytes += nbytes
        if self._display is not None:
            self._display.update(self._task, total=self.total_bytes, files=self._files())

    def check(self, files: int) -> None:
        self.checked += files
        if self._display is not None:
            self._display.update(self._task, description=self._description())

    def advance(self, nbytes: int, finished_file: bool = False) -> None:
        self.done_bytes += nbytes
        self.done_files += finished_file
        if self._display is not None:
            self._display.update(self._task, advance=nbytes, files=self._files())
        else:
            self._plain_line()

    def fail_file(self) -> None:
        """A file to send that will not be: it no longer holds up the end."""
        self.failed_files += 1
        if self._display is None:
            self._plain_line()

    def _plain_line(self) -> None:
        """A line every five seconds, and one when the last file has finished or failed (not
        when its bytes have been read: its PUT was still under way)."""
        if time.monotonic() - self._last_line >= 5 or (not self._ended and self._settled):
            self._ended = self._settled
            self._last_line = time.monotonic()
            print(self.line(), flush=True)

    @property
    def _all_checked(self) -> bool:
        return self.checked == self.to_check

    @property
    def _settled(self) -> bool:
        return self._all_checked and self.done_files + self.failed_files == self.total_files

    def _files(self) -> str:
        return f"{self.done_files}/{self.total_files} files"

    def _checking(self) -> str:
        return f"{self.checked}/{self.to_check} checked"

    def _description(self) -> str:
        return "uploading" if self._all_checked else f"uploading, {self._checking()}"

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done_bytes / elapsed
        left = (self.total_bytes - self.done_bytes) / rate if rate else 0
        if self._settled:
            eta = "done"
        elif self._all_checked:
            eta = f"ETA {left:.0f}s"
        else:
            eta = self._checking()
        return (
            f"{self._files()}, {self.done_bytes / 2**20:.1f}/"
            f"{self.total_bytes / 2**20:.1f} MiB, {rate / 2**20:.1f} MiB/s, {eta}"
        )

    def __exit__(self, *exc: object) -> None:
        if self._display is not None:
            self._display.stop()


class Client:
    def __init__(self, session: aiohttp.ClientSession, options: Options) -> None:
        self._session = session
        self._options = options
        self._headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}

    async def _retrying(self, attempt: Any) -> Any:
        async for trial in AsyncRetrying(
            stop=stop_after_attempt(self._options.retries),
            wait=wait_before_retry,
            retry=retry_if_exception_type(Transient),
            reraise=True,
        ):
            with trial:
                return await attempt()
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, body: Any) -> Any:
        async def attempt() -> Any:
            try:
                async with self._session.request(
                    method, self._options.url + path, json=body, headers=self._headers
                ) as resp:
                    return await _answer(resp)
            except aiohttp.ClientError as exc:
                raise Transient(str(exc)) from exc

        return await self._retrying(attempt)

    async def missing(self, digests: list[str]) -> set[str]:
        answer = await self._json("POST", "/blobs/missing", {"digests": digests})
        return set(answer["missing"])

    async def put(self, item: Item, progress: Progress) -> None:
        content_type = MEDIA_TYPES.get(item.path.suffix.lower()) or (
            mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        )
        headers = {**self._headers, "Content-Type": content_type, "Content-Length": str(item.size)}

        async def attempt() -> None:
            sent = 0

            def advance(nbytes: int) -> None:
                nonlocal sent
                sent += nbytes
                progress.advance(nbytes)

            # Opened per attempt and checked against what was hashed: a file changed since then
            # fails here, with a reason, instead of as a digest mismatch or a short body.
            file = await asyncio.to_thread(_open_unchanged, item)
            try:
                payload: bytes | FileBody
                if item.size <= SMALL_FILE:
                    payload = await asyncio.to_thread(file.read)
                    if len(payload) != item.size:  # a body shorter than its length would hang
                        raise RuntimeError(f"read {len(payload)} of its {item.size} bytes")
                    advance(len(payload))
                else:
                    payload = FileBody(file, item.size, advance)
                async with self._session.put(
                    f"{self._options.url}/blobs/{item.digest}", data=payload, headers=headers
                ) as resp:
                    await _answer(resp)
            except (aiohttp.ClientError, Transient) as exc:
                progress.advance(-sent)  # this attempt's bytes are sent again
                raise exc if isinstance(exc, Transient) else Transient(str(exc)) from exc
            finally:
                file.close()

        await self._retrying(attempt)

    async def register(self, item: Item, kind: str) -> str:
        """The asset of that name and kind whose current blob is this file's, made if there is
        none: a re-run registers nothing twice, and a changed file gets an asset of its own."""
        name = item.name.rsplit("/", 1)[-1].rsplit(".", 1)[0] or item.name
        # A file name that is not UTF-8 (any bytes are a Linux name) is named with U+FFFD for
        # what does not decode, as the glTF facts are: an asset's name is text to show.
        name = os.fsencode(name).decode("utf-8", "replace")
        query = urllib.parse.urlencode({"name": name, "kind": kind, "limit": 500})
        page: str | None = f"/assets?{query}"
        while page is not None:  # the name filter is a prefix: "chair" lists "chairs" too
            listing = await self._json("GET", page, None)
            for asset in listing["items"]:
                if asset["name"] == name and asset["blob"] == item.digest:
                    return str(asset["id"])
            page = listing["next"]  # a path and query, as the origin writes it
        doc = await self._json("POST", "/assets", {"name": name, "kind": kind, "blob": item.digest})
        return str(doc["identifier"])


def _open_unchanged(item: Item) -> BinaryIO:
    file = open(item.path, "rb")  # noqa: SIM115 (the caller closes it)
    stat = os.fstat(file.fileno())
    if stat.st_size != item.size or (item.mtime_ns and stat.st_mtime_ns != item.mtime_ns):
        file.close()
        raise RuntimeError(f"changed since it was hashed ({item.size} bytes then)")
    return file


class FileBody(aiohttp.Payload):
    """A large file as a request body, sent by the kernel (origin/sendfile.py): the uploader
    spends 0.5-0.9 ms less CPU per MiB on it than on a read-and-write loop (docs/BENCHMARKS.md,
    twelfth session). Progress moves a piece at a time."""

    PIECE = 8 << 20

    def __init__(self, file: BinaryIO, size: int, sent: Callable[[int], None]) -> None:
        super().__init__(file)
        self._size = size  # aiohttp's Content-Length
        self._file, self._count, self._sent = file, size, sent

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file body is not text")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        transport = writer.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost before the body was sent")
        with unbuffered(transport):
            writer.send_headers()
            await writer.drain()
        count = self._count if content_length is None else min(self._count, content_length)
        for offset in range(0, count, self.PIECE):
            piece = min(self.PIECE, count - offset)
            await send_file(transport, self._file, offset, piece)
            self._sent(piece)


def wait_before_retry(state: RetryCallState) -> float:
    """The back-off, or the origin's Retry-After when that is longer: a 503 of a store that is
    away says 5 s, where the back-off's first waits are 0.5 and 1 s (spent before the store is
    back, the run would give up sooner than the origin expected it to)."""
    wait = float(BACKOFF(state))
    failure = state.outcome.exception() if state.outcome is not None else None
    if isinstance(failure, Transient) and failure.retry_after is not None:
        return max(wait, min(failure.retry_after, MAX_RETRY_AFTER))
    return wait


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header's seconds (RFC 9110, 10.2.3: delay-seconds or an HTTP-date), or
    None when there is none or it is neither."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": a date in UTC, as HTTP-dates are
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def _answer(resp: aiohttp.ClientResponse) -> Any:
    if resp.status in (429,) or (resp.status >= 500 and resp.status != 507):
        wait = retry_after(resp.headers.get("Retry-After"))
        raise Transient(f"{resp.status} {resp.reason}", wait)
    text = await resp.text()
    if resp.status >= 400:
        why = _problem_detail(text) or resp.reason or "no reason given"
        raise RuntimeError(f"{resp.status}: {why}")
    return json.loads(text) if text else None


def _problem_detail(text: str) -> str | None:
    """The ``detail`` of a problem document (RFC 9457), on one line; None when the body is
    not one: a proxy's HTML page (an edge's 413) said whole made a failure many lines."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("detail"), str):
        return None
    return " ".join(doc["detail"].split()) or None


# What the origin takes as an asset's kind (origin/asset_routes.py).
KIND = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def kind_of(item: Item) -> str:
    """The kind of an asset registered without ``--kind``: its folder's name, made one
    ("My Props" -> "my-props"); "asset" when nothing of the name is left."""
    folder = item.path.absolute().parent.name.lower()
    kind = re.sub(r"[^a-z0-9_.-]+", "-", folder).lstrip("_.-")[:64]
    return kind if KIND.fullmatch(kind) else "asset"


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    files: int
    uploaded: int  # with --dry-run: would be
    skipped: int  # the origin has them already
    failed: int
    bytes_sent: int  # with --dry-run: would be
    seconds: float
    dry_run: bool = False


class _Run:
    """Hashing, asking and sending at once: each digest is asked about as soon as it is known
    (with others that arrived meanwhile), and each missing one is sent as soon as it is known
    missing, so a large tree's first bytes go out within a file's hashing of the start."""

    def __init__(self, client: Client, options: Options, progress: Progress) -> None:
        self._client, self._options, self._progress = client, options, progress
        self._hashed: asyncio.Queue[Item | None] = asyncio.Queue()
        self._all_hashed = False
        # digest -> the file whose upload stands for every file with those bytes
        self._claimed: dict[str, Item] = {}
        self.todo: list[Item] = []
        self._streams = asyncio.Semaphore(options.jobs)
        self._small = asyncio.Semaphore(options.small_jobs or SMALL_PER_JOB * options.jobs)
        self._asking = asyncio.Semaphore(options.jobs)

    async def run(self, source: AsyncGenerator[Item, None]) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._feed(source))
                while batch := await self._next_batch():
                    await self._asking.acquire()
                    tasks.create_task(self._ask(batch, tasks))
        except ExceptionGroup as group:
            # Uploads report their own failures; what reaches here stops the run.
            unusable = [e for e in group.exceptions if isinstance(e, OriginUnusable)]
            if unusable:
                raise unusable[0] from None
            raise

    async def _feed(self, source: AsyncGenerator[Item, None]) -> None:
        async with contextlib.aclosing(source):
            async for item in source:
                self._hashed.put_nowait(item)
        self._all_hashed = True
        self._hashed.put_nowait(None)

    async def _next_batch(self) -> list[Item]:
        """What has been hashed and not yet asked about; empty at the end."""
        first = await self._hashed.get()
        if first is None:
            return []
        if not self._all_hashed and self._hashed.qsize() < MIN_BATCH:
            # While files are still being hashed, let a few more arrive: one request per file
            # would cost the origin more than the wait costs the upload.
            await asyncio.sleep(LINGER)
        # At least one batch per stream when many are ready (a re-run): each answer costs the
        # origin a store lookup per digest, and one batch at a time kept one of its workers
        # busy, the rest idle.
        share = -(-self._hashed.qsize() // self._options.jobs)
        batch = [first]
        while len(batch) < min(MISSING_BATCH, max(MIN_BATCH, share)) and not self._hashed.empty():
            item = self._hashed.get_nowait()
            if item is None:
                self._hashed.put_nowait(None)  # the end, for the next call
                break
            batch.append(item)
        return batch

    async def _ask(self, batch: list[Item], tasks: asyncio.TaskGroup) -> None:
        try:
            digests = []
            for item in batch:
                if item.digest is not None and item.digest not in self._claimed:
                    self._claimed[item.digest] = item
                    digests.append(item.digest)
            try:
                missing = await self._client.missing(digests) if digests else set()
            # Retries spent, a 4xx, a body that is not JSON or not the answer's shape.
            except (Transient, RuntimeError, ValueError, LookupError, TypeError) as exc:
                raise OriginUnusable(
                    f"{self._options.url} could not say which blobs it lacks: {exc}"
                ) from None
            send = [self._claimed[d] for d in digests if d in missing]
            for digest in digests:
                self._claimed[digest].present = digest not in missing
            self.todo += send
            self._progress.found(len(send), sum(i.size for i in send))
            self._progress.check(len(batch))
            if not self._options.dry_run:
                for item in send:
                    tasks.create_task(self._send(item))
        finally:
            self._asking.release()

    async def _send(self, item: Item) -> None:
        # Small files have gates of their own and fill the gaps between the large ones.
        async with self._small if item.size <= SMALL_FILE else self._streams:
            try:
                await self._client.put(item, self._progress)
                item.uploaded = True
                self._progress.advance(0, finished_file=True)
            except Exception as exc:  # reported per file; the rest go on
                item.error = f"upload failed: {exc}"
                self._progress.fail_file()


async def upload(items: list[Item], options: Options) -> Summary:
    """Hash ``items`` (or take their digests from the cache) and send what the origin lacks."""
    return await upload_hashed(items, hashed(items, options.hash_cache), options)


async def upload_hashed(
    items: list[Item], source: AsyncGenerator[Item, None], options: Options
) -> Summary:
    """Send what the origin lacks of ``items``, whose digests (or errors) ``source`` yields.
    The manifest is written however the run ends, with what the origin holds by then; when the
    origin has said nothing (unreachable from the start), an earlier manifest is left alone."""
    started = time.monotonic()
    live = sys.stdout.isatty() if options.progress is None else options.progress
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
        ) as session:
            client = Client(session, options)
            with Progress(len(items), live and not options.dry_run) as progress:
                run = _Run(client, options, progress)
                await run.run(source)
            if options.dry_run:
                return _dry_run_summary(items, run.todo, started)
            _share_outcomes(items)
            if options.register:
                for item in items:
                    if item.digest is not None and not item.error:
                        try:
                            item.asset_id = await client.register(
                                item, options.kind or kind_of(item)
                            )
                        except Exception as exc:
                            item.error = f"register failed: {exc}"
    finally:
        _share_outcomes(items)
        heard = any(i.uploaded or i.present for i in items)
        if options.manifest is not None and not options.dry_run and heard:
            await asyncio.to_thread(write_manifest, options.manifest, items)
    failed = _report_failed(items)
    uploaded = [i for i in items if i.uploaded]
    return Summary(
        files=len(items),
        uploaded=len(uploaded),
        skipped=sum(1 for i in items if i.present and not i.error),
        failed=len(failed),
        bytes_sent=sum(i.size for i in uploaded),
        seconds=time.monotonic() - started,
    )


def _report_failed(items: list[Item]) -> list[Item]:
    failed = [i for i in items if i.error]
    for item in failed:
        # A name with a newline or a terminal escape in it is shown quoted, one line each.
        shown = item.name if item.name.isprintable() else repr(item.name)
        print(f"FAILED {shown}: {item.error}", file=sys.stderr)
    return failed


def _share_outcomes(items: list[Item]) -> None:
    """Files with the same bytes share the outcome of the one whose upload stood for them."""
    by_digest = {i.digest: i for i in items if i.digest and (i.uploaded or i.present or i.error)}
    for item in items:
        first = by_digest.get(item.digest) if item.digest else None
        if first is None or first is item or item.error or item.uploaded:
            continue
        if first.error and first.error.startswith("upload failed"):
            item.error = "upload failed (same content as another file)"
        elif first.uploaded or first.present:
            item.present = True


def _dry_run_summary(items: list[Item], todo: list[Item], started: float) -> Summary:
    for item in todo:
        print(f"would upload {item.name} ({item.size} bytes)")
    failed = _report_failed(items)
    return Summary(
        files=len(items),
        uploaded=len(todo),
        skipped=sum(1 for i in items if i.digest and not i.error) - len(todo),
        failed=len(failed),
        bytes_sent=sum(i.size for i in todo),
        seconds=time.monotonic() - started,
        dry_run=True,
    )


def write_manifest(path: Path, items: list[Item]) -> None:
    """Local path -> digest, size, name and asset id of each file the origin holds; replaced
    whole (a temp file renamed), so a reader never sees half of one."""
    manifest = {
        str(i.path): {"digest": i.digest, "size": i.size, "name": i.name, "asset_id": i.asset_id}
        for i in items if (i.uploaded or i.present) and not i.error
    }  # fmt: skip
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    temp.replace(path)
