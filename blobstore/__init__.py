"""Content addressing and durable blob backends.

Public interface: the ``Digest`` type, one-pass hashing, the ``BlobBackend`` protocol with its
records and errors, and the backends that implement it.
"""

from .backend import (
    DEFAULT_CONTENT_TYPE,
    NOTHING_EXPECTED,
    BackendUnavailable,
    BlobBackend,
    BlobInfo,
    BlobNotFound,
    BlobStoreError,
    BlobTooLarge,
    DigestMismatch,
    Expectation,
    PutResult,
    StorageFull,
)
from .digest import NEVER_STORED, Digest, DigestError, is_sha256_hex
from .disk import DiskBackend
from .hashing import Hashes, StreamHasher, hash_bytes, update_off_loop
from .sftp import SftpBackend

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "NEVER_STORED",
    "NOTHING_EXPECTED",
    "BackendUnavailable",
    "BlobBackend",
    "BlobInfo",
    "BlobNotFound",
    "BlobStoreError",
    "BlobTooLarge",
    "Digest",
    "DigestError",
    "DigestMismatch",
    "DiskBackend",
    "Expectation",
    "Hashes",
    "PutResult",
    "SftpBackend",
    "StorageFull",
    "StreamHasher",
    "hash_bytes",
    "is_sha256_hex",
    "update_off_loop",
]
