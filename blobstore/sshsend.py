"""asyncssh's send path for SFTP requests, with the bytes copied once instead of a dozen times.

asyncssh builds an SFTP write by concatenation: the data's length prefix, the request header,
the packet's length (three copies of the data); the channel copies it into its send buffer
(four) and cuts it into the server's 32 KiB channel packets, each a slice (five) framed by
four more concatenations (the string prefix, the channel number, the message type, the
padding) and, after AES-GCM, one to join the header and one to append the tag; our coalesced
socket write then joined them all again: thirteen passes over every byte before the kernel's.
In a profile of a worker during 64 MiB uploads, memmove was 38 % of the event loop's time, most
of it from these (docs/BENCHMARKS.md, bulk upload). Here

- ``fast_requests`` builds each SFTP request with one join, straight into the channel's send
  buffer (what ``SSHChannel.write`` would append, without its copy of the copy), and writes
  the data of a write request without asyncssh's length-prefixed copy of it;
- ``fast_channel_data`` sends channel data with AES-GCM (``keep_gcm_keys``'s cipher) by
  assembling each packet's plaintext once and sealing it; the four-byte length and the sealed
  bytes go to the connection's ``_send`` as two pieces, which ``coalesce_writes`` hands to the
  transport in one ``writelines`` (a ``writev``, no join).

The bytes on the wire are asyncssh's own (tests/test_sshsend.py compares the two paths packet
for packet). Whatever is not the steady state goes through asyncssh's code unchanged: a key
exchange or re-key in progress or due, compression, a cipher other than AES-GCM, extended
data, a closed channel, and asyncssh's logger at DEBUG (it logs every request, and at debug
level 3 the bytes of every packet). Both reach into asyncssh's internals (pinned in
pyproject.toml; the SFTP backend's tests check that they are in effect); where those are not
what is expected, nothing changes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncssh
import asyncssh.connection
from asyncssh.constants import FXP_WRITE, MSG_CHANNEL_DATA
from asyncssh.packet import Byte, String, UInt32, UInt64

from .sshtune import _KeyedGCMCipher

_DATA_HEADER = 9  # message type, recipient channel, data length
# Where asyncssh's send_packet takes its padding from (buffer_padding_randomness swaps it).
_PACKET_MODULE: Any = asyncssh.connection


def fast_channel_data(channel: Any) -> bool:
    """Send ``channel``'s data by the one-copy path; False when asyncssh's internals differ."""
    original = getattr(channel, "_flush_send_buf", None)
    needed = ("_conn", "_send_chan", "_send_buf", "_send_window", "_send_pktsize", "logger")
    if (
        not callable(original)
        or not callable(getattr(channel, "_pause_resume_writing", None))
        or not all(hasattr(channel, name) for name in needed)
    ):
        return False

    logger = channel.logger
    # The buffer at the front of the channel's queue and how much of it is sent. asyncssh
    # deletes what it sent from the front of the bytearray, and once less than half is left
    # CPython moves the rest into a smaller allocation: about one more copy of every byte.
    head: bytearray | None = None
    sent = 0

    def flush() -> None:
        nonlocal head, sent
        conn, send_buf = channel._conn, channel._send_buf
        # At DEBUG, asyncssh may log the bytes of every packet (debug level 3).
        fast = conn is not None and not logger.isEnabledFor(logging.DEBUG)
        while fast and send_buf and channel._send_window and channel._send_chan is not None:
            buf, datatype = send_buf[0]
            if buf is not head:
                head, sent = buf, 0
            size = min(len(buf) - sent, channel._send_window, channel._send_pktsize)
            if datatype is not None or not _send_data(conn, channel._send_chan, buf, sent, size):
                break
            sent += size
            if sent == len(buf):
                del send_buf[0]
                head, sent = None, 0
            channel._send_buf_len -= size
            channel._send_window -= size
        if send_buf and not channel._send_window:
            # Waiting for the server's window: all that asyncssh's flush would do now.
            channel._pause_resume_writing()
            return
        if head is not None and send_buf and send_buf[0][0] is head:
            del head[:sent]  # asyncssh's code takes over the queue as it keeps it
        head, sent = None, 0
        # asyncssh's own flush sends whatever this one left (in order) and then does its
        # bookkeeping: pausing and resuming the writer, a pending EOF or close.
        original()

    channel._flush_send_buf = flush
    return True


def _send_data(conn: Any, recipient: int, buf: bytearray, start: int, size: int) -> bool:
    """``SSH_MSG_CHANNEL_DATA`` with ``size`` bytes of ``buf`` from ``start``, sealed as
    asyncssh's ``send_packet`` would; False (nothing sent) outside the steady state, for
    asyncssh's code to handle."""
    encryption = conn._send_encryption
    cipher = getattr(encryption, "_cipher", None)
    if (
        type(cipher) is not _KeyedGCMCipher
        or not (conn._auth_complete and conn._kex_complete)
        or conn._compressor is not None
        or conn._rekey_bytes_sent >= conn._rekey_bytes
        or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
    ):
        return False
    # As send_packet, less the SSH_MSG_IGNORE ahead of it, which only CBC needs (see
    # skip_ignore_packets). Padding to the block size, at least four bytes.
    blocksize = conn._send_blocksize
    padlen = -(conn._send_enchdrlen + _DATA_HEADER + size) % blocksize
    if padlen < 4:
        padlen += blocksize
    with memoryview(buf) as view:
        plain = b"".join(
            (
                Byte(padlen),
                Byte(MSG_CHANNEL_DATA),
                UInt32(recipient),
                UInt32(size),
                view[start : start + size],
                _PACKET_MODULE.os.urandom(padlen),  # asyncssh's source of padding
            )
        )
    header = UInt32(len(plain))
    conn._send(header)
    conn._send(cipher.seal(header, plain))
    conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
    conn._rekey_bytes_sent += len(plain)
    return True


