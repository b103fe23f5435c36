"""Blobs, assets and their version history.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from origin.catalog.schema import Json

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("facts", Json, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_blobs_sha256", "blobs", ["sha256"])
    op.create_table(
        "assets",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column(
            "blob_digest",
            sa.String(64),
            sa.ForeignKey("blobs.digest", name="fk_assets_blob_digest_blobs"),
            nullable=False,
        ),
        sa.Column("attributes", Json, nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_assets_kind_id", "assets", ["kind", "id"])
    op.create_index("ix_assets_owner_id", "assets", ["owner", "id"])
    op.create_index("ix_assets_name", "assets", ["name"])
    op.create_index("ix_assets_blob_digest", "assets", ["blob_digest"])
    op.create_table(
        "asset_versions",
        sa.Column(
            "asset_id",
            sa.Uuid,
            sa.ForeignKey("assets.id", name="fk_asset_versions_asset_id_assets"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column(
            "blob_digest",
            sa.String(64),
            sa.ForeignKey("blobs.digest", name="fk_asset_versions_blob_digest_blobs"),
            nullable=False,
        ),
        sa.Column("attributes", Json, nullable=False),
        sa.Column("changed_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("asset_versions")
    op.drop_index("ix_assets_blob_digest", "assets")
    op.drop_index("ix_assets_name", "assets")
    op.drop_index("ix_assets_owner_id", "assets")
    op.drop_index("ix_assets_kind_id", "assets")
    op.drop_table("assets")
    op.drop_index("ix_blobs_sha256", "blobs")
    op.drop_table("blobs")
