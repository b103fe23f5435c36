"""The SFTP backend's connections: a bounded pool of SSH connections, one SFTP channel each.

Each channel is shared by concurrent operations (SFTP pipelines requests), so the pool grows
only when every connection it has is busy, and replaces a connection that died the next time
one is leased. What counts as a dead connection, as opposed to a failed request, is
``is_lost``'s to say.

Every request goes through ``Remote`` (and the files it opens, ``RemoteFile``), which bounds it
by the backend's request timeout. A request the server has not answered by then means the
connection is stuck (the server's SFTP process hangs on a dead disk or NFS mount while its SSH
session still answers keepalives): the connection is closed at once, every request waiting on
it raises ``Stalled``, and the next operation gets a fresh connection. How a deadline is
counted is ``Channel``'s to say. One timer per connection watches all its requests: an
``asyncio.timeout`` around each costs 6 us here, and made a 4 KiB upload take 10 % more CPU
(1.66 -> 1.83 ms); with the one timer it is as before (1.59 -> 1.60 ms; docs/DECISIONS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, cast

import asyncssh

from .backend import BackendUnavailable

T = TypeVar("T")


class Stalled(TimeoutError):
    """The server did not answer a request in time; its connection has been closed."""


@dataclass(eq=False, slots=True)
class _Waiting:
    """A request in flight on a channel, and the task awaiting it."""

    issued: float
    limit: float
    what: str
    path: object
    task: asyncio.Task[Any]
    cancelling: int  # the task's count of cancellation requests when it asked
    timed_out: bool = False


def is_lost(exc: BaseException) -> bool:
    """Whether an exception means the connection, not the request, failed."""
    if isinstance(exc, asyncssh.SFTPError):
        return isinstance(exc, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection))
    # OSError covers refused and reset sockets and our own timeouts; asyncssh.Error covers
    # disconnects, failed channel opens and refused host keys or logins.
    return isinstance(exc, (OSError, asyncssh.Error))


@dataclass(eq=False)
class Channel:
    """A connection and its SFTP session, and the requests in flight on it.

    A server works through one connection's requests in the order they came (OpenSSH's does,
    one at a time), so a request's deadline runs from when the server could start on it: its
    sending, or the answer to the request before it, whichever came later. Only the oldest
    unanswered request is judged: the ones behind it wait for it (a long fsync has a deadline
    of its own, and a read queued behind it is not its victim; nor is the last of hundreds of
    mkdirs sent at once). An answer out of turn, from a server that works on several requests
    at once, does not reset the clock of the oldest.
    """

    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    users: int = 0
    stalled: str | None = None  # why the connection was given up
    # Oldest first: the first is the request the server is working on.
    _waiting: OrderedDict[_Waiting, None] = field(default_factory=OrderedDict, repr=False)
    _free_at: float = 0.0  # when the oldest unanswered request's predecessor was answered
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.stalled is None and not self.conn.is_closed()

    def _wait(self, limit: float, what: str, path: object) -> _Waiting:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        now = loop.time()
        waiting = _Waiting(now, limit, what, path, task, task.cancelling())
        self._waiting[waiting] = None
        if self._timer is None:
            self._timer = loop.call_at(now + limit, self._check, loop)
        return waiting

    def _answered(self, waiting: _Waiting) -> None:
        queue = self._waiting
        oldest = next(iter(queue))
        del queue[waiting]
        if oldest is not waiting:
            return  # out of turn
        loop = waiting.task.get_loop()
        self._free_at = now = loop.time()
        timer = self._timer
        if queue and timer is not None:
            head = next(iter(queue))
            deadline = max(head.issued, now) + head.limit
            if deadline < timer.when():  # a shorter deadline than the one answered
                timer.cancel()
                self._timer = loop.call_at(deadline, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """At the oldest request's deadline: give the connection up if it is still unanswered."""
        self._timer = None
        if not self._waiting:
            return
        head = next(iter(self._waiting))
        deadline = max(head.issued, self._free_at) + head.limit
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._check, loop)
        elif self.stalled is None:
            # The answer may be in, its task not yet resumed (an event loop that was busy):
            # those tasks run before this call.
            loop.call_soon(self._confirm, loop, head)
        else:
            self._give_up()

    def _confirm(self, loop: asyncio.AbstractEventLoop, late: _Waiting) -> None:
        if self._waiting and next(iter(self._waiting)) is late:
            self._give_up()
        else:
            self._check(loop)

    def _give_up(self) -> None:
        head = next(iter(self._waiting))
        if self.stalled is None:
            self.stalled = (
                f"no answer in {head.limit:g} s to {head.what} {head.path}: the server's"
                " SFTP process is stuck; its connection was closed"
            )
            self.conn.close()
        for waiting in self._waiting:  # all behind it, on a connection that is gone
            if not waiting.timed_out:
                waiting.timed_out = True
                waiting.task.cancel()

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