def fast_requests(handler: Any) -> bool:
    """Build ``handler``'s SFTP requests in one copy; False when asyncssh's internals differ.

    ``handler``: an ``SFTPClient``'s ``SFTPClientHandler``.
    """
    writer: Any = getattr(handler, "_writer", None)
    channel: Any = getattr(writer, "channel", None)
    send_original: Any = getattr(handler, "send_packet", None)
    write_original: Any = getattr(handler, "write", None)
    make_request: Any = getattr(handler, "_make_request", None)
    needed = ("_send_state", "_send_buf", "_send_buf_len", "_encoding", "_flush_send_buf")
    if (
        not all(callable(f) for f in (send_original, write_original, make_request))
        or getattr(writer, "_datatype", 0) is not None
        or not all(hasattr(channel, name) for name in needed)
    ):
        return False
    logger = handler.logger

    def verbose() -> bool:
        # asyncssh logs every request at DEBUG and the bytes of every packet at debug level 3.
        return bool(logger.isEnabledFor(logging.DEBUG))

    def send_packet(pkttype: int, pktid: int | None, *args: bytes) -> None:
        if handler._writer is None or channel._encoding or verbose():
            send_original(pkttype, pktid, *args)
            return
        if channel.is_closing():
            return
        if channel._send_state != "open":
            raise BrokenPipeError("Channel not open for sending")
        length = 1 + sum(len(a) for a in args)
        packet = bytearray().join((UInt32(length), Byte(pkttype), *args))
        channel._send_buf.append((packet, None))
        channel._send_buf_len += len(packet)
        channel._flush_send_buf()

    async def write(handle: bytes, offset: int, data: bytes) -> int:
        if verbose():
            result: int = await write_original(handle, offset, data)
            return result
        # String(data) without its copy: the length, then the data as a separate piece.
        written: int = await make_request(
            FXP_WRITE, String(handle), UInt64(offset), UInt32(len(data)), data
        )
        return written

    handler.send_packet = send_packet
    handler.write = write
    return True
