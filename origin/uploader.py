"""``origin upload``: push a tree of files into an origin, sending only what it lacks.

For people used to ``sftp`` and ``rsync``: recursive, exclude globs and a gitignore-style
ignore file, ``put LOCAL [NAME]`` batch files like ``sftp -b``. Files are hashed in parallel on
every core (hashes are cached by path, size and mtime, so a re-run rehashes only what
changed), the origin is asked which digests it lacks (``POST /blobs/missing``), and the rest
goes up over N parallel streams with retries. A re-run after an interruption uploads only what
is still missing. Progress goes to a terminal as a live display, elsewhere as plain lines.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp
import blake3
import pathspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity import wait_exponential_jitter as jitter

MISSING_BATCH = 1000
READ_BLOCK = 1 << 20
# Files up to this size are read whole (one thread hop) and sent as one body; their upload is
# mostly waiting for the origin's round trips to the store, so more of them go at once.
SMALL_FILE = 1 << 20
SMALL_PER_JOB = 4
RACY_NS = 2_000_000_000
# glTF media types, which the mimetypes module does not know everywhere.
MEDIA_TYPES = {".glb": "model/gltf-binary", ".gltf": "model/gltf+json", ".tscn": "text/plain"}


class UsageError(ValueError):
    """A bad path, pattern or batch line: reported before anything is sent."""


class Transient(Exception):
    """A failure worth retrying: the connection, a 5xx other than 507, a 429."""


class OriginUnusable(Exception):
    """The origin could not say which blobs it lacks (unreachable, refusing, not an origin):
    nothing was sent."""


@dataclass
class Item:
    path: Path
    name: str  # the path relative to what was named on the command line, with / separators
    size: int = 0
    mtime_ns: int = 0
    digest: str | None = None
    error: str | None = None
    uploaded: bool = False
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


def collect(paths: Sequence[str], options: Options) -> list[Item]:
    """Files under the given paths, minus excludes and what ignore files name."""
    items: list[Item] = []
    excludes = pathspec.PathSpec.from_lines("gitwildmatch", options.excludes)
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            spec = excludes
            ignore = root / options.ignore_file
            if ignore.is_file():
                spec = spec + pathspec.PathSpec.from_lines(
                    "gitwildmatch", ignore.read_text().splitlines()
                )
            for dirpath, dirnames, filenames in os.walk(root):
                rel_dir = Path(dirpath).relative_to(root)
                dirnames[:] = sorted(d for d in dirnames if not spec.match_file(f"{rel_dir / d}/"))
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


def read_batch(lines: Iterable[str], source: str) -> list[Item]:
    """``put LOCAL [NAME]`` lines, as ``sftp -b`` reads them; # comments and blanks skipped."""
    items = []
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] != "put" or not 2 <= len(words) <= 3:
            raise UsageError(
                f"{source}:{number}: expected 'put LOCAL [NAME]', got {line.strip()!r}"
            )
        local = Path(words[1])
        items.append(Item(local, words[2] if len(words) == 3 else local.name))
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


def _load_cache(path: Path | None) -> dict[str, list[Any]]:
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


async def hash_all(items: list[Item], cache_path: Path | None) -> None:
    # The cache, and a stat of every file, are file-system work: off the event loop.
    cache = await asyncio.to_thread(_load_cache, cache_path)
    loop = asyncio.get_running_loop()
    # A file changed within the file system's timestamp granularity of being hashed would keep
    # its identity ("racy git"): digests of files that recent are used but not cached.
    racy_after = time.time_ns() - RACY_NS
    identity: dict[int, list[int]] = {}
    todo = await asyncio.to_thread(_not_cached, items, cache)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = [loop.run_in_executor(pool, _hash_file, str(i.path)) for i in todo]
        for item, result in zip(
            todo, await asyncio.gather(*futures, return_exceptions=True), strict=True
        ):
            if isinstance(result, OSError):
                item.error = f"cannot read: {result.strerror}"
            elif isinstance(result, BaseException):
                item.error = f"cannot hash: {result}"
            else:
                item.digest, identity[id(item)] = result
                item.size, item.mtime_ns = result[1][0], result[1][1]
    if cache_path is not None:
        fresh = [
            (item, key) for item in todo
            if item.digest is not None and (key := identity.get(id(item))) is not None
            and max(key[1:3]) < racy_after
        ]  # fmt: skip
        await asyncio.to_thread(_save_cache, cache_path, cache, fresh)


