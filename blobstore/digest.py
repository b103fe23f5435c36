"""The BLAKE3-256 content address of a blob, parsed and validated once at the edge."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX64 = re.compile(r"[0-9a-f]{64}")


class DigestError(ValueError):
    """A string that is not 64 lowercase hex characters was offered as a digest."""


@dataclass(frozen=True, slots=True)
class Digest:
    """A BLAKE3-256 digest; ``str(d)`` is its canonical 64-character lowercase hex form."""

    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or _HEX64.fullmatch(self.hex) is None:
            raise DigestError(
                f"not a BLAKE3-256 digest (64 lowercase hex characters): {self.hex!r}"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        return cls(text)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Digest:
        if len(raw) != 32:
            raise DigestError(f"a BLAKE3-256 digest is 32 bytes, got {len(raw)}")
        return cls(raw.hex())

    def shard(self) -> tuple[str, str]:
        """The two directory levels (``ab``, ``cd``) a blob is stored under."""
        return self.hex[0:2], self.hex[2:4]

    def __str__(self) -> str:
        return self.hex


# The all-zero digest: no blob has it (finding an input that BLAKE3 maps to it is a preimage
# attack). For asking a store something without touching any blob (readiness, capabilities).
NEVER_STORED = Digest("0" * 64)


def is_sha256_hex(text: str) -> bool:
    """SHA-256 digests share BLAKE3-256's textual form: 64 lowercase hex characters."""
    return _HEX64.fullmatch(text) is not None
