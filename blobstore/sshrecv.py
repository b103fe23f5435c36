"""asyncssh's receive path, with the two packets an upload gets most taken straight to the channel.

While an upload streams, sshd re-credits its channel window whenever more than three 32 KiB
packets' worth is outstanding, and it reads one packet's worth per turn of its loop: the
origin gets an ``SSH_MSG_CHANNEL_WINDOW_ADJUST`` for every packet or two it sends (25 per MiB
measured here), besides the SFTP replies in ``SSH_MSG_CHANNEL_DATA``. asyncssh takes each of
them through its general dispatch: the checks for key exchange, authentication and strict key
exchange, a log line formatted for each, the awaitable check. In a profile of a worker during
64 MiB uploads, receiving was a quarter of the event loop's time (docs/BENCHMARKS.md, bulk
upload).

``fast_receive`` opens those two (with ``keep_gcm_keys``'s AES-GCM cipher, once authenticated,
for a channel of the connection) and hands them to the channel's own handlers, asyncssh's
``_process_window_adjust`` and ``_process_data``; then it finishes the packet as asyncssh does
(``_finish_recv_packet``: the sequence number, the next header). Every other packet, and every
packet when the logger is at DEBUG, compression is on or the cipher is another, goes to
asyncssh's ``_recv_packet`` unchanged: the fast path opens a packet without moving the nonce
on, so asyncssh opens it again from the same state. It reaches into asyncssh's internals
(pinned in pyproject.toml; tests/test_sshrecv.py compares both paths, tests/test_sftp_backend.py
checks that it is in effect against sshd); where they are not what is expected, nothing changes.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from asyncssh.channel import SSHChannel
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.misc import ProtocolError
from asyncssh.packet import PacketDecodeError, SSHPacket

from .sshtune import _KeyedGCMCipher

_FAST_TYPES = frozenset({MSG_CHANNEL_WINDOW_ADJUST, MSG_CHANNEL_DATA})
_CHANNEL_HEADER = 5  # message type, recipient channel


def fast_receive(conn: Any) -> bool:
    """Take ``conn``'s window adjusts and channel data by the short path; False when asyncssh's
    internals differ."""
    original = getattr(conn, "_recv_packet", None)
    finish = getattr(conn, "_finish_recv_packet", None)
    needed = (
        "_inpbuf", "_packet", "_pktlen", "_recv_macsize", "_recv_blocksize", "_recv_seq",
        "_recv_encryption", "_channels", "_decompressor", "_auth_complete", "logger",
    )  # fmt: skip
    handlers: Any = getattr(SSHChannel, "_packet_handlers", {})
    if (
        not callable(original)
        or not callable(finish)
        or not all(hasattr(conn, name) for name in needed)
        # Handlers that return an awaitable need asyncssh's deferred finish.
        or not all(
            callable(handlers.get(t)) and not inspect.iscoroutinefunction(handlers.get(t))
            for t in _FAST_TYPES
        )
    ):
        return False
    logger = conn.logger

    def recv_packet() -> bool:
        cipher = getattr(conn._recv_encryption, "_cipher", None)
        if (
            type(cipher) is not _KeyedGCMCipher
            or conn._decompressor is not None
            or not conn._auth_complete
            or logger.isEnabledFor(logging.DEBUG)  # asyncssh logs every packet there
        ):
            return bool(original())
        macsize, buf = conn._recv_macsize, conn._inpbuf
        rem = 4 + conn._pktlen + macsize - conn._recv_blocksize
        if len(buf) < rem:
            return False
        first = conn._packet  # the length, and the first block's worth after it
        plain = cipher.unseal(first[:4], first[4:] + buf[: rem - macsize], buf[rem - macsize : rem])
        # A bad tag, an odd packet or another type: asyncssh's code, which reports it.
        if (
            plain is None
            or len(plain) - plain[0] < 1 + _CHANNEL_HEADER
            or plain[1] not in _FAST_TYPES
        ):
            return bool(original())
        channel = conn._channels.get(int.from_bytes(plain[2:6], "big"))
        if channel is None:
            return bool(original())
        cipher.advance()
        conn._inpbuf = buf[rem:]
        conn._packet = b""
        pkttype, seq = plain[1], conn._recv_seq
        # The payload as asyncssh hands it over: past the message type and channel number.
        packet = SSHPacket(plain[1 : len(plain) - plain[0]])
        packet.get_byte()
        packet.get_uint32()
        try:
            channel.process_packet(pkttype, seq, packet)
        except PacketDecodeError as exc:
            raise ProtocolError(str(exc)) from None
        finish(pkttype, seq)
        return True

    conn._recv_packet = recv_packet
    return True
