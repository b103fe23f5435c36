"""An asset as JSON-LD: a schema.org ``3DModel``, plus the project's own terms.

The context is inline (never a remote URL), so clients and tests can expand it offline. Terms
that schema.org lacks live in the project vocabulary ``urn:asset-origin:vocab:`` (prefix
``ao``), documented in docs/VOCABULARY.md. Attributes and 3D facts are JSON literals
(``@type: @json``): they keep their shape through expansion, whatever keys a client chose.
"""

from __future__ import annotations

from typing import Any

from .catalog import Asset, BlobRecord

LD_JSON = "application/ld+json"
VOCAB = "urn:asset-origin:vocab:"

CONTEXT: dict[str, Any] = {
    "@vocab": "https://schema.org/",
    "ao": VOCAB,
    "kind": {"@id": "ao:kind"},
    "attributes": {"@id": "ao:attributes", "@type": "@json"},
    "facts": {"@id": "ao:facts", "@type": "@json"},
    "contentUrl": {"@type": "@id"},
    "dateCreated": {"@type": "https://schema.org/DateTime"},
    "dateModified": {"@type": "https://schema.org/DateTime"},
}


def asset_document(asset: Asset, blob: BlobRecord | None, base_url: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": f"{base_url}/assets/{asset.id}",
        "@type": "3DModel",
        "identifier": str(asset.id),
        "name": asset.name,
        "kind": asset.kind,
        "contentUrl": f"{base_url}/blobs/{asset.blob_digest}",
        "dateCreated": asset.created_at.isoformat(),
        "dateModified": asset.updated_at.isoformat(),
        "author": {"@type": "Person", "identifier": asset.owner},
        "version": asset.version,
        "attributes": asset.attributes,
    }
    if blob is not None:
        doc["contentSize"] = blob.size
        doc["encodingFormat"] = blob.content_type
        doc["sha256"] = blob.sha256
        if blob.facts is not None:
            doc["facts"] = blob.facts
    return doc


def asset_json(asset: Asset, blob: BlobRecord | None = None) -> dict[str, Any]:
    """The plain JSON form (``Accept: application/json``) and the form used in listings."""
    doc: dict[str, Any] = {
        "id": str(asset.id),
        "name": asset.name,
        "kind": asset.kind,
        "blob": asset.blob_digest,
        "content_url": f"/blobs/{asset.blob_digest}",
        "attributes": asset.attributes,
        "owner": asset.owner,
        "version": asset.version,
        "created_at": asset.created_at.isoformat(),
        "updated_at": asset.updated_at.isoformat(),
    }
    if blob is not None:
        doc |= {"size": blob.size, "content_type": blob.content_type, "sha256": blob.sha256}
        doc["facts"] = blob.facts
    return doc
