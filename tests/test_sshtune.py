"""blobstore.sshtune's keyed AES-GCM shim is asyncssh's own, byte for byte, and its lazy loggers
log what asyncssh's would (no server needed; tests/test_sftp_backend.py runs both against
sshd)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import asyncssh.encryption
import asyncssh.logging
import pytest
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.packet import SSHPacketLogger
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from blobstore.sshtune import _KeyedGCMCipher, keep_gcm_keys, log_lazily

CIPHERS = st.sampled_from([("aes128-gcm", 16), ("aes256-gcm", 32)])
# (header, payload) per packet; the header is the 4-byte packet length, as asyncssh sends it.
PACKETS = st.lists(st.tuples(st.binary(min_size=4, max_size=4), st.binary(max_size=4096)))


@given(CIPHERS, st.data(), PACKETS)
def test_sealing_matches_asyncssh(
    cipher: tuple[str, int], data: st.DataObject, packets: list[tuple[bytes, bytes]]
) -> None:
    name, key_size = cipher
    key = data.draw(st.binary(min_size=key_size, max_size=key_size))
    # The invocation counter at the top of its range, too, where asyncssh wraps it.
    iv = data.draw(st.binary(min_size=4, max_size=4)) + data.draw(
        st.sampled_from([bytes(8), b"\xff" * 8, b"\x00\x01" * 4])
    )
    theirs, ours = GCMCipher(name, key, iv), _KeyedGCMCipher(name, key, iv)
    for header, payload in packets:
        assert ours.encrypt_and_sign(header, payload) == theirs.encrypt_and_sign(header, payload)


@given(CIPHERS, st.binary(min_size=32, max_size=32), PACKETS, st.integers(min_value=0))
def test_opening_round_trips_and_rejects_a_flipped_bit(
    cipher: tuple[str, int], key_material: bytes, packets: list[tuple[bytes, bytes]], bit: int
) -> None:
    name, key_size = cipher
    key, iv = key_material[:key_size], key_material[-12:]
    sender, receiver = GCMCipher(name, key, iv), _KeyedGCMCipher(name, key, iv)
    for header, payload in packets:
        sealed, tag = sender.encrypt_and_sign(header, payload)
        body = sealed[len(header) :]
        assert receiver.verify_and_decrypt(header, body, tag) == payload
    # A damaged packet is refused, and the nonce still advances as asyncssh's does.
    header, payload = b"\x00\x00\x00\x10", b"sixteen bytes..."
    sealed, tag = sender.encrypt_and_sign(header, payload)
    damaged = bytearray(sealed[4:] + tag)
    damaged[bit % len(damaged)] ^= 1 << (bit % 8)
    assert receiver.verify_and_decrypt(header, bytes(damaged[:-16]), bytes(damaged[-16:])) is None
    sealed, tag = sender.encrypt_and_sign(header, payload)
    assert receiver.verify_and_decrypt(header, sealed[4:], tag) == payload


def test_installed_only_over_the_internals_it_was_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encryption = vars(asyncssh.encryption)
    monkeypatch.setattr(asyncssh.encryption, "GCMCipher", GCMCipher)  # as asyncssh ships it
    assert keep_gcm_keys()
    assert encryption["GCMCipher"] is _KeyedGCMCipher
    assert keep_gcm_keys()  # idempotent

    # An upgrade that keeps the nonce under another name: the shim would find no _iv.
    def renamed_init(self: Any, cipher_name: str, key: bytes, iv: bytes) -> None:
        self._aes, self._nonce = AESGCM(key), iv

    def renamed_update(self: Any) -> None:
        counter = (int.from_bytes(self._nonce[4:], "big") + 1) % 2**64
        self._nonce = self._nonce[:4] + counter.to_bytes(8, "big")

    def renamed_seal(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = self._aes.encrypt(self._nonce, data, header)
        self._update_iv()
        return header + sealed[:-16], sealed[-16:]

    monkeypatch.setattr(asyncssh.encryption, "GCMCipher", GCMCipher)
    monkeypatch.setattr(GCMCipher, "__init__", renamed_init)
    monkeypatch.setattr(GCMCipher, "_update_iv", renamed_update)
    monkeypatch.setattr(GCMCipher, "encrypt_and_sign", renamed_seal)
    assert not keep_gcm_keys()
    assert encryption["GCMCipher"] is GCMCipher


def test_lazy_logging_logs_what_asyncssh_would(caplog: pytest.LogCaptureFixture) -> None:
    """Below DEBUG nothing is formatted; at DEBUG the records are asyncssh's, arguments
    turned into text as it does, and packet lines only at its debug level 3."""
    assert log_lazily()
    assert log_lazily()  # idempotent
    logger = asyncssh.logging.logger.get_child("sftp", "chan=1")
    formatted: list[object] = []

    class Loud:
        def __str__(self) -> str:
            formatted.append(self)
            return "loud"

    with caplog.at_level(logging.INFO, logger="asyncssh"):
        logger.debug1("never %s", [Loud()])  # asyncssh joins a list's items as text
    assert formatted == []
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        logger.debug1("sent %s for %s", [b"a", "b"], Loud())
        handler: Any = SimpleNamespace(logger=logger, _handler_names={94: "MSG_CHANNEL_DATA"})
        SSHPacketLogger._log_packet(handler, "Received", 94, 7, b"abc", "")
        level = asyncssh.logging.SSHLogger._debug_level
        asyncssh.set_debug_level(3)
        try:
            SSHPacketLogger._log_packet(handler, "Received", 94, 7, b"abc", "")
        finally:
            asyncssh.set_debug_level(level)
    assert [r.getMessage().split("\n")[0] for r in caplog.records] == [
        "[chan=1] sent a,b for loud",
        "[chan=1, pktid=7] Received MSG_CHANNEL_DATA (94), 3 bytes",
    ]
