"""What the catalog returns: plain frozen records, never rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class BlobRecord:
    digest: str
    size: int
    content_type: str
    sha256: str
    facts: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Asset:
    id: UUID
    name: str
    kind: str
    blob_digest: str
    attributes: dict[str, Any]
    owner: str
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AssetVersion:
    asset_id: UUID
    version: int
    name: str
    blob_digest: str
    attributes: dict[str, Any]
    changed_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AssetPage:
    items: list[Asset]
    next_after: UUID | None  # pass as ``after`` for the next page; None on the last one


@dataclass(frozen=True, slots=True)
class AssetChanges:
    """A PATCH: each field None means "unchanged"; attributes is an RFC 7396 merge patch."""

    name: str | None = None
    blob_digest: str | None = None
    attributes_patch: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    subject: str
    scopes: tuple[str, ...]
    created_at: datetime


class CatalogError(Exception):
    pass


class UnknownBlob(CatalogError):
    def __init__(self, digest: str) -> None:
        super().__init__(f"no blob {digest} is stored; upload it first")
        self.digest = digest


class AssetNotFound(CatalogError):
    pass


class VersionConflict(CatalogError):
    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"the asset is at version {current}, not {expected}")
        self.expected = expected
        self.current = current
