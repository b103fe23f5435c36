"""blobstore.sshsend puts on the wire exactly the bytes asyncssh's own send path does.

Two copies of one SSH channel, each on a connection in the same state after a key exchange
(the same AES-GCM key and nonce, sequence number and padding source), one with the fast path
and one without; the same SFTP requests and window adjusts go to both, and both wires must
match byte for byte. The connection is a stand-in holding the state asyncssh's
``SSHConnection.send_packet`` reads; the channel, SFTP handler and cipher are asyncssh's
(tests/test_sftp_backend.py runs the fast path against sshd).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import asyncssh.connection
import asyncssh.encryption
import asyncssh.logging
import pytest
from asyncssh.channel import SSHClientChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE
from asyncssh.sftp import SFTPClientHandler
from asyncssh.stream import SSHReader, SSHWriter
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.sshsend import fast_channel_data, fast_requests
from blobstore.sshtune import keep_gcm_keys

KEY, IV = bytes(range(16)), bytes(range(100, 112))


class _Conn:
    """What ``SSHConnection.send_packet`` reads and writes, after a key exchange to AES-GCM."""

    def __init__(self, encryption: Any = None) -> None:
        assert keep_gcm_keys()
        self.logger = asyncssh.logging.logger
        self._auth_complete = self._kex_complete = True
        self._rekey_bytes, self._rekey_bytes_sent = 1 << 30, 0
        self._rekey_seconds, self._rekey_time = 3600.0, time.monotonic() + 3600
        self._deferred_packets: list[Any] = []
        self._send_encryption = encryption or asyncssh.encryption.get_encryption(
            b"aes128-gcm@openssh.com", KEY, IV
        )
        self._compressor, self._compress_after_auth = None, False
        # What asyncssh's key exchange sets for AES-GCM: the length is not encrypted.
        self._send_enchdrlen, self._send_blocksize = 1, 16
        self._send_seq, self._strict_kex = 7, False
        self.wire: list[bytes] = []
        self.through_asyncssh: list[int] = []  # message types that went by send_packet
        self.kexinits = 0

    def _send(self, data: bytes) -> None:
        self.wire.append(bytes(data))

    def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
        # asyncssh's own, without the ignore packets (blobstore.sshtune.skip_ignore_packets).
        if pkttype != MSG_IGNORE:
            self.through_asyncssh.append(pkttype)
            SSHConnection.send_packet(self, pkttype, *args, handler=handler)  # type: ignore[arg-type]

    def _send_kexinit(self) -> None:
        self.kexinits += 1
        self._kex_complete = False  # from here packets wait in _deferred_packets

    def add_channel(self, channel: Any) -> int:
        return 3

    def state(self) -> tuple[Any, ...]:
        return (
            b"".join(self.wire),
            self._send_seq,
            self._rekey_bytes_sent,
            self._deferred_packets,
            self.kexinits,
        )


class _Session:
    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _channel(conn: _Conn, window: int, pktsize: int) -> SSHClientChannel[bytes]:
    loop = asyncio.get_running_loop()
    channel: SSHClientChannel[bytes] = SSHClientChannel(
        conn,  # type: ignore[arg-type]
        loop, "strict", None, "strict", 1 << 21, 1 << 15,
    )  # fmt: skip
    channel._session = _Session()  # type: ignore[assignment]
    channel._send_state, channel._send_chan = "open", 41
    channel._send_window, channel._send_pktsize = window, pktsize
    return channel


def _handler(channel: SSHClientChannel[bytes]) -> SFTPClientHandler:
    session: Any = SimpleNamespace()
    reader, writer = SSHReader(session, channel), SSHWriter(session, channel)
    return SFTPClientHandler(asyncio.get_running_loop(), "strict", reader, writer, 3)


@contextmanager
def _padding(seed: int) -> Iterator[None]:
    """The same "random" padding for both runs: asyncssh's source, seeded."""
    rng = random.Random(seed)
    fake = SimpleNamespace(urandom=rng.randbytes)
    with patch.object(asyncssh.connection, "os", fake):
        yield


# A request: ("write", offset, size), ("stat", name); ("window", bytes the server adds);
# ("debug", on): asyncssh's logger at DEBUG or not, which moves sending to asyncssh's code
# and back, also halfway through a buffer.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 2**40), st.integers(0, 70_000)),
        st.tuples(st.just("stat"), st.text(max_size=40)),
        st.tuples(st.just("window"), st.integers(1, 300_000)),
        st.tuples(st.just("debug"), st.booleans()),
    ),
    max_size=12,
)


