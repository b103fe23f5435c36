"""The metadata store: SQLAlchemy Core schema, Alembic migrations and queries.

Runs on CockroachDB (``cockroachdb+asyncpg://``), PostgreSQL (``postgresql+asyncpg://``) and,
for the embedded default, SQLite (``sqlite+aiosqlite://``). Public interface below.
"""

from .migrate import (
    SchemaMismatch,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from .recommend import AssetBrief, EventRecord, ModelRecord, RecommenderCatalog
from .records import (
    Asset,
    AssetChanges,
    AssetNotFound,
    AssetPage,
    AssetVersion,
    BlobRecord,
    CatalogError,
    TokenRecord,
    UnknownBlob,
    VersionConflict,
)
from .store import Catalog, create_engine, merge_patch
from .transactions import CatalogBusy, is_full, is_refused, transaction

__all__ = [
    "Asset",
    "AssetBrief",
    "AssetChanges",
    "AssetNotFound",
    "AssetPage",
    "AssetVersion",
    "BlobRecord",
    "Catalog",
    "CatalogBusy",
    "CatalogError",
    "EventRecord",
    "ModelRecord",
    "RecommenderCatalog",
    "SchemaMismatch",
    "TokenRecord",
    "UnknownBlob",
    "VersionConflict",
    "check_schema",
    "create_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_full",
    "is_refused",
    "merge_patch",
    "transaction",
    "upgrade",
]
