"""The asset rows of the HTTP contract: create, read (JSON-LD), patch, list, content."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from blobstore import Digest, DigestError

from . import etags, problems
from .appkeys import CATALOG, STORE, TIERS
from .auth import require
from .blob_routes import blob_facts
from .catalog import (
    Asset,
    AssetChanges,
    AssetNotFound,
    CatalogBusy,
    UnknownBlob,
    VersionConflict,
)
from .expect import expecting
from .json_body import MAX_JSON_BODY, read_json
from .jsonld import LD_JSON, asset_document, asset_json
from .problems import Problem
from .query import page_limit
from .recommend_routes import note_content_download

_KIND = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_MAX_NAME = 512
_MAX_PAGE = 500
_JSON_TYPES = ("application/json", "application/merge-patch+json")
_CREATE_FIELDS = frozenset({"name", "kind", "blob", "attributes"})
_PATCH_FIELDS = frozenset({"name", "blob", "attributes", "version"})
# A conditional PATCH whose asset keeps changing under it is retried, then answered 503 busy.
_CONDITIONAL_ATTEMPTS = 10


def _asset_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["asset_id"])
    except ValueError:
        raise problems.not_found(f"no asset {request.match_info['asset_id']!r}") from None


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type not in _JSON_TYPES:
        raise problems.bad_request("bad-json", "send the body as application/json")
    doc = await read_json(request, MAX_JSON_BODY)
    if not isinstance(doc, dict):
        raise problems.bad_request("bad-json", "the body must be a JSON object")
    return doc


def _known_fields(doc: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise problems.bad_request("bad-json", f"unknown fields: {sorted(unknown)}")


def _field(doc: dict[str, Any], key: str, kind: type, *, required: bool) -> Any:
    if key not in doc:
        if required:
            raise problems.bad_request("bad-json", f"{key!r} is required")
        return None
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise problems.bad_request("bad-json", f"{key!r} must be a {kind.__name__}")
    return value


def _name(value: Any) -> Any:
    if value is not None and not 0 < len(value) <= _MAX_NAME:
        raise problems.bad_request("bad-json", f"'name' must be 1 to {_MAX_NAME} characters")
    return value


def _blob(value: Any) -> Any:
    if value is None:
        return None
    try:
        return Digest(value).hex
    except DigestError as exc:
        raise problems.bad_request("bad-digest", str(exc)) from None


async def _heal_unknown_blob(request: web.Request, digest: str) -> bool:
    """A blob the store holds but the catalog missed (a crash between the two): record it."""
    info = await request.app[STORE].stat(Digest(digest))
    if info is None:
        return False
    facts = await blob_facts(request.app[TIERS].durable, info)
    await request.app[CATALOG].record_blob(info, facts)
    return True


def _unknown_blob(exc: UnknownBlob) -> Problem:
    return Problem(422, "unknown-blob", "Unknown blob", str(exc), extra={"blob": exc.digest})


def _wants_plain_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and LD_JSON not in accept


def _opaque_tags(asset_id: uuid.UUID, version: int) -> tuple[str, str]:
    """The entity tags (unquoted) of one version: its JSON-LD and its plain JSON document.

    Two bodies, two strong tags (RFC 9110 8.8.3): a cache or a client holding one document
    never takes the other for it. The JSON-LD tag is the one the origin always sent."""
    return f"{asset_id}.{version}", f"{asset_id}.{version}.json"


def _opaque_tag(request: web.Request, asset: Asset) -> str:
    """The tag of the representation this request gets."""
    ld, plain = _opaque_tags(asset.id, asset.version)
    return plain if _wants_plain_json(request) else ld


async def _render(request: web.Request, asset: Asset, status: int = 200) -> web.Response:
    blob = await request.app[CATALOG].blob(asset.blob_digest)
    headers = {"ETag": etags.strong_etag(_opaque_tag(request, asset)), "Vary": "Accept"}
    if _wants_plain_json(request):
        return web.json_response(asset_json(asset, blob), status=status, headers=headers)
    base = f"{request.scheme}://{request.host}"
    return web.json_response(
        asset_document(asset, blob, base), status=status, headers=headers, content_type=LD_JSON
    )


def _precondition_failed(asset: Asset, header: str) -> Problem:
    return Problem(
        412, "precondition-failed", "Precondition failed",
        f"{header} does not hold for the asset at version {asset.version}",
        extra={"current": asset.version},
    )  # fmt: skip


def _failed_precondition(request: web.Request, asset: Asset, tags: Sequence[str]) -> str | None:
    """The conditional header that does not hold for ``asset`` (RFC 9110 13.2.2 order), or
    None. ``tags`` are the representations' tags a header is compared with."""
    if_match = request.headers.get("If-Match")
    if if_match is not None and not etags.match(if_match, tags):
        return "If-Match"
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and any(etags.none_match(if_none_match, t) for t in tags):
        return "If-None-Match"
    return None