async def _run(fast: bool, seed: int, window: int, pktsize: int, steps: list[Any]) -> Any:
    conn = _Conn()
    channel = _channel(conn, window, pktsize)
    handler = _handler(channel)
    if fast:
        assert fast_channel_data(channel)
        assert fast_requests(handler)
    data = random.Random(seed).randbytes(70_000)
    tasks: list[asyncio.Task[Any]] = []
    asyncssh_logger = logging.getLogger("asyncssh")
    level = asyncssh_logger.level
    try:
        with _padding(seed):
            for step in steps:
                if step[0] == "write":
                    _, offset, size = step
                    tasks.append(asyncio.create_task(handler.write(b"h1", offset, data[:size])))
                elif step[0] == "stat":
                    tasks.append(asyncio.create_task(handler.stat(step[1].encode(), 0)))
                elif step[0] == "window":
                    channel._send_window += step[1]  # as _process_window_adjust does
                    channel._flush_send_buf()
                else:
                    asyncssh_logger.setLevel(logging.DEBUG if step[1] else logging.WARNING)
                await asyncio.sleep(0)  # each request's task runs up to its wait for the answer
            before = (*conn.state(), channel._send_window, channel._send_buf_len)
            asyncssh_logger.setLevel(logging.WARNING)
            channel._send_window += 1 << 24  # the rest goes out
            channel._flush_send_buf()
    finally:
        asyncssh_logger.setLevel(level)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert channel._send_buf == []
    assert channel._send_buf_len == 0
    return conn, (before, conn.state())


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(0, 200_000),
    st.sampled_from([1, 13, 16, 4096, 32768, 65536]),
    STEPS,
)
async def test_the_wire_is_asyncssh_s(seed: int, window: int, pktsize: int, steps: Any) -> None:
    fast_conn, fast = await _run(True, seed, window, pktsize, steps)
    _, slow = await _run(False, seed, window, pktsize, steps)
    assert fast == slow
    # And the fast path is what sent the channel data, unless asyncssh logged at DEBUG.
    if not any(step == ("debug", True) for step in steps):
        assert MSG_CHANNEL_DATA not in fast_conn.through_asyncssh


async def test_a_re_key_that_falls_due_goes_through_asyncssh() -> None:
    """Re-keying is asyncssh's: once the bytes limit is reached it sends KEXINIT and holds the
    channel's packets back until the new keys are in; the fast path steps aside."""
    runs = []
    for fast in (True, False):
        conn = _Conn()
        conn._rekey_bytes = 40_000
        channel = _channel(conn, 1 << 20, 32768)
        if fast:
            assert fast_channel_data(channel)
        with _padding(1):
            channel.write(bytes(100_000))
        runs.append(conn)
    assert runs[0].state() == runs[1].state()
    # Two packets of 32 KiB went out (the limit is crossed by the second); the third found the
    # re-key due, and it and the fourth wait in asyncssh's queue.
    assert runs[0].kexinits == 1
    assert len(runs[0].wire) == 4  # length and sealed bytes, twice
    assert len(runs[0]._deferred_packets) == 2
    assert runs[0].through_asyncssh == [MSG_CHANNEL_DATA] * 2


OTHER_CIPHERS = [
    ((b"aes128-ctr", bytes(16), bytes(16), b"hmac-sha2-256", bytes(32)), 5, 16),
    ((b"chacha20-poly1305@openssh.com", bytes(64), b""), 5, 8),
]


@pytest.mark.parametrize(("encryption", "enchdrlen", "blocksize"), OTHER_CIPHERS)
async def test_other_ciphers_go_through_asyncssh(
    encryption: tuple[Any, ...], enchdrlen: int, blocksize: int
) -> None:
    conn = _Conn(asyncssh.encryption.get_encryption(*encryption))
    conn._send_enchdrlen, conn._send_blocksize = enchdrlen, blocksize
    channel = _channel(conn, 1 << 20, 32768)
    assert fast_channel_data(channel)
    with _padding(2):
        channel.write(bytes(70_000))
    assert conn.through_asyncssh == [MSG_CHANNEL_DATA] * 3


async def test_debug_logging_goes_through_asyncssh(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG asyncssh logs each request (and, at debug level 3, each packet's bytes)."""
    conn = _Conn()
    channel = _channel(conn, 1 << 20, 32768)
    handler = _handler(channel)
    assert fast_channel_data(channel)
    assert fast_requests(handler)
    with caplog.at_level(logging.DEBUG, logger="asyncssh"), _padding(3):
        task = asyncio.create_task(handler.write(b"h1", 0, bytes(1000)))
        await asyncio.sleep(0)
        task.cancel()
    assert conn.through_asyncssh == [MSG_CHANNEL_DATA]
    assert "Sending write for 1000 bytes" in caplog.text


async def test_not_installed_over_other_internals() -> None:
    assert not fast_channel_data(SimpleNamespace(_flush_send_buf=lambda: None))
    assert not fast_requests(SimpleNamespace())
    conn = _Conn()
    handler = _handler(_channel(conn, 0, 1))
    handler._writer = SSHWriter(SimpleNamespace(), handler._writer.channel, 1)  # type: ignore[arg-type, union-attr]
    assert not fast_requests(handler)  # extended data: not what SFTP sends
