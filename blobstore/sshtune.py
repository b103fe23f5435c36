"""Five per-packet costs of asyncssh that bulk uploads pay for every 32 KiB, taken out.

Every SSH packet that asyncssh sends is preceded by an empty ``SSH_MSG_IGNORE`` packet, so one
SFTP request is two packets, and a 1 MiB write, cut into the server's 32 KiB channel packets,
is 64. That is RFC 4251's countermeasure (section 9.3.1) against the chosen-plaintext attack on
CBC mode, whose next IV an attacker can predict; CTR and the AEAD modes (AES-GCM, ChaCha20-
Poly1305, the only ones the SFTP backend offers first) are not open to it, and OpenSSH sends
none ahead of its data. ``skip_ignore_packets`` drops them while the connection's cipher is
not a CBC one: half the packets to frame, encrypt and (in sshd) decrypt; interleaved
in-process puts of 32 MiB blobs took 2-8 % less CPU here and in sshd (docs/BENCHMARKS.md,
bulk upload).
For each packet asyncssh also

- calls ``os.urandom`` for the few bytes of random padding: a ``getrandom`` system call that
  also releases and retakes the GIL (with the hashing threads waiting for it, a hand-off);
- hands the packet to the transport on its own: one ``send()`` system call;
- with AES-GCM, builds a new ``AESGCM`` from the key for every packet it seals or opens, so
  OpenSSL expands the key and sets up GHASH again each time (about 1.3 us of the 2.1 that a
  small packet costs here; sshd sends the origin a window adjust every one or two packets);
- formats log messages (every SFTP request's, and a name and size for every packet) before it
  asks whether they will be logged.

Profiles of the origin's workers had the first two among the largest items of the event
loop's time, and the third at a few per cent of it (docs/BENCHMARKS.md, bulk upload). Here

- ``coalesce_writes`` collects the packets produced during one turn of the event loop and
  writes them at the start of the next turn in one ``writelines`` (one ``writev``): the same
  bytes in the same order, so the SSH stream is unchanged; only the system calls are fewer;
- ``buffer_padding_randomness`` gives asyncssh's packet code an ``os`` whose ``urandom`` serves
  from 64 KiB fetched from ``os.urandom`` at a time: the same kernel CSPRNG bytes, each used
  once; a forked child starts with an empty buffer;
- ``keep_gcm_keys`` makes asyncssh's GCM shim build its ``AESGCM`` once per key (cryptography
  keeps the cipher context inside it), with the same nonces, bytes and tags;
- ``log_lazily`` makes asyncssh's loggers check the level first (receiving a packet took 20.1
  us with asyncssh's, 17.6 with these; docs/BENCHMARKS.md, sixth session): the same records
  when asyncssh logs at DEBUG.

All five reach into asyncssh's internals (``SSHConnection.send_packet``, ``_send`` and
``_send_encryption``, the ``os`` and ``GCMCipher`` names in ``asyncssh.connection`` and
``asyncssh.encryption``, ``SSHLogger.log`` and ``SSHPacketLogger._log_packet``); asyncssh is
pinned in pyproject.toml, and tests/test_sftp_backend.py checks that they are in effect. Where
the internals are not what they expect, nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from types import ModuleType
from typing import Any

import asyncssh
import asyncssh.connection
import asyncssh.encryption
from asyncssh.constants import MSG_IGNORE
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.logging import SSHLogger
from asyncssh.packet import SSHPacketLogger
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_RANDOM_BATCH = 64 * 1024


def coalesce_writes(conn: asyncssh.SSHClientConnection) -> bool:
    """Batch ``conn``'s socket writes per loop turn; False when asyncssh's internals differ."""
    transport: Any = getattr(conn, "_transport", None)
    # Duck-typed: uvloop's transports (the origin runs on uvloop) are not asyncio's classes.
    needed = [(transport, "writelines"), (transport, "is_closing"), (conn, "_send")]
    if not all(callable(getattr(obj, name, None)) for obj, name in needed):
        return False
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []

    def flush() -> None:
        batch = pending.copy()
        pending.clear()
        # Dropped after close or abort, as asyncssh's own _send drops them once its transport
        # is gone; a disconnect queued before an abort is flushed first (call_soon is FIFO).
        if not transport.is_closing():
            with contextlib.suppress(ConnectionError):
                # One writev on uvloop's transports (asyncio's join the pieces first).
                transport.writelines(batch)

    def send(data: bytes) -> None:
        if not pending:
            loop.call_soon(flush)
        pending.append(data)

    conn._send = send  # type: ignore[method-assign]
    return True


def skip_ignore_packets(conn: asyncssh.SSHClientConnection) -> bool:
    """Send no ``SSH_MSG_IGNORE`` while the cipher is not CBC; False when the internals differ.

    asyncssh sends no ignore packets of its own otherwise (keepalives are global requests), so
    every one that reaches ``send_packet`` is the countermeasure's.
    """
    send_packet: Any = getattr(conn, "send_packet", None)
    if not callable(send_packet) or not hasattr(conn, "_send_encryption"):
        return False
    # The cipher's name, looked up again whenever a key exchange installs new encryption (a
    # re-key may, in principle, negotiate another cipher); get_extra_info per packet cost more
    # than the rest of this check.
    checked_for: Any = None
    cbc = True

    def send(pkttype: int, *args: bytes, handler: Any = None) -> None:
        nonlocal checked_for, cbc
        if pkttype == MSG_IGNORE:
            encryption = conn._send_encryption
            if encryption is not checked_for:
                checked_for = encryption
                cbc = "cbc" in conn.get_extra_info("send_cipher", "cbc")
            if not cbc:
                return
        send_packet(pkttype, *args, handler=handler)

    # asyncssh calls self.send_packet for the ignore packet too, so this instance attribute
    # sees it.
    conn.send_packet = send  # type: ignore[method-assign]
    return True


_GCM_TAG = 16


class _KeyedGCMCipher(GCMCipher):
    """asyncssh's AES-GCM shim, with one ``AESGCM`` per key instead of one per packet.

    The nonce sequence (``_iv``, ``_update_iv``) is asyncssh's own; only where the key schedule
    lives changes.
    """

    def __init__(self, cipher_name: str, key: bytes, iv: bytes) -> None:
        super().__init__(cipher_name, key, iv)
        self._aead = AESGCM(key)

    def seal(self, header: bytes, data: bytes) -> bytes:
        """The ciphertext of ``data`` and the tag after it, with the next nonce."""
        sealed = self._aead.encrypt(self._iv, data, header)
        self._update_iv()
        return sealed

    def encrypt_and_sign(self, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = memoryview(self.seal(header, data))
        return header + sealed[:-_GCM_TAG], bytes(sealed[-_GCM_TAG:])

    def verify_and_decrypt(self, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            plain: bytes | None = self._aead.decrypt(self._iv, data + mac, header)
        except InvalidTag:
            plain = None
        self._update_iv()
        return plain


def keep_gcm_keys() -> bool:
    """Install the keyed GCM shim for connections made from now on (idempotent).

    Only if it seals two packets in a row exactly as asyncssh's own shim does: the subclass
    leans on its private nonce attributes, and a changed asyncssh must not get a broken cipher.
    """
    module: Any = asyncssh.encryption
    current = getattr(module, "GCMCipher", None)
    if current is _KeyedGCMCipher:
        return True
    if current is not GCMCipher:
        return False
    key, iv, header = bytes(range(16)), bytes(range(12)), b"\0\0\0\x20"
    try:
        theirs, ours = GCMCipher("aes128-gcm", key, iv), _KeyedGCMCipher("aes128-gcm", key, iv)
        same = all(
            ours.encrypt_and_sign(header, packet) == theirs.encrypt_and_sign(header, packet)
            for packet in (bytes(32), bytes(range(32)))
        )
    except Exception:  # an internal renamed: AttributeError, TypeError, ...
        return False
    if not same:
        return False
    module.GCMCipher = _KeyedGCMCipher
    return True


class _BufferedRandomOs(ModuleType):
    """``os`` for asyncssh.connection, with a batched ``urandom``."""

    def __init__(self) -> None:
        super().__init__("os")
        self._buf = bytearray()
        self._lock = threading.Lock()  # connections may live in several threads' loops
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # A child must not reuse its parent's bytes (nor inherit a held lock).
        self._buf = bytearray()
        self._lock = threading.Lock()

    def urandom(self, n: int) -> bytes:
        if n > _RANDOM_BATCH // 4:
            return os.urandom(n)
        with self._lock:
            if len(self._buf) < n:
                self._buf = bytearray(os.urandom(_RANDOM_BATCH))
            out = bytes(self._buf[:n])
            del self._buf[:n]
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def buffer_padding_randomness() -> bool:
    """Install the batched ``urandom`` for asyncssh's packets (idempotent)."""
    module: Any = asyncssh.connection
    current = getattr(module, "os", None)
    if isinstance(current, _BufferedRandomOs):
        return True
    if current is not os:
        return False
    module.os = _BufferedRandomOs()
    return True


