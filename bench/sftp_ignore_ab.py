"""Do asyncssh's ignore packets cost the SFTP backend's puts anything? An interleaved A/B.

One process, one private sshd (tests/sshd_server.py), two SftpBackends: one as the origin runs
it (``skip_ignore_packets`` in effect), one with asyncssh's ``SSH_MSG_IGNORE`` ahead of every
packet. Rounds of 4 concurrent 32 MiB puts alternate between them (who goes first alternates
too), so the machine's drift falls on both; prints the medians of MiB/s and CPU ms per MiB
(this process with its hashing threads; sshd with its session processes) and the per-round
ratios. Results: docs/BENCHMARKS.md, "Bulk upload".

    flock /tmp/bench.lock .venv/bin/python bench/sftp_ignore_ab.py --rounds 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from unittest.mock import patch

import psutil
import uvloop

from blobstore.sftp import SftpBackend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.sshd_server
from tests.sshd_server import SshdServer

MiB = 1 << 20
PUTS, SIZE = 4, 32 * MiB
_SKIP = "blobstore.sftp.skip_ignore_packets"


def sshd_cpu(sshd: psutil.Process) -> float:
    total = 0.0
    for proc in [sshd, *sshd.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def body() -> AsyncIterator[bytes]:
    yield os.urandom(16)  # a new blob each time
    block = os.urandom(MiB)
    for _ in range(SIZE // MiB):
        yield block


async def backend(server: SshdServer, *, skip_ignores: bool) -> SftpBackend:
    # The connections are opened here (start, then the pool's others in a first round), so the
    # patch decides for all of them.
    keep = contextlib.nullcontext() if skip_ignores else patch(_SKIP, lambda conn: False)
    with keep:
        be = SftpBackend.from_url(
            server.url, client_keys=[server.client_key], known_hosts=server.known_hosts
        )
        await be.start()
        await asyncio.gather(*(be.put(body()) for _ in range(PUTS)))
    return be


async def main(server: SshdServer, rounds: int) -> None:
    assert server.proc is not None
    sshd = psutil.Process(server.proc.pid)
    backends = {
        "skip": await backend(server, skip_ignores=True),
        "ignore": await backend(server, skip_ignores=False),
    }
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in backends}
    mib = PUTS * SIZE / MiB
    for r in range(rounds):
        for name in sorted(backends, reverse=r % 2 == 1):
            s0, c0, w0 = sshd_cpu(sshd), time.process_time(), time.perf_counter()
            await asyncio.gather(*(backends[name].put(body()) for _ in range(PUTS)))
            wall = time.perf_counter() - w0
            cpu, sshd_s = time.process_time() - c0, sshd_cpu(sshd) - s0
            rows[name].append((mib / wall, cpu * 1000 / mib, sshd_s * 1000 / mib))
    for name, got in rows.items():
        rate, own, theirs = (statistics.median(row[i] for row in got) for i in range(3))
        print(f"{name:6}: {rate:5.0f} MiB/s  origin {own:.2f} ms/MiB  sshd {theirs:.2f} ms/MiB")
    for i, who in ((1, "origin"), (2, "sshd")):
        ratios = [a[i] / b[i] for a, b in zip(rows["skip"], rows["ignore"], strict=True)]
        print(
            f"{who} CPU skip/ignore per round: median {statistics.median(ratios):.3f};",
            " ".join(f"{x:.2f}" for x in ratios),
        )
    for be in backends.values():
        await be.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        sshd_server = SshdServer(Path(work)).start()
        try:
            uvloop.run(main(sshd_server, args.rounds))
        finally:
            sshd_server.stop()