def _not_cached(items: list[Item], cache: dict[str, list[Any]]) -> list[Item]:
    """Fills in the digest of each item the cache knows under its current identity; returns
    the others (unreadable ones get their error and are in neither)."""
    todo: list[Item] = []
    for item in items:
        try:
            stat = item.path.stat()
        except OSError as exc:
            item.error = f"cannot read: {exc.strerror}"
            continue
        cached = cache.get(str(item.path.resolve()))
        if cached and cached[:-1] == _identity(stat):
            item.size, item.mtime_ns, item.digest = stat.st_size, stat.st_mtime_ns, cached[-1]
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
    total_files: int
    total_bytes: int
    live: bool
    done_files: int = 0
    done_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    _last_line: float = 0.0
    _display: Any = None
    _task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )  # fmt: skip
            from rich.progress import (
                Progress as Bar,
            )

            self._display = Bar(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), MofNCompleteColumn(),
            )  # fmt: skip
            self._display.start()
            self._task = self._display.add_task(
                "uploading", total=self.total_bytes, files=self.total_files
            )
        return self

    def advance(self, nbytes: int, finished_file: bool = False) -> None:
        self.done_bytes += nbytes
        self.done_files += finished_file
        if self._display is not None:
            self._display.update(self._task, advance=nbytes)
        elif time.monotonic() - self._last_line >= 5 or self.done_bytes == self.total_bytes:
            self._last_line = time.monotonic()
            print(self.line(), flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done_bytes / elapsed
        left = (self.total_bytes - self.done_bytes) / rate if rate else 0
        return (
            f"{self.done_files}/{self.total_files} files, {self.done_bytes / 2**20:.1f}/"
            f"{self.total_bytes / 2**20:.1f} MiB, {rate / 2**20:.1f} MiB/s, ETA {left:.0f}s"
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
            wait=jitter(initial=0.5, max=10),
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
        # At least one batch per stream, all asked at once: each answer costs the origin a store
        # lookup per digest, and one batch at a time kept one of its workers busy, the rest idle.
        size = max(1, min(MISSING_BATCH, -(-len(digests) // self._options.jobs)))
        gate = asyncio.Semaphore(self._options.jobs)

        async def ask(batch: list[str]) -> list[str]:
            async with gate:
                answer = await self._json("POST", "/blobs/missing", {"digests": batch})
                return list(answer["missing"])

        answers = await asyncio.gather(
            *(ask(digests[i : i + size]) for i in range(0, len(digests), size))
        )
        return {d for answer in answers for d in answer}

    async def put(self, item: Item, progress: Progress) -> None:
        content_type = MEDIA_TYPES.get(item.path.suffix.lower()) or (
            mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        )
        headers = {**self._headers, "Content-Type": content_type, "Content-Length": str(item.size)}

        async def attempt() -> None:
            sent = 0

            async def body() -> AsyncIterator[bytes]:
                nonlocal sent
                async with aiofiles.open(item.path, "rb") as f:
                    while block := await f.read(READ_BLOCK):
                        sent += len(block)
                        progress.advance(len(block))
                        yield block

            payload: bytes | AsyncIterator[bytes]
            if item.size <= SMALL_FILE:
                payload = await asyncio.to_thread(item.path.read_bytes)
                if len(payload) != item.size:  # changed since it was hashed
                    raise RuntimeError(f"changed since it was hashed ({item.size} bytes then)")
                sent = len(payload)
                progress.advance(sent)
            else:
                payload = body()

            try:
                async with self._session.put(
                    f"{self._options.url}/blobs/{item.digest}", data=payload, headers=headers
                ) as resp:
                    await _answer(resp)
            except (aiohttp.ClientError, Transient) as exc:
                progress.advance(-sent)  # this attempt's bytes are sent again
                raise exc if isinstance(exc, Transient) else Transient(str(exc)) from exc

        await self._retrying(attempt)

    async def register(self, item: Item, kind: str) -> str:
        name = item.name.rsplit("/", 1)[-1].rsplit(".", 1)[0] or item.name
        doc = await self._json("POST", "/assets", {"name": name, "kind": kind, "blob": item.digest})
        return str(doc["identifier"])


async def _answer(resp: aiohttp.ClientResponse) -> Any:
    if resp.status in (429,) or (resp.status >= 500 and resp.status != 507):
        raise Transient(f"{resp.status} {resp.reason}")
    text = await resp.text()
    if resp.status >= 400:
        try:
            detail = json.loads(text).get("detail", text)
        except ValueError:
            detail = text
        raise RuntimeError(f"{resp.status}: {detail}")
    return json.loads(text) if text else None


def _kind_of(item: Item, kind: str | None) -> str:
    if kind:
        return kind
    parent = item.name.rsplit("/", 2)
    return (parent[-2] if len(parent) >= 2 else "asset").lower() or "asset"


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    files: int
    uploaded: int
    skipped: int
    failed: int
    bytes_sent: int
    seconds: float


async def upload(items: list[Item], options: Options) -> Summary:
    started = time.monotonic()
    await hash_all(items, options.hash_cache)
    hashed = [i for i in items if i.digest is not None]
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
    ) as session:
        client = Client(session, options)
        try:
            missing = await client.missing(sorted({i.digest for i in hashed if i.digest}))
        # Retries spent, a 4xx, a body that is not JSON or not the answer's shape.
        except (Transient, RuntimeError, ValueError, LookupError, TypeError) as exc:
            raise OriginUnusable(
                f"{options.url} could not say which blobs it lacks: {exc}"
            ) from None
        # One upload per digest, however many files share it.
        todo = list({i.digest: i for i in hashed if i.digest in missing}.values())
        live = sys.stdout.isatty() if options.progress is None else options.progress
        if options.dry_run:
            print(f"would upload {len(todo)} blobs, {sum(i.size for i in todo)} bytes")
        else:
            with Progress(len(todo), sum(i.size for i in todo), live) as progress:
                # Largest first, so that the run does not end on one big file alone; small files
                # have gates of their own and fill the gaps from the start.
                todo.sort(key=lambda i: i.size, reverse=True)
                streams = asyncio.Semaphore(options.jobs)
                small = asyncio.Semaphore(options.small_jobs or SMALL_PER_JOB * options.jobs)

                async def one(item: Item) -> None:
                    async with small if item.size <= SMALL_FILE else streams:
                        try:
                            await client.put(item, progress)
                            item.uploaded = True
                            progress.advance(0, finished_file=True)
                        except Exception as exc:  # reported per file; the rest go on
                            item.error = f"upload failed: {exc}"

                await asyncio.gather(*(one(i) for i in todo))
            failed_digests = {i.digest for i in todo if i.error}
            for item in hashed:
                if item.digest in failed_digests and not item.error:
                    item.error = "upload failed (same content as another file)"
            if options.register:
                for item in hashed:
                    if not item.error:
                        try:
                            item.asset_id = await client.register(
                                item, _kind_of(item, options.kind)
                            )
                        except Exception as exc:
                            item.error = f"register failed: {exc}"
    if options.manifest is not None and not options.dry_run:
        manifest = {
            i.name: {"digest": i.digest, "size": i.size, "asset_id": i.asset_id}
            for i in items if not i.error
        }  # fmt: skip
        options.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    failed = [i for i in items if i.error]
    for item in failed:
        print(f"FAILED {item.name}: {item.error}", file=sys.stderr)
    uploaded = [i for i in items if i.uploaded]
    return Summary(
        files=len(items),
        uploaded=len(uploaded),
        skipped=len(items) - len(uploaded) - len(failed),
        failed=len(failed),
        bytes_sent=sum(i.size for i in uploaded),
        seconds=time.monotonic() - started,
    )