class Remote:
    """The SFTP requests the backend makes, each bounded by ``timeout`` (see the module
    docstring); the only way it talks to the server."""

    __slots__ = ("_channel", "_sftp", "timeout")

    def __init__(self, channel: Channel, timeout: float) -> None:
        self._channel = channel
        self._sftp = channel.sftp
        self.timeout = timeout

    async def ask(
        self, request: Awaitable[T], what: str, path: object, within: float | None = None
    ) -> T:
        """``request``'s answer, or Stalled when it, or another request on this connection, has
        not been answered ``within`` seconds (the request timeout unless given): then the
        connection is closed, and every request on it raises Stalled."""
        channel = self._channel
        waiting = channel._wait(self.timeout if within is None else within, what, path)
        try:
            return await request
        except asyncio.CancelledError:
            # Ours, unless the task was also cancelled by someone else (then theirs wins).
            if waiting.timed_out and waiting.task.uncancel() <= waiting.cancelling:
                raise Stalled(channel.stalled) from None
            raise
        except Exception as exc:
            if channel.stalled is not None:
                raise Stalled(channel.stalled) from exc
            raise
        finally:
            channel._answered(waiting)

    async def open(self, path: str, mode: str) -> RemoteFile:
        f = await self.ask(self._sftp.open(path, mode), "open", path)
        return RemoteFile(self, f, path)

    async def exists(self, path: str) -> bool:
        return await self.ask(self._sftp.exists(path), "stat", path)

    async def lexists(self, path: str) -> bool:
        return await self.ask(self._sftp.lexists(path), "lstat", path)

    async def stat(self, path: str) -> asyncssh.SFTPAttrs:
        return await self.ask(self._sftp.stat(path), "stat", path)

    async def statvfs(self, path: str) -> asyncssh.SFTPVFSAttrs:
        return await self.ask(self._sftp.statvfs(path), "statvfs", path)

    async def mkdir(self, path: str) -> None:
        await self.ask(self._sftp.mkdir(path), "mkdir", path)

    async def makedirs(self, path: str) -> None:
        """Several requests (one per level), under one deadline."""
        await self.ask(self._sftp.makedirs(path, exist_ok=True), "makedirs", path)

    async def listdir(self, path: str) -> list[str]:
        """Several requests (open, reads, close), under one deadline."""
        names = await self.ask(self._sftp.listdir(path), "listdir", path)
        return [str(name) for name in names]

    async def readdir(self, path: str) -> Sequence[asyncssh.SFTPName]:
        """Several requests (open, reads, close), under one deadline."""
        return await self.ask(self._sftp.readdir(path), "readdir", path)

    async def remove(self, path: str) -> None:
        await self.ask(self._sftp.remove(path), "remove", path)

    async def rename(self, source: str, target: str) -> None:
        await self.ask(self._sftp.rename(source, target), "rename to", target)

    async def posix_rename(self, source: str, target: str) -> None:
        await self.ask(self._sftp.posix_rename(source, target), "posix-rename to", target)

    async def symlink(self, target: str, path: str) -> None:
        await self.ask(self._sftp.symlink(target, path), "symlink", path)

    async def readlink(self, path: str) -> str:
        return str(await self.ask(self._sftp.readlink(path), "readlink", path))


class RemoteFile:
    """An open remote file whose requests are bounded like ``Remote``'s."""

    __slots__ = ("_f", "_path", "_remote")

    def __init__(self, remote: Remote, f: asyncssh.SFTPClientFile, path: str) -> None:
        self._remote = remote
        self._f = f
        self._path = path

    async def __aenter__(self) -> RemoteFile:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            await self.close_quietly()

    async def read(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes, fewer only at the end of the file (or after a short read).

        Split into one request per server-sized piece here, all in flight at once, under one
        deadline: asyncssh's own splitting leaves its tasks' exceptions unretrieved when the
        connection drops.
        """
        if size <= 0:
            return b""
        step = self._f.read_len or size
        starts = range(0, size, step)
        pieces = (self._f.read(min(step, size - i), offset + i) for i in starts)
        parts = await self._remote.ask(asyncio.gather(*pieces), "read", self._path)
        data = bytearray()
        for i, part in zip(starts, parts, strict=True):
            data += cast(bytes, part)  # bytes: files are opened in binary mode
            if len(part) < min(step, size - i):
                break  # the caller asks for the rest at the new offset
        return bytes(data)

    async def write(self, data: bytes | bytearray, offset: int) -> None:
        """Split like ``read``, all pieces in flight at once, under one deadline."""
        # Views, not copies: asyncssh copies each piece into its request anyway (its annotation
        # says bytes; it takes any buffer).
        step = self._f.write_len or len(data) or 1
        view = memoryview(data)
        pieces = (
            self._f.write(cast(bytes, view[i : i + step]), offset + i)
            for i in range(0, len(data), step)
        )
        await self._remote.ask(asyncio.gather(*pieces), "write", self._path)

    async def fsync(self, within: float | None = None) -> None:
        await self._remote.ask(self._f.fsync(), "fsync", self._path, within)

    async def close(self) -> None:
        await self._remote.ask(self._f.close(), "close", self._path)

    async def close_quietly(self) -> None:
        """Best effort: a handle the server keeps goes with the connection."""
        with contextlib.suppress(asyncssh.Error, OSError):
            await self.close()
