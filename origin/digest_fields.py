"""``Repr-Digest`` and ``Content-Digest`` (RFC 9530), SHA-256 only."""

from __future__ import annotations

import base64

import http_sfv

SHA256_KEY = "sha-256"


class DigestFieldError(ValueError):
    pass


def format_sha256(sha256: bytes) -> str:
    return f"{SHA256_KEY}=:{base64.b64encode(sha256).decode()}:"


def parse_sha256(header: str) -> bytes | None:
    """The SHA-256 a client declared, None if it declared only other algorithms."""
    field = http_sfv.Dictionary()  # type: ignore[attr-defined]
    try:
        field.parse(header.encode("latin-1"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise DigestFieldError(f"not a structured-field dictionary: {header!r}") from exc
    if SHA256_KEY not in field:
        return None
    value = field[SHA256_KEY].value
    if not isinstance(value, bytes) or len(value) != 32:
        raise DigestFieldError(f"{SHA256_KEY} must be a 32-byte byte sequence (:base64:)")
    return value