async def create_asset(request: web.Request) -> web.Response:
    token = await require(request, "write")
    doc = await _json_object(request)
    _known_fields(doc, _CREATE_FIELDS)
    name: str = _name(_field(doc, "name", str, required=True))
    kind: str = _field(doc, "kind", str, required=True)
    if not _KIND.fullmatch(kind):
        raise problems.bad_request("bad-json", "'kind' must match [a-z0-9][a-z0-9_.-]{0,63}")
    digest: str = _blob(_field(doc, "blob", str, required=True))
    attributes = _field(doc, "attributes", dict, required=False) or {}
    catalog = request.app[CATALOG]

    async def create() -> Asset:
        return await catalog.create_asset(
            name=name, kind=kind, blob_digest=digest, attributes=attributes, owner=token.subject
        )

    try:
        asset = await create()
    except UnknownBlob as exc:
        if not await _heal_unknown_blob(request, digest):
            raise _unknown_blob(exc) from None
        asset = await create()
    response = await _render(request, asset, status=201)
    response.headers["Location"] = f"/assets/{asset.id}"
    return response


async def get_asset(request: web.Request) -> web.Response:
    asset = await request.app[CATALOG].asset(_asset_id(request))
    if asset is None:
        raise problems.not_found(f"no asset {request.match_info['asset_id']}")
    # The conditionals compare with the tag of the representation negotiated.
    tag = _opaque_tag(request, asset)
    failed = _failed_precondition(request, asset, (tag,))
    if failed == "If-None-Match":  # on a GET or HEAD, "not modified"
        return web.Response(status=304, headers={"ETag": etags.strong_etag(tag), "Vary": "Accept"})
    if failed is not None:
        raise _precondition_failed(asset, failed)
    return await _render(request, asset)


async def patch_asset(request: web.Request) -> web.Response:
    token = await require(request, "write")
    asset_id = _asset_id(request)
    doc = await _json_object(request)
    _known_fields(doc, _PATCH_FIELDS)
    changes = AssetChanges(
        name=_name(_field(doc, "name", str, required=False)),
        blob_digest=_blob(_field(doc, "blob", str, required=False)),
        attributes_patch=_field(doc, "attributes", dict, required=False),
    )
    expected = _field(doc, "version", int, required=False)
    catalog = request.app[CATALOG]
    current = await catalog.asset(asset_id)
    if current is None:
        raise problems.not_found(f"no asset {asset_id}")
    if current.owner != token.subject and not token.allows("admin"):
        raise problems.forbidden("admin")
    # If-Match and If-None-Match are checked against the version they were evaluated on, in
    # the update's transaction (as a "version"), so a write that slips in between is seen.
    conditional = "If-Match" in request.headers or "If-None-Match" in request.headers

    async def update(if_version: int | None) -> Asset:
        try:
            return await catalog.update_asset(
                asset_id, changes, changed_by=token.subject, if_version=if_version
            )
        except UnknownBlob as exc:
            if changes.blob_digest is None or not await _heal_unknown_blob(request, exc.digest):
                raise _unknown_blob(exc) from None
            return await catalog.update_asset(
                asset_id, changes, changed_by=token.subject, if_version=if_version
            )

    def failed_on(asset: Asset) -> str | None:
        if not conditional:
            return None
        return _failed_precondition(request, asset, _opaque_tags(asset.id, asset.version))

    for _ in range(_CONDITIONAL_ATTEMPTS):
        if (failed := failed_on(current)) is not None:
            raise _precondition_failed(current, failed)
        try:
            asset = await update(current.version if conditional and expected is None else expected)
            break
        except AssetNotFound:
            raise problems.not_found(f"no asset {asset_id}") from None
        except VersionConflict as exc:
            if not conditional:
                raise _version_conflict(exc) from None
            # The asset moved on since it was read: the preconditions are evaluated again on
            # what it is now, and come first (RFC 9110 13.2.2); then "version".
            moved = await catalog.asset(asset_id)
            if moved is None:
                raise problems.not_found(f"no asset {asset_id}") from None
            current = moved
            if expected is not None and failed_on(current) is None:
                raise _version_conflict(VersionConflict(expected, current.version)) from None
    else:  # the asset moved on between each read and write (If-Match: * under contention)
        raise CatalogBusy(f"asset {asset_id} changed under {_CONDITIONAL_ATTEMPTS} attempts")
    return await _render(request, asset)


