"""What would OpenSSH as the SFTP backend's transport save? An interleaved A/B, one process.

Two SftpBackends on one private sshd (tests/sshd_server.py): one as the origin runs it
(asyncssh's SSH transport in Python), one whose connections are asyncssh's SFTP client over the
pipes of an OpenSSH ``ssh -s ... sftp`` subprocess, so that framing and AES-GCM run in C.
Rounds of 4 concurrent 32 MiB puts alternate between them; prints medians of MiB/s and CPU ms
per MiB for this process, the ``ssh`` children and sshd.

The OpenSSH side is an experiment, not a transport the origin offers: it drives asyncssh's
internal ``asyncssh.sftp.start_sftp_client`` with duck-typed stream objects (asyncssh 2.24.1),
and has no reconnects, keepalives or error mapping. Results: docs/BENCHMARKS.md, "Bulk upload".

    flock /tmp/bench.lock .venv/bin/python bench/sftp_transport_ab.py --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncssh.logging
import asyncssh.sftp
import psutil
import uvloop

from blobstore.sftp import SftpBackend, _Channel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.sshd_server
from tests.sshd_server import SshdServer

MiB = 1 << 20
PUTS, SIZE = 4, 32 * MiB


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


def openssh_connect(server: SshdServer) -> Callable[[], Coroutine[Any, Any, _Channel]]:
    async def connect() -> _Channel:
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
        return _Channel(conn, sftp)

    return connect


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


async def main(server: SshdServer, rounds: int) -> None:
    assert server.proc is not None
    sshd, me = psutil.Process(server.proc.pid), psutil.Process()
    backends: dict[str, SftpBackend] = {}
    for name in ("asyncssh", "openssh"):
        be = SftpBackend.from_url(
            server.url, client_keys=[server.client_key], known_hosts=server.known_hosts
        )
        if name == "openssh":
            be._pool._connect = openssh_connect(server)
        await be.start()
        await asyncio.gather(*(be.put(body()) for _ in range(PUTS)))  # the pool fills here
        backends[name] = be
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in backends}
    mib = PUTS * SIZE / MiB
    for r in range(rounds):
        for name in sorted(backends, reverse=r % 2 == 1):
            server_tree = [sshd, *sshd.children(recursive=True)]
            ours = {p.pid for p in server_tree}
            ssh = [p for p in me.children(recursive=True) if p.pid not in ours]
            before = (time.perf_counter(), time.process_time(), cpu(ssh), cpu(server_tree))
            await asyncio.gather(*(backends[name].put(body()) for _ in range(PUTS)))
            after = (time.perf_counter(), time.process_time(), cpu(ssh), cpu(server_tree))
            wall, own, children, theirs = (b - a for a, b in zip(before, after, strict=True))
            ms = 1000 / mib
            rows[name].append((mib / wall, own * ms, children * ms, theirs * ms))
    for name, got in rows.items():
        rate, own, children, theirs = (statistics.median(row[i] for row in got) for i in range(4))
        print(
            f"{name:8}: {rate:4.0f} MiB/s  CPU ms/MiB: this process {own:.2f}, ssh {children:.2f},"
            f" sshd {theirs:.2f}, together {own + children + theirs:.2f}"
        )
    for be in backends.values():
        await be.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        sshd_server = SshdServer(Path(work)).start()
        try:
            uvloop.run(main(sshd_server, args.rounds))
        finally:
            sshd_server.stop()
