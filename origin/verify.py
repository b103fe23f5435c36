"""``origin verify``: every blob of the durable store read back and hashed, against its name,
its metadata and the catalog.

What it reports:

- ``corrupt``: bytes whose BLAKE3 is not their name, or whose size or SHA-256 is not what the
  store's metadata says (bit rot, a truncated copy, a file edited behind the store). Clients
  verify what they download, so such a blob fails every download of it.
- ``missing``: a catalog row with no blob in the store: every asset on it answers 404.
- ``unrecorded``: a blob with no catalog row, left by an upload whose catalog write failed. The
  next upload of the same bytes records it; ``--record`` does it now.

It changes nothing unless ``--record``. Blobs are hashed ``jobs`` at a time; BLAKE3 and SHA-256
release the GIL on large buffers, so the hashing runs in threads on every core while the event
loop keeps reading.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from sqlalchemy import select

from blobstore import (
    BlobBackend,
    BlobInfo,
    BlobNotFound,
    BlobStoreError,
    Digest,
    StreamHasher,
    update_off_loop,
)

from .app import durable_store, open_catalog
from .blob_routes import blob_facts
from .catalog import Catalog
from .catalog.schema import blobs
from .config import Config


@dataclass(frozen=True, slots=True)
class Finding:
    digest: str
    problem: str  # "corrupt", "missing" or "unrecorded"
    detail: str


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    bytes_read: int = 0
    recorded: int = 0
    findings: list[Finding] = field(default_factory=list)

    def count(self, problem: str) -> int:
        return sum(1 for f in self.findings if f.problem == problem)

    @property
    def ok(self) -> bool:
        """Nothing wrong is left: every unrecorded blob, if any, has been recorded."""
        return (
            self.count("corrupt") == self.count("missing") == 0
            and self.count("unrecorded") == self.recorded
        )


async def verify(
    store: BlobBackend,
    catalog: Catalog,
    *,
    jobs: int,
    record: bool = False,
    on_blob: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every blob of ``store``; ``on_blob(size)`` after each (progress)."""
    report = VerifyReport()
    async with catalog.engine.connect() as conn:
        in_catalog = set((await conn.execute(select(blobs.c.digest))).scalars())
    seen: set[str] = set()
    slots = asyncio.Semaphore(jobs)

    async def check(digest: Digest) -> None:
        try:
            info = await _check_one(store, digest, report)
        finally:
            slots.release()
        if info is not None and digest.hex not in in_catalog:
            report.findings.append(Finding(digest.hex, "unrecorded", "not in the catalog"))
            if record:
                await catalog.record_blob(info, await blob_facts(store, info))
                report.recorded += 1
        if on_blob is not None:
            on_blob(0 if info is None else info.size)

    try:
        async with asyncio.TaskGroup() as group:
            async for digest in store.iter_digests():
                seen.add(digest.hex)
                await slots.acquire()  # at most ``jobs`` blobs read at once
                group.create_task(check(digest))
    except ExceptionGroup as failed:  # the store went away, say: the first says why
        raise failed.exceptions[0] from None
    for digest in sorted(in_catalog - seen):
        report.findings.append(Finding(digest, "missing", "in the catalog, not in the store"))
    return report


async def _check_one(store: BlobBackend, digest: Digest, report: VerifyReport) -> BlobInfo | None:
    """The blob's info when its bytes are what it claims; None when corrupt (reported) or
    gone since it was listed."""
    info = await store.stat(digest)
    if info is None:
        return None
    hasher = StreamHasher()
    try:
        async for chunk in store.open(digest):
            await update_off_loop(hasher.update, chunk)
    except BlobNotFound:  # deleted since the stat
        return None
    hashes = hasher.result()
    report.checked += 1
    report.bytes_read += hashes.size
    problems = []
    if hashes.blake3 != digest:
        problems.append(f"its BLAKE3 is {hashes.blake3.hex}")
    if hashes.size != info.size:
        problems.append(f"{hashes.size} bytes, the metadata says {info.size}")
    elif hashes.sha256 != info.sha256:
        problems.append("its SHA-256 is not the metadata's")
    if problems:
        report.findings.append(Finding(digest.hex, "corrupt", "; ".join(problems)))
        return None
    return info


async def run(config: Config, *, jobs: int, record: bool) -> int:
    """``origin verify``: findings one per line on stdout, a summary; exit 1 if any is left."""
    catalog = Catalog.connect(config.catalog_url)
    try:
        await open_catalog(config, catalog)
        started = time.monotonic()
        async with durable_store(config) as store:
            with Progress(TextColumn("verify"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), console=Console(stderr=True), transient=True,
                          disable=not sys.stderr.isatty()) as progress:  # fmt: skip
                task = progress.add_task("verify", total=None)
                try:
                    report = await verify(
                        store, catalog, jobs=jobs, record=record,
                        on_blob=lambda size: progress.advance(task, size),
                    )  # fmt: skip
                except BlobStoreError as exc:
                    print(f"origin: verify stopped: {exc}", file=sys.stderr)
                    return 2
    finally:
        await catalog.close()
    for finding in sorted(report.findings, key=lambda f: (f.problem, f.digest)):
        recorded = " (recorded)" if finding.problem == "unrecorded" and record else ""
        print(f"{finding.problem} {finding.digest}: {finding.detail}{recorded}")
    print(
        f"checked {report.checked} blobs ({report.bytes_read / 2**20:.1f} MiB) in "
        f"{time.monotonic() - started:.1f}s: {report.count('corrupt')} corrupt, "
        f"{report.count('missing')} missing, {report.count('unrecorded')} unrecorded"
        + (f", {report.recorded} recorded" if record else "")
    )
    return 0 if report.ok else 1
