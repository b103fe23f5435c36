#!/usr/bin/env python3
"""What a request body sent by sendfile costs its receiver on loopback, against one written.

``origin upload`` sends files over 1 MiB with kernel sendfile (``origin.uploader.FileBody``);
before, it read them 1 MiB at a time and wrote each block through aiohttp. On loopback the
receiver's copy out of the socket then reads page-cache pages the sender never touched, where
a written block is still in the CPU's cache: the copy the sender saves, the receiver partly
pays. This measures both sides, without the origin's hashing and SFTP leg around them.

A receiver process (aiohttp on uvloop, as ``origin serve``'s workers) reads each PUT body as
the origin does (``origin.blob_routes._body``) and throws it away. This process sends rounds
of ``--streams`` concurrent PUTs of one ``--size`` file, alternating ``write`` and
``sendfile`` (who goes first alternates too), and prints per side the medians of the
receiver's and the sender's CPU per MiB and of MiB/s. Results: docs/BENCHMARKS.md, "Bulk
upload", twelfth session.

    flock /tmp/bench.lock .venv/bin/python bench/sendfile_recv.py --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from origin.blob_routes import _body  # the origin's own body reader
from origin.uploader import FileBody

MiB = 1 << 20
BLOCK = MiB  # the uploader's read-and-write block before sendfile
MODES = ("write", "sendfile")


def receive(port: int) -> None:
    async def put(request: web.Request) -> web.Response:
        async for _ in _body(request):
            pass
        return web.Response(status=204)

    app = web.Application(client_max_size=1 << 40)
    app.router.add_put("/blob", put)
    web.run_app(app, host="127.0.0.1", port=port, print=None, loop=uvloop.new_event_loop())


async def blocks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while block := await asyncio.to_thread(f.read, BLOCK):
            yield block


async def send_round(url: str, path: Path, size: int, streams: int, mode: str) -> None:
    async def one(session: aiohttp.ClientSession) -> None:
        with path.open("rb") as file:
            data: FileBody | AsyncIterator[bytes]
            data = FileBody(file, size, lambda _: None) if mode == "sendfile" else blocks(path)
            headers = {"Content-Length": str(size)}
            async with session.put(url, data=data, headers=headers) as resp:
                resp.raise_for_status()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(streams)))


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=8, help="rounds of streams per measurement")
    args = parser.parse_args()

    size = args.size_mib * MiB
    mib = size * args.streams * args.repeat / MiB
    port = free_port()
    receiver = subprocess.Popen([sys.executable, __file__, "--receive", str(port)])
    me, peer = psutil.Process(), psutil.Process(receiver.pid)
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "body.bin")
            path.write_bytes(os.urandom(size))
            url = f"http://127.0.0.1:{port}/blob"
            wait_for(port)
            for r in range(args.rounds):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    peer0, me0, t0 = cpu_seconds(peer), cpu_seconds(me), time.perf_counter()
                    for _ in range(args.repeat):
                        uvloop.run(send_round(url, path, size, args.streams, mode))
                    wall = time.perf_counter() - t0
                    results[mode].append(
                        (
                            (cpu_seconds(peer) - peer0) * 1000 / mib,
                            (cpu_seconds(me) - me0) * 1000 / mib,
                            mib / wall,
                        )
                    )
    finally:
        receiver.terminate()
        receiver.wait()
    print(f"{args.rounds} rounds, each {args.repeat} x {args.streams} PUTs of {args.size_mib} MiB")
    for mode, rows in results.items():
        recv, send, rate = (statistics.median(col) for col in zip(*rows, strict=True))
        print(
            f"{mode:8}  receiver {recv:.2f} ms/MiB  sender {send:.2f} ms/MiB  {rate:.0f} MiB/s"
            f"  (receiver per round: {' '.join(f'{row[0]:.2f}' for row in rows)})"
        )


def wait_for(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--receive":  # the receiver process, started by main
        receive(int(sys.argv[2]))
    else:
        main()