def log_lazily() -> bool:
    """Make asyncssh's loggers look at the level before they format (idempotent).

    ``SSHLogger.log`` turns its list, tuple and bytes arguments into text before
    ``LoggerAdapter.log`` asks whether the level is enabled, and
    ``SSHPacketLogger._log_packet`` formats a packet's name and size for ``SSHLogger.packet``,
    which drops it below debug level 3: per SFTP request and per packet, for nothing unless
    asyncssh logs at DEBUG. The same records come out when it does.
    """
    log: Any = getattr(SSHLogger, "log", None)
    log_packet: Any = getattr(SSHPacketLogger, "_log_packet", None)
    if getattr(log, "lazy", False):
        return True
    if not callable(log) or not callable(log_packet) or not hasattr(SSHLogger, "_debug_level"):
        return False

    def lazy_log(self: SSHLogger, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            log(self, level, msg, *args, **kwargs)

    def lazy_log_packet(self: SSHPacketLogger, *args: Any, **kwargs: Any) -> None:
        logger: Any = self.logger
        if logger._debug_level >= 3 and logger.isEnabledFor(logging.DEBUG):
            log_packet(self, *args, **kwargs)

    lazy_log.lazy = True  # type: ignore[attr-defined]
    SSHLogger.log = lazy_log  # type: ignore[method-assign]
    SSHPacketLogger._log_packet = lazy_log_packet  # type: ignore[method-assign]
    return True
