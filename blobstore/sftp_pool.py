"""The SFTP backend's connections: a bounded pool of SSH connections, one SFTP channel each.

Each channel is shared by concurrent operations (SFTP pipelines requests), so the pool grows
only when every connection it has is busy, and replaces a connection that died the next time
one is leased. What counts as a dead connection, as opposed to a failed request, is
``is_lost``'s to say.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import asyncssh

from .backend import BackendUnavailable


def is_lost(exc: BaseException) -> bool:
    """Whether an exception means the connection, not the request, failed."""
    if isinstance(exc, asyncssh.SFTPError):
        return isinstance(exc, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection))
    # OSError covers refused and reset sockets and our own timeouts; asyncssh.Error covers
    # disconnects, failed channel opens and refused host keys or logins.
    return isinstance(exc, (OSError, asyncssh.Error))


@dataclass(eq=False)
class Channel:
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    users: int = 0

    @property
    def alive(self) -> bool:
        return not self.conn.is_closed()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.users += 1
        try:
            yield
        finally:
            self.users -= 1


class Pool:
    """Up to ``size`` connections, opened when the ones there are all busy, replaced when dead.

    Concurrent callers that need a connection while one is being opened wait for that one, so
    an unreachable server costs each of them one connect timeout, not one each in turn.
    """

    def __init__(self, connect: Callable[[], Coroutine[Any, Any, Channel]], size: int) -> None:
        if size < 1:
            raise ValueError("pool_size must be at least 1")
        self._connect = connect
        self._slots: list[asyncio.Task[Channel] | None] = [None] * size
        self._closed = False

    def _live(self) -> list[Channel]:
        return [c for t in self._slots if (c := _usable(t)) is not None]

    async def lease(self) -> Channel:
        if self._closed:
            raise BackendUnavailable("the SFTP backend is closed")
        live = self._live()
        best = min(live, key=lambda c: c.users, default=None)
        connecting = next((t for t in self._slots if t is not None and not t.done()), None)
        # A busy connection now beats a new one later; grow only one connection at a time.
        if best is not None and (
            best.users == 0 or connecting is not None or len(live) == len(self._slots)
        ):
            return best
        if connecting is None:
            # Some slot is empty, failed or dead (fewer live than slots, none connecting).
            i = next(i for i, t in enumerate(self._slots) if _usable(t) is None)
            dead = _result(self._slots[i])
            if dead is not None:
                dead.conn.close()
            connecting = self._slots[i] = asyncio.create_task(self._connect())
        try:
            # Shielded: one caller giving up must not abort the connection the others wait for.
            return await asyncio.shield(connecting)
        except Exception:
            # The server may refuse one more connection (MaxStartups, a session limit) and
            # still serve the ones it has: share a busy one rather than fail.
            fallback = min(self._live(), key=lambda c: c.users, default=None)
            if fallback is None:
                raise
            return fallback

    def discard(self, channel: Channel) -> None:
        channel.conn.close()
        for i, t in enumerate(self._slots):
            if _result(t) is channel:
                self._slots[i] = None

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in self._slots if t is not None]
        self._slots = [None] * len(self._slots)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns = [c.conn for t in tasks if (c := _result(t)) is not None]
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))


def _result(task: asyncio.Task[Channel] | None) -> Channel | None:
    """The channel a finished connect produced (alive or not), else None."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _usable(task: asyncio.Task[Channel] | None) -> Channel | None:
    channel = _result(task)
    return channel if channel is not None and channel.alive else None