def _version_conflict(exc: VersionConflict) -> Problem:
    return Problem(
        409, "version-conflict", "Version conflict", str(exc),
        extra={"expected": exc.expected, "current": exc.current},
    )  # fmt: skip


async def list_assets(request: web.Request) -> web.Response:
    query = request.query
    limit = page_limit(query, default=50, maximum=_MAX_PAGE)
    try:
        after = uuid.UUID(query["after"]) if "after" in query else None
    except ValueError:
        raise problems.bad_request("bad-query", "after must be an asset id") from None
    for key in ("kind", "owner", "name"):
        # No asset's text holds a NUL (bodies cannot carry one), and PostgreSQL refuses one in
        # a query: the client's bug, told as such rather than answered with an empty page.
        if "\x00" in query.get(key, ""):
            raise problems.bad_request("bad-query", f"{key} must not hold U+0000 (NUL)")
    page = await request.app[CATALOG].list_assets(
        kind=query.get("kind"),
        owner=query.get("owner"),
        name_prefix=query.get("name"),
        after=after,
        limit=limit,
    )
    body: dict[str, Any] = {"items": [asset_json(a) for a in page.items], "next": None}
    if page.next_after is not None:
        body["next"] = str(request.rel_url.update_query(after=str(page.next_after)))
    return web.json_response(body)


async def asset_versions(request: web.Request) -> web.Response:
    asset_id = _asset_id(request)
    versions = await request.app[CATALOG].versions(asset_id)
    if not versions:
        raise problems.not_found(f"no asset {asset_id}")
    return web.json_response(
        {
            "versions": [
                {
                    "version": v.version, "name": v.name, "blob": v.blob_digest,
                    "attributes": v.attributes, "changed_by": v.changed_by,
                    "created_at": v.created_at.isoformat(),
                }
                for v in versions
            ]
        }
    )  # fmt: skip


async def asset_content(request: web.Request) -> web.Response:
    """A redirect to the immutable blob URL, so edges cache the bytes under one name."""
    asset = await request.app[CATALOG].asset(_asset_id(request))
    if asset is None:
        raise problems.not_found(f"no asset {request.match_info['asset_id']}")
    await note_content_download(request, asset.id)
    return web.Response(
        status=302,
        headers={"Location": f"/blobs/{asset.blob_digest}", "Cache-Control": "no-cache"},
    )


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/assets", create_asset, expect_handler=expecting())
    router.add_get("/assets", list_assets)
    router.add_get("/assets/{asset_id}", get_asset)
    router.add_patch("/assets/{asset_id}", patch_asset, expect_handler=expecting())
    router.add_get("/assets/{asset_id}/versions", asset_versions)
    router.add_get("/assets/{asset_id}/content", asset_content)
