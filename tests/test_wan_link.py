"""bench/wan_link.py, the long link of the bulk-upload benchmark's ``--rtt``: what it claims to
reproduce (the delay each way, the window in flight, the bytes in order, a half close) holds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# The bench scripts import one another by their own names, as they run from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from wan_link import spawned

DELAY_MS = 25


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A server that sends back what it reads, then closes its side after the client's EOF."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@contextlib.contextmanager
def link(target: int, window: int) -> Iterator[int]:
    with spawned(target, DELAY_MS, window) as port:
        yield port


async def echo_through(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data``, half-close, read until the server closes: what came back, and when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def send() -> None:
        writer.write(data)
        await writer.drain()
        writer.write_eof()

    _, back = await asyncio.gather(send(), reader.read())
    elapsed = time.monotonic() - started
    writer.close()
    return back, elapsed


async def test_a_round_trip_takes_the_delay_each_way_and_keeps_the_bytes(echo_port: int) -> None:
    with link(echo_port, window=4 << 20) as port:
        data = os.urandom(300_000)
        back, elapsed = await echo_through(port, data)
        assert back == data  # in order, whole, and the half close reached the server
        assert elapsed >= 2 * DELAY_MS / 1000


async def test_no_more_than_a_window_is_in_flight(echo_port: int) -> None:
    """512 KiB through a 64 KiB window: each window waits a round trip for its acknowledgement,
    so the bytes need at least 8 round trips to get there."""
    window, data = 64 << 10, os.urandom(512 << 10)
    with link(echo_port, window=window) as port:
        back, elapsed = await echo_through(port, data)
        assert back == data
        assert elapsed >= (len(data) // window) * 2 * DELAY_MS / 1000
