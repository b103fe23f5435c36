#!/usr/bin/env python3
"""A TCP forwarder that behaves like a long link: every byte arrives a fixed delay after it was
sent, and at most a window of bytes is on the way per direction until its acknowledgement has
come back, one more delay later.

The bulk-upload benchmark puts one in front of sshd (for ``sftp -b``) and one in front of the
origin (for ``origin upload``), so both cross the same kind of link while the origin's own hop
to sshd stays on loopback: the operator's case of an asset library uploaded from a studio to a
data centre. The kernel's netem would be the usual tool; this machine's kernel has no qdiscs
beyond the default, so the delay is made here.

What it reproduces is what limits a protocol over such a link: its own round trips (an SFTP
open, write window and close per file; an HTTP request per blob) and the bytes it keeps in
flight (SFTP's outstanding requests and SSH's channel window; the TCP window, which ``--window``
stands for, as the kernel's socket buffers do). It does not reproduce loss or TCP's slow start.

    bench/wan_link.py --target 127.0.0.1:2222 --delay-ms 10     # prints "listening on HOST:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

CHUNK = 256 * 1024


class _Direction:
    """One way of one connection: what was read waits here until it is due."""

    def __init__(self, delay: float, window: int) -> None:
        self._delay = delay
        self._window = window
        self._in_flight = 0  # sent and not yet acknowledged, as the sender's TCP would count
        self._due: collections.deque[tuple[float, bytes]] = collections.deque()
        self._changed = asyncio.Event()

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._changed.clear()
            await self._changed.wait()

    def _ack(self, size: int) -> None:
        self._in_flight -= size
        self._changed.set()

    async def carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()

        async def take() -> None:
            while True:
                await self._wait(lambda: self._in_flight < self._window)
                data = await reader.read(min(CHUNK, self._window - self._in_flight))
                self._in_flight += len(data)
                self._due.append((loop.time() + self._delay, data))
                self._changed.set()
                if not data:
                    return

        async def give() -> None:
            while True:
                await self._wait(lambda: bool(self._due))
                due, data = self._due.popleft()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                loop.call_later(self._delay, self._ack, len(data))

        await asyncio.gather(take(), give())


async def _serve(target_host: str, target_port: int, delay: float, window: int) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            c_writer.close()
            return
        try:
            await asyncio.gather(
                _Direction(delay, window).carry(c_reader, t_writer),
                _Direction(delay, window).carry(t_reader, c_writer),
            )
        except (ConnectionError, OSError):
            pass  # one side went away: so does the other, as on a real link
        finally:
            for w in (c_writer, t_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


@contextlib.contextmanager
def spawned(
    target_port: int, delay_ms: float, window: int, stderr: IO[bytes] | None = None
) -> Iterator[int]:
    """This script as a child process in front of ``127.0.0.1:target_port``: its port."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--target", f"127.0.0.1:{target_port}",
         "--delay-ms", str(delay_ms), "--window", str(window)],
        stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline())
        if m is None:
            raise RuntimeError("wan_link did not start")
        yield int(m.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay (RTT / 2)")
    p.add_argument(
        "--window", type=int, default=4 << 20, help="bytes in flight per direction (4 MiB)"
    )
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    asyncio.run(_serve(host, int(port), args.delay_ms / 1000, args.window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
