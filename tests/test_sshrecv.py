"""blobstore.sshrecv leaves a connection exactly as asyncssh's own receive path does.

Two copies of one connection after a key exchange to AES-GCM (the same key, nonce and sequence
number), one with the fast path and one without, each with one open channel; the same sealed
packets (window adjusts and data for the channel and for one that does not exist, an EOF, an
ignore packet, a packet whose tag does not match) arrive at both, cut at the same random
places, and both must end in the same state: the channel's window and the data it delivered,
what each connection sent back, how it disconnected, its sequence number and buffer. The
connection and channel are asyncssh's classes, the connection made without a socket; the
SFTP backend's tests run the fast path against sshd.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import asyncssh.encryption
import pytest
from asyncssh.channel import SSHClientChannel
from asyncssh.connection import SSHClientConnection
from asyncssh.constants import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EOF,
    MSG_CHANNEL_WINDOW_ADJUST,
    MSG_IGNORE,
)
from asyncssh.packet import Byte, String, UInt32
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.sshrecv import fast_receive
from blobstore.sshtune import _KeyedGCMCipher, keep_gcm_keys

KEY, IV = bytes(range(16)), bytes(range(100, 112))
CHANNEL = 3


class _Session:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.received.append(data)

    def eof_received(self) -> bool:
        self.received.append(b"<eof>")
        return True

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _connection() -> tuple[Any, SSHClientChannel[bytes], _Session]:
    """An SSHClientConnection as it is after authentication, without a socket: what its
    receive path reads, and a record of what it sends and how it fails."""
    assert keep_gcm_keys()
    conn: Any = SSHClientConnection.__new__(SSHClientConnection)
    conn._loop = asyncio.get_running_loop()
    conn._logger = asyncssh.logging.logger.get_child("conn", "test")
    conn._transport = object()
    conn._inpbuf, conn._packet, conn._pktlen = b"", b"", 0
    conn._recv_encryption = asyncssh.encryption.get_encryption(b"aes128-gcm@openssh.com", KEY, IV)
    conn._recv_blocksize, conn._recv_macsize, conn._max_recv_pktlen = 16, 16, 1 << 18
    conn._recv_seq, conn._recv_handler = 11, conn._recv_pkthdr
    conn._decompressor, conn._decompress_after_auth = None, False
    conn._auth_complete, conn._auth_final, conn._auth, conn._kex = True, True, None, None
    conn._strict_kex, conn._server_version = False, b"SSH-2.0-OpenSSH_9.2"
    conn._keepalive_interval, conn._keepalive_timer = 0, None
    conn._channels, conn._next_recv_chan = {}, CHANNEL
    conn.sent = []
    conn.failures = []
    conn.send_packet = lambda pkttype, *args, handler=None: conn.sent.append(
        (pkttype, b"".join(args))
    )
    conn._send_disconnect = lambda code, reason, lang: conn.failures.append((code, reason))
    conn._force_close = lambda exc: conn.failures.append(type(exc).__name__)
    conn.internal_error = lambda *a, **k: conn.failures.append("internal error")
    session = _Session()
    channel: SSHClientChannel[bytes] = SSHClientChannel(
        conn, asyncio.get_running_loop(), "strict", None, "strict", 1 << 16, 1 << 15
    )
    channel._session = session  # type: ignore[assignment]
    channel._send_state = channel._recv_state = "open"
    channel._recv_paused = False  # as once the session has started
    channel._send_chan, channel._send_window, channel._send_pktsize = 41, 0, 1 << 15
    assert conn._channels == {CHANNEL: channel}
    return conn, channel, session


def _seal(cipher: _KeyedGCMCipher, payload: bytes, rng: random.Random) -> bytes:
    padlen = -(1 + 4 + len(payload)) % 16
    padlen += 16 if padlen < 4 else 0
    plain = Byte(padlen) + payload + rng.randbytes(padlen)
    header = UInt32(len(plain))
    return header + cipher.seal(header, plain)


# ("adjust", to our channel?, bytes), ("data", ours?, size), ("eof",), ("ignore", size),
# ("bad tag",): the packets a connection gets, and one that must end it.
PACKETS = st.lists(
    st.one_of(
        st.tuples(st.just("adjust"), st.booleans(), st.integers(0, 2**32 - 1)),
        st.tuples(st.just("data"), st.booleans(), st.integers(0, 40_000)),
        st.tuples(st.just("eof")),
        st.tuples(st.just("ignore"), st.integers(0, 64)),
        st.tuples(st.just("bad tag")),
    ),
    max_size=20,
)


def _wire(seed: int, packets: list[Any]) -> bytes:
    rng = random.Random(seed)
    sender = _KeyedGCMCipher("aes128-gcm", KEY, IV)
    wire = bytearray()
    for packet in packets:
        kind, *args = packet
        if kind in ("adjust", "data"):
            ours, value = args
            recipient = UInt32(CHANNEL if ours else CHANNEL + 1)
            if kind == "adjust":
                payload = Byte(MSG_CHANNEL_WINDOW_ADJUST) + recipient + UInt32(value)
            else:
                payload = Byte(MSG_CHANNEL_DATA) + recipient + String(rng.randbytes(value))
        elif kind == "eof":
            payload = Byte(MSG_CHANNEL_EOF) + UInt32(CHANNEL)
        elif kind == "ignore":
            payload = Byte(MSG_IGNORE) + String(rng.randbytes(args[0]))
        else:
            sealed = bytearray(_seal(sender, Byte(MSG_IGNORE) + String(b""), rng))
            sealed[-1] ^= 1
            wire += sealed
            continue
        wire += _seal(sender, payload, rng)
    return bytes(wire)


async def _run(fast: bool, wire: bytes, cuts: list[int]) -> tuple[Any, ...]:
    conn, channel, session = _connection()
    if fast:
        assert fast_receive(conn)
    start = 0
    for cut in [*sorted(c % (len(wire) + 1) for c in cuts), len(wire)]:
        if cut > start:
            conn.data_received(wire[start:cut])
            start = cut
    return (
        channel._send_window,
        channel._recv_window,
        session.received,
        conn.sent,
        conn.failures,
        conn._recv_seq,
        conn._inpbuf,
        conn._recv_encryption._cipher._iv,
    )


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), PACKETS, st.lists(st.integers(0, 2**20), max_size=6))
async def test_the_connection_ends_as_asyncssh_leaves_it(
    seed: int, packets: list[Any], cuts: list[int]
) -> None:
    wire = _wire(seed, packets)
    assert await _run(True, wire, cuts) == await _run(False, wire, cuts)


async def test_the_short_path_takes_the_channel_s_packets() -> None:
    """Window adjusts and data reach the channel without asyncssh's dispatch (which would
    log them: the patched logger below counts its calls)."""
    wire = _wire(1, [("adjust", True, 5000), ("data", True, 100), ("adjust", True, 7)])
    conn, channel, session = _connection()
    assert fast_receive(conn)
    dispatched: list[int] = []
    channel.log_received_packet = lambda pkttype, *a: dispatched.append(pkttype)  # type: ignore[method-assign]
    conn.data_received(wire)
    assert dispatched == []
    assert channel._send_window == 5007
    assert len(session.received) == 1
    assert len(session.received[0]) == 100
    assert conn._recv_seq == 14
    assert conn._inpbuf == b""


async def test_debug_logging_goes_through_asyncssh(caplog: pytest.LogCaptureFixture) -> None:
    wire = _wire(2, [("adjust", True, 5000), ("data", True, 10)])
    conn, channel, _ = _connection()
    assert fast_receive(conn)
    dispatched: list[int] = []
    channel.log_received_packet = lambda pkttype, *a: dispatched.append(pkttype)  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        conn.data_received(wire)
    assert dispatched == [MSG_CHANNEL_WINDOW_ADJUST, MSG_CHANNEL_DATA]
    assert channel._send_window == 5000


async def test_not_installed_over_other_internals() -> None:
    conn, _, _ = _connection()
    del conn._inpbuf  # as if asyncssh had renamed its input buffer
    assert not fast_receive(conn)
    assert "_recv_packet" not in vars(conn)
