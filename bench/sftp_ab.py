"""Interleaved A/B of two ways to run the SFTP backend, in one process against one sshd.

Two SftpBackends on one private sshd (tests/sshd_server.py); rounds of 4 concurrent 32 MiB
puts alternate between them (who goes first alternates too), so the machine's drift falls on
both. Prints, per setup, the medians of MiB/s and CPU ms per MiB of this process (with its
hashing threads), of its other child processes (``ssh``) and of sshd, and the per-round ratios
of the first setup's CPU to the second's. Experiments:

- ``ignore``: the backend as the origin runs it (``skip_ignore_packets``) against one with
  asyncssh's ``SSH_MSG_IGNORE`` ahead of every packet;
- ``transport``: the backend as it runs (asyncssh's SSH transport, in Python) against one whose
  connections are asyncssh's SFTP client over the pipes of an OpenSSH ``ssh -s ... sftp``
  subprocess, so that framing and AES-GCM run in C. That side is an experiment, not a
  transport the origin offers: it drives asyncssh's internal
  ``asyncssh.sftp.start_sftp_client`` with duck-typed streams (asyncssh 2.24.1) and has no
  reconnects, keepalives or error mapping.

Results: docs/BENCHMARKS.md, "Bulk upload".

    flock /tmp/bench.lock .venv/bin/python bench/sftp_ab.py ignore --rounds 16
    flock /tmp/bench.lock .venv/bin/python bench/sftp_ab.py transport --rounds 8
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
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any
from unittest.mock import patch

import asyncssh.logging
import asyncssh.sftp
import psutil
import uvloop

from blobstore.sftp import SftpBackend
from blobstore.sftp_pool import Channel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.sshd_server
from tests.sshd_server import SshdServer

MiB = 1 << 20
PUTS, SIZE = 4, 32 * MiB
# Per experiment: the two setups, the first as the origin runs.
SETUPS = {"ignore": ("skip", "ignore"), "transport": ("asyncssh", "openssh")}


# -- the OpenSSH transport (experiment "transport") -------------------------------------------


class _PipeReader:
    """What asyncssh's SFTP client reads through: ``readexactly`` and the server's version."""

    logger = asyncssh.logging.logger.get_child("openssh-pipe")

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream

    async def readexactly(self, n: int) -> bytes:
        return await self._stream.readexactly(n)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # asyncssh swaps SYMLINK's arguments for OpenSSH's server, which it knows by this.
        return "SSH-2.0-OpenSSH" if name == "server_version" else default


class _Process:
    """The subprocess as the connection and channel that asyncssh and the pool look at."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    def create_task(self, coro: Coroutine[Any, Any, Any], logger: Any = None) -> asyncio.Task[Any]:
        return asyncio.ensure_future(coro)

    def is_closed(self) -> bool:
        return self.proc.returncode is not None

    def is_closing(self) -> bool:
        assert self.proc.stdin is not None
        return self.is_closed() or self.proc.stdin.is_closing()

    def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()

    async def wait_closed(self) -> None:
        await self.proc.wait()


class _PipeWriter:
    def __init__(self, process: _Process) -> None:
        assert process.proc.stdin is not None
        self._stdin = process.proc.stdin
        self.channel = process

    def write(self, data: bytes) -> None:
        self._stdin.write(data)

    def write_eof(self) -> None:
        self._stdin.write_eof()

    def close(self) -> None:
        self._stdin.close()


def openssh_connect(server: SshdServer) -> Callable[[], Coroutine[Any, Any, Channel]]:
    async def connect() -> Channel:
        proc = await asyncio.create_subprocess_exec(
            "ssh", "-F", "/dev/null", "-s", "-p", str(server.port), "-i", str(server.client_key),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "Ciphers=aes128-gcm@openssh.com", "-l", server.user, "127.0.0.1", "sftp",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MiB,
        )  # fmt: skip
        assert proc.stdout is not None
        process = _Process(proc)
        start: Any = asyncssh.sftp.start_sftp_client
        sftp = await start(
            process, asyncio.get_running_loop(), "strict", _PipeReader(proc.stdout),
            _PipeWriter(process), "utf-8", "strict", 3,
        )  # fmt: skip
        conn: Any = process
        return Channel(conn, sftp)

    return connect


# -- the harness ------------------------------------------------------------------------------


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
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


async def backend(server: SshdServer, setup: str) -> SftpBackend:
    # The pool's connections all open here (start, then a first round of puts), so a patch
    # in effect here decides for every one of them.
    keeping_ignores = patch("blobstore.sftp.skip_ignore_packets", lambda conn: False)
    with keeping_ignores if setup == "ignore" else contextlib.nullcontext():
        be = SftpBackend.from_url(
            server.url, client_keys=[server.client_key], known_hosts=server.known_hosts
        )
        if setup == "openssh":
            be._pool._connect = openssh_connect(server)
        await be.start()
        await asyncio.gather(*(be.put(body()) for _ in range(PUTS)))
    return be


async def main(server: SshdServer, setups: tuple[str, str], rounds: int) -> None:
    assert server.proc is not None
    sshd, me = psutil.Process(server.proc.pid), psutil.Process()
    backends = {setup: await backend(server, setup) for setup in setups}
    rows: dict[str, list[tuple[float, float, float, float]]] = {setup: [] for setup in setups}
    mib = PUTS * SIZE / MiB
    for r in range(rounds):
        for setup in setups if r % 2 == 0 else setups[::-1]:
            server_tree = [sshd, *sshd.children(recursive=True)]
            ours = {p.pid for p in server_tree}
            children = [p for p in me.children(recursive=True) if p.pid not in ours]
            before = (time.perf_counter(), time.process_time(), cpu(children), cpu(server_tree))
            await asyncio.gather(*(backends[setup].put(body()) for _ in range(PUTS)))
            after = (time.perf_counter(), time.process_time(), cpu(children), cpu(server_tree))
            wall, own, kids, theirs = (b - a for a, b in zip(before, after, strict=True))
            ms = 1000 / mib
            rows[setup].append((mib / wall, own * ms, kids * ms, theirs * ms))
    for setup, got in rows.items():
        rate, own, kids, theirs = (statistics.median(row[i] for row in got) for i in range(4))
        print(
            f"{setup:8}: {rate:4.0f} MiB/s  CPU ms/MiB: this process {own:.2f}, ssh {kids:.2f},"
            f" sshd {theirs:.2f}, together {own + kids + theirs:.2f}"
        )
    first, second = (rows[s] for s in setups)
    for i, who in ((1, "this process"), (3, "sshd")):
        ratios = [a[i] / b[i] for a, b in zip(first, second, strict=True)]
        print(
            f"{who} CPU {setups[0]}/{setups[1]} per round: median {statistics.median(ratios):.3f};",
            " ".join(f"{x:.2f}" for x in ratios),
        )
    for be in backends.values():
        await be.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", choices=sorted(SETUPS))
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        sshd_server = SshdServer(Path(work)).start()
        try:
            uvloop.run(main(sshd_server, SETUPS[args.experiment], args.rounds))
        finally:
            sshd_server.stop()
