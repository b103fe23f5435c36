"""Kernel sendfile on aiohttp connections, under uvloop: response bodies and request bodies.

uvloop serves small requests about 35 % faster than asyncio's loop (docs/BENCHMARKS.md), but it
has no ``loop.sendfile`` and will not let us watch a transport's socket for writability. So
large bodies are sent from a worker thread: the transport's buffer is flushed first (the headers
must go before the file), then ``os.sendfile`` runs on the socket, and when the socket is full
the thread waits in ``poll()`` (its own poll; the event loop's registration is untouched). The
event loop meanwhile serves other connections; nothing else writes to this one until the body
is sent. The origin's GETs (``SendfileResponse``) and ``origin upload``'s PUTs
(``send_file``, from its request payload) both go this way, so neither copies a large body
through Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

# One thread per body in flight; they spend their time in the kernel, not holding the GIL.
_SENDERS = ThreadPoolExecutor(max_workers=128, thread_name_prefix="sendfile")
# A peer that accepts nothing for this long is dropped.
STALL_SECONDS = 60.0


@contextlib.contextmanager
def unbuffered(transport: asyncio.WriteTransport) -> Iterator[None]:
    """While inside, a write the socket does not take at once pauses the writer, so a drain
    returns only once the transport's buffer is empty: what must go before the file has gone."""
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)
    try:
        yield
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


async def send_file(
    transport: asyncio.WriteTransport, file: IO[bytes], offset: int, count: int
) -> None:
    """``count`` bytes of ``file`` from ``offset`` onto the transport's socket, by the kernel.
    The transport's buffer must be empty (``unbuffered``). Raises ``ConnectionResetError`` if
    the peer leaves or the file ends first, ``TimeoutError`` if the peer stops reading."""
    # Duplicates, closed by the thread: if the peer leaves, the loop closes its descriptor and
    # the number may go to the next connection at once; and if this task is cancelled, the
    # caller may close the file while the thread still sends.
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    try:
        file_fd = os.dup(file.fileno())
    except OSError:
        os.close(sock_fd)
        raise
    await asyncio.get_running_loop().run_in_executor(
        _SENDERS, _send, sock_fd, file_fd, offset, count
    )


def _send(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    """Runs in a thread, on its own duplicates of both descriptors (see send_file)."""
    try:
        _send_all(sock_fd, file_fd, offset, count)
    finally:
        os.close(sock_fd)
        os.close(file_fd)


def _send_all(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while count > 0:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset, count)
        except BlockingIOError:
            events = poller.poll(STALL_SECONDS * 1000)
            if not events:
                raise TimeoutError("the peer stopped reading") from None
            if events[0][1] & (select.POLLERR | select.POLLHUP):
                raise ConnectionResetError("the peer went away") from None
            continue
        if sent == 0:
            raise ConnectionResetError("the file is shorter than expected")
        offset += sent
        count -= sent


class SendfileResponse(web.StreamResponse):
    """``count`` bytes of an open file from ``offset``, sent by the kernel."""

    def __init__(
        self, file: IO[bytes], offset: int, count: int, *, status: int, headers: dict[str, str]
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._file = file
        self._offset = offset
        self._count = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost before the body was sent")
            with unbuffered(transport):
                writer = await super().prepare(request)
                if writer is not None:
                    await writer.drain()
            await send_file(transport, self._file, self._offset, self._count)
            await super().write_eof()
            return writer
        finally:
            self._file.close()
