#!/usr/bin/env python3
"""CPU per ``Catalog.record_blob`` on the embedded SQLite catalog, alone and 16 at a time.

What a PUT pays for its catalog row (docs/DECISIONS.md, "Blob rows in group commit"): run
against one commit and another to compare. CPU is this process's, all threads (the aiosqlite
thread does SQLite's work).

    .venv/bin/python bench/catalog_record.py --calls 2000
    old=$(bench/origin_at.sh d9615dd /tmp/ab-old)   # then, from a directory outside the checkout:
    PYTHONSAFEPATH=1 PYTHONPATH=/tmp/ab-old/.ab:/tmp/ab-old .venv/bin/python bench/catalog_record.py
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import blake3
import uvloop

# The installed packages (or, for an A/B, those bench/origin_at.sh puts on PYTHONPATH).
from blobstore import BlobInfo, Digest
from origin.catalog import Catalog, upgrade


def new_info() -> BlobInfo:
    digest = Digest(blake3.blake3(os.urandom(16)).hexdigest())
    sha256 = hashlib.sha256(digest.hex.encode()).digest()
    return BlobInfo(digest, 100, sha256, "application/octet-stream", datetime.now(UTC))


async def run(calls: int, concurrency: int, work: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) per call."""
    catalog = Catalog.connect(f"sqlite+aiosqlite:///{work / f'c{concurrency}.db'}")
    await upgrade(catalog.engine)
    gate = asyncio.Semaphore(concurrency)

    async def one(info: BlobInfo) -> None:
        async with gate:
            await catalog.record_blob(info)

    try:
        await asyncio.gather(*(one(new_info()) for _ in range(200)))  # warm: pool, statements
        infos = [new_info() for _ in range(calls)]
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(info) for info in infos))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await catalog.close()
    return wall * 1000 / calls, cpu * 1000 / calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--concurrency", type=int, action="append", help="repeatable; 1 and 16")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="catalog-record-") as tmp:
        for concurrency in args.concurrency or [1, 16]:
            wall, cpu = uvloop.run(run(args.calls, concurrency, Path(tmp)))
            print(f"{concurrency:3} at a time: {wall:.2f} ms wall, {cpu:.2f} ms CPU per record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
