"""Every asset row of the contract, each error included, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pyld import jsonld

from origin.appkeys import TOKENS

from .conftest import AUTH, Client

SCHEMA = "https://schema.org/"


async def upload(api: Client, data: bytes | None = None) -> str:
    resp = await api.post("/blobs", data=data or os.urandom(1000), headers=AUTH)
    assert resp.status in (200, 201)
    digest: str = (await resp.json())["digest"]
    return digest


async def create(api: Client, **fields: object) -> dict[str, Any]:
    body = {"name": "Chair", "kind": "prop", "blob": await upload(api), **fields}
    resp = await api.post("/assets", json=body, headers=AUTH)
    assert resp.status == 201, await resp.text()
    doc: dict[str, Any] = await resp.json(content_type=None)
    return doc


async def problem(resp: object, status: int, slug: str) -> None:
    from aiohttp import ClientResponse

    assert isinstance(resp, ClientResponse)
    body = await resp.json(content_type=None)
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json"
    assert body["type"] == f"/problems/{slug}"


# -- POST /assets -----------------------------------------------------------------------------


async def test_create_answers_json_ld(api: Client) -> None:
    digest = await upload(api, b"glb-ish bytes")
    body = {"name": "Chair", "kind": "prop", "blob": digest, "attributes": {"seats": 1}}
    resp = await api.post("/assets", json=body, headers=AUTH)
    assert resp.status == 201
    assert resp.content_type == "application/ld+json"
    doc = await resp.json(content_type=None)
    assert resp.headers["Location"] == f"/assets/{doc['identifier']}"
    assert doc["@type"] == "3DModel"
    assert doc["name"] == "Chair"
    assert doc["contentUrl"].endswith(f"/blobs/{digest}")
    assert doc["contentSize"] == len(b"glb-ish bytes")
    assert doc["version"] == 1
    assert doc["author"]["identifier"] == "admin"
    assert doc["attributes"] == {"seats": 1}


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        ({"name": "x", "kind": "prop", "blob": "0" * 64}, 422, "unknown-blob"),
        ({"name": "x", "kind": "prop"}, 400, "bad-json"),
        ({"name": "", "kind": "prop", "blob": "0" * 64}, 400, "bad-json"),
        ({"name": "x", "kind": "Bad Kind", "blob": "0" * 64}, 400, "bad-json"),
        ({"name": "x", "kind": "prop", "blob": "nope"}, 400, "bad-digest"),
        ({"name": "x", "kind": "prop", "blob": "0" * 64, "attributes": [1]}, 400, "bad-json"),
        ({"name": 5, "kind": "prop", "blob": "0" * 64}, 400, "bad-json"),
    ],
)
async def test_create_errors(api: Client, body: dict[str, object], status: int, slug: str) -> None:
    await problem(await api.post("/assets", json=body, headers=AUTH), status, slug)


async def test_create_needs_json_and_a_token(api: Client) -> None:
    resp = await api.post(
        "/assets", data=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
    )
    await problem(resp, 400, "bad-json")
    await problem(await api.post("/assets", json={}), 401, "unauthorized")


# -- GET /assets/{id} -------------------------------------------------------------------------


async def test_get_json_ld_expands_with_schema_org_terms(api: Client) -> None:
    made = await create(api, attributes={"polys": 1200, "tags": ["wood"]})
    resp = await api.get(f"/assets/{made['identifier']}")
    assert resp.status == 200
    assert resp.content_type == "application/ld+json"
    doc = await resp.json(content_type=None)
    expanded = await asyncio.to_thread(jsonld.expand, doc)
    (node,) = expanded
    assert node["@type"] == [f"{SCHEMA}3DModel"]
    assert node[f"{SCHEMA}name"] == [{"@value": "Chair"}]
    assert node[f"{SCHEMA}contentUrl"][0]["@id"].endswith(f"/blobs/{made['contentUrl'][-64:]}")
    for term in ("encodingFormat", "sha256", "dateCreated", "dateModified", "author", "version"):
        assert f"{SCHEMA}{term}" in node, term
    attributes = node["urn:asset-origin:vocab:attributes"][0]
    assert attributes == {"@type": "@json", "@value": {"polys": 1200, "tags": ["wood"]}}


async def test_get_plain_json_on_request_and_404s(api: Client) -> None:
    made = await create(api)
    resp = await api.get(f"/assets/{made['identifier']}", headers={"Accept": "application/json"})
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["id"] == made["identifier"]
    assert doc["kind"] == "prop"
    await problem(await api.get(f"/assets/{uuid.uuid4()}"), 404, "not-found")
    await problem(await api.get("/assets/not-a-uuid"), 404, "not-found")


# -- PATCH ------------------------------------------------------------------------------------


async def test_patch_makes_versions(api: Client) -> None:
    made = await create(api, attributes={"a": 1, "b": 2})
    url = f"/assets/{made['identifier']}"
    newer = await upload(api)
    resp = await api.patch(
        url, json={"blob": newer, "attributes": {"b": None, "c": 3}, "name": "Stool"}, headers=AUTH
    )
    assert resp.status == 200
    doc = await resp.json(content_type=None)
    assert doc["version"] == 2
    assert doc["name"] == "Stool"
    assert doc["attributes"] == {"a": 1, "c": 3}
    assert doc["contentUrl"].endswith(newer)
    versions = await (await api.get(f"{url}/versions")).json()
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert versions["versions"][0]["name"] == "Chair"


async def test_patch_errors(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    await problem(
        await api.patch(url, json={"version": 7, "name": "x"}, headers=AUTH),
        409,
        "version-conflict",
    )
    await problem(await api.patch(url, json={"blob": "1" * 64}, headers=AUTH), 422, "unknown-blob")
    await problem(await api.patch(url, json={"colour": "red"}, headers=AUTH), 400, "bad-json")
    bad = await api.patch(url, data=b"{", headers={**AUTH, "Content-Type": "application/json"})
    await problem(bad, 400, "bad-json")
    await problem(
        await api.patch(f"/assets/{uuid.uuid4()}", json={}, headers=AUTH), 404, "not-found"
    )
    await problem(await api.patch(url, json={"name": "x"}), 401, "unauthorized")
    _token, other = await api.app[TOKENS].create("someone-else", ("write",))
    resp = await api.patch(url, json={"name": "x"}, headers={"Authorization": f"Bearer {other}"})
    await problem(resp, 403, "forbidden")


async def test_racing_patches_never_lose_an_update(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    both = await asyncio.gather(
        *(api.patch(url, json={"attributes": {f"k{i}": i}}, headers=AUTH) for i in range(2))
    )
    assert [r.status for r in both] == [200, 200]
    doc = await (await api.get(url, headers={"Accept": "application/json"})).json()
    assert doc["version"] == 3
    assert doc["attributes"] == {"k0": 0, "k1": 1}
    # With the version they read, one wins and the other is told: never silently overwritten.
    racing = await asyncio.gather(
        *(api.patch(url, json={"version": 3, "name": f"n{i}"}, headers=AUTH) for i in range(2))
    )
    assert sorted(r.status for r in racing) == [200, 409]
    history = await (await api.get(f"{url}/versions")).json()
    assert len(history["versions"]) == 4


# -- listing and content ----------------------------------------------------------------------


async def test_list_filters_and_pages(api: Client) -> None:
    digest = await upload(api)
    for i in range(7):
        body = {
            "name": f"{'avatar' if i < 3 else 'world'}-{i}",
            "kind": "avatar" if i < 3 else "world",
            "blob": digest,
        }
        assert (await api.post("/assets", json=body, headers=AUTH)).status == 201
    seen: list[str] = []
    url: str | None = "/assets?limit=3"
    while url:
        page = await (await api.get(url)).json()
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 7
    worlds = await (await api.get("/assets?kind=world")).json()
    assert {i["kind"] for i in worlds["items"]} == {"world"}
    assert len(worlds["items"]) == 4
    named = await (await api.get("/assets?name=avatar-")).json()
    assert len(named["items"]) == 3
    mine = await (await api.get("/assets?owner=admin&kind=avatar")).json()
    assert len(mine["items"]) == 3
    await problem(await api.get("/assets?limit=0"), 400, "bad-query")
    await problem(await api.get("/assets?after=xyz"), 400, "bad-query")


async def test_content_redirects_to_the_blob(api: Client) -> None:
    data = os.urandom(5000)
    digest = await upload(api, data)
    resp = await api.post(
        "/assets", json={"name": "n", "kind": "prop", "blob": digest}, headers=AUTH
    )
    asset_id = (await resp.json(content_type=None))["identifier"]
    redirect = await api.get(f"/assets/{asset_id}/content", allow_redirects=False)
    assert redirect.status == 302
    assert redirect.headers["Location"] == f"/blobs/{digest}"
    followed = await api.get(f"/assets/{asset_id}/content")
    assert await followed.read() == data
    await problem(await api.get(f"/assets/{uuid.uuid4()}/content"), 404, "not-found")


async def test_a_blob_the_catalog_missed_is_healed(api: Client) -> None:
    """A crash between storing a blob and recording it: POST /assets records it then."""
    from blobstore import Expectation
    from origin.appkeys import STORE

    async def body() -> AsyncIterator[bytes]:
        yield b"stored, never recorded"

    info = (await api.app[STORE].put(body(), Expectation())).info
    resp = await api.post(
        "/assets", json={"name": "n", "kind": "prop", "blob": info.digest.hex}, headers=AUTH
    )
    assert resp.status == 201, await resp.text()
    doc = json.loads(await resp.text())
    assert doc["contentSize"] == info.size


async def test_gltf_facts_reach_the_asset_document(api: Client) -> None:
    from .test_gltf import triangle

    glb = triangle().glb()
    resp = await api.post("/blobs", data=glb, headers={**AUTH, "Content-Type": "model/gltf-binary"})
    body = {"name": "tri", "kind": "prop", "blob": (await resp.json())["digest"]}
    made = await (await api.post("/assets", json=body, headers=AUTH)).json(content_type=None)
    facts = made["facts"]
    assert facts["valid"] is True
    assert facts["container"] == "glb"
    assert facts["triangle_count"] == 1
    assert facts["vertex_count"] == 3
    # Broken glTF is stored as bytes, flagged, never a 500.
    broken = b"glTF\x02\x00\x00\x00\xff\xff\xff\x7f" + b"\x00" * 20
    resp = await api.post("/blobs", data=broken, headers=AUTH)
    assert resp.status == 201
    body = {"name": "bad", "kind": "prop", "blob": (await resp.json())["digest"]}
    made = await (await api.post("/assets", json=body, headers=AUTH)).json(content_type=None)
    assert made["facts"]["valid"] is False
    assert made["facts"]["error"]


async def test_a_nul_in_gltf_facts_is_stored_as_a_replacement_character(api: Client) -> None:
    # PostgreSQL's JSONB holds no U+0000: the facts insert was a 500 there.
    doc = b'{"asset": {"version": "2.0", "generator": "a\\u0000b"}, "extensionsUsed": ["x\\u0000"]}'
    resp = await api.post("/blobs", data=doc, headers={**AUTH, "Content-Type": "model/gltf+json"})
    assert resp.status == 201, await resp.text()
    body = {"name": "nul", "kind": "prop", "blob": (await resp.json())["digest"]}
    made = await (await api.post("/assets", json=body, headers=AUTH)).json(content_type=None)
    assert made["facts"]["generator"] == "a\ufffdb"
    assert made["facts"]["extensions_used"] == ["x\ufffd"]


# -- conditional requests and entity tags -----------------------------------------------------

PLAIN = {"Accept": "application/json"}


async def test_each_representation_has_its_own_strong_etag(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    ld, plain = await api.get(url), await api.get(url, headers=PLAIN)
    assert ld.content_type == "application/ld+json"
    assert plain.content_type == "application/json"
    assert await ld.read() != await plain.read()
    assert not ld.headers["ETag"].startswith("W/")
    assert not plain.headers["ETag"].startswith("W/")
    assert ld.headers["ETag"] != plain.headers["ETag"]
    assert "Accept" in ld.headers["Vary"]
    assert "Accept" in plain.headers["Vary"]
    # A representation's tag is the same however often it is asked for.
    assert (await api.get(url, headers=PLAIN)).headers["ETag"] == plain.headers["ETag"]


async def test_get_with_if_none_match_is_a_304_for_that_representation(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    ld_tag = (await api.get(url)).headers["ETag"]
    plain_tag = (await api.get(url, headers=PLAIN)).headers["ETag"]
    for headers, tag in (({}, ld_tag), (PLAIN, plain_tag)):
        for sent in (tag, f"W/{tag}", f'"other", {tag}', "*"):
            resp = await api.get(url, headers={**headers, "If-None-Match": sent})
            assert resp.status == 304, sent
            assert resp.headers["ETag"] == tag
            assert "Accept" in resp.headers["Vary"]
            assert await resp.read() == b""
        head = await api.head(url, headers={**headers, "If-None-Match": tag})
        assert head.status == 304
    # The other representation's tag, or an older version's, is not this one.
    assert (await api.get(url, headers={"If-None-Match": plain_tag})).status == 200
    assert (await api.get(url, headers={**PLAIN, "If-None-Match": ld_tag})).status == 200
    assert (await api.patch(url, json={"name": "Stool"}, headers=AUTH)).status == 200
    resp = await api.get(url, headers={"If-None-Match": ld_tag})
    assert resp.status == 200
    assert (await resp.json(content_type=None))["name"] == "Stool"
    await problem(await api.get(url, headers={"If-Match": ld_tag}), 412, "precondition-failed")


async def test_patch_with_a_stale_if_match_is_a_412_and_changes_nothing(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    first = (await api.get(url)).headers["ETag"]
    assert (await api.patch(url, json={"attributes": {"other": 1}}, headers=AUTH)).status == 200
    resp = await api.patch(
        url, json={"attributes": {"mine": 1}}, headers={**AUTH, "If-Match": first}
    )
    await problem(resp, 412, "precondition-failed")
    doc = await (await api.get(url, headers=PLAIN)).json()
    assert doc["version"] == 2
    assert doc["attributes"] == {"other": 1}
    history = await (await api.get(f"{url}/versions")).json()
    assert len(history["versions"]) == 2


async def test_patch_with_a_current_if_match_lands(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    for version, which in enumerate(("ld", "plain", "list", "star"), start=2):
        ld_tag = (await api.get(url)).headers["ETag"]
        plain_tag = (await api.get(url, headers=PLAIN)).headers["ETag"]
        sent = {
            "ld": ld_tag, "plain": plain_tag, "list": f'"nope", W/{ld_tag}, {plain_tag}',
            "star": "*",
        }[which]  # fmt: skip
        resp = await api.patch(url, json={"name": which}, headers={**AUTH, "If-Match": sent})
        assert resp.status == 200, await resp.text()
        assert (await resp.json(content_type=None))["version"] == version
        assert resp.headers["ETag"] not in (ld_tag, plain_tag)


async def test_patch_if_match_uses_strong_comparison_of_this_asset_s_tags(api: Client) -> None:
    made = await create(api)
    other = await create(api)
    url = f"/assets/{made['identifier']}"
    for sent in (
        'W/"{id}.1"', '"{id}.2"', '"{other}.1"', '"garbage"', "not a tag", '"{id}.1.json-ld"',
        '*, "{id}.1"', "",
    ):  # fmt: skip
        header = sent.format(id=made["identifier"], other=other["identifier"])
        resp = await api.patch(url, json={"name": "x"}, headers={**AUTH, "If-Match": header})
        await problem(resp, 412, "precondition-failed")
    assert (await (await api.get(url, headers=PLAIN)).json())["version"] == 1


async def test_patch_if_none_match_and_the_order_of_answers(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    tag = (await api.get(url)).headers["ETag"]
    for sent in ("*", tag):
        resp = await api.patch(url, json={"name": "x"}, headers={**AUTH, "If-None-Match": sent})
        await problem(resp, 412, "precondition-failed")
    resp = await api.patch(url, json={"name": "x"}, headers={**AUTH, "If-None-Match": '"old"'})
    assert resp.status == 200
    # Preconditions count only for a request that would otherwise succeed: an unknown asset is
    # a 404 and a missing token a 401 whatever If-Match says.
    resp = await api.patch(
        f"/assets/{uuid.uuid4()}", json={"name": "x"}, headers={**AUTH, "If-Match": "*"}
    )
    await problem(resp, 404, "not-found")
    await problem(
        await api.patch(url, json={"name": "x"}, headers={"If-Match": '"x"'}), 401, "unauthorized"
    )
    # With both, If-Match is checked first; a stale "version" is still a 409.
    current = (await api.get(url)).headers["ETag"]
    resp = await api.patch(
        url, json={"name": "y", "version": 1}, headers={**AUTH, "If-Match": current}
    )
    await problem(resp, 409, "version-conflict")
    resp = await api.patch(url, json={"name": "y", "version": 2}, headers={**AUTH, "If-Match": tag})
    await problem(resp, 412, "precondition-failed")


async def test_racing_patches_with_one_if_match_one_wins(api: Client) -> None:
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    tag = (await api.get(url)).headers["ETag"]
    racing = await asyncio.gather(
        *(
            api.patch(url, json={"name": f"n{i}"}, headers={**AUTH, "If-Match": tag})
            for i in range(4)
        )
    )
    assert sorted(r.status for r in racing) == [200, 412, 412, 412]
    history = await (await api.get(f"{url}/versions")).json()
    assert len(history["versions"]) == 2


async def test_a_conditional_patch_that_keeps_losing_its_race_is_a_503_busy(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``If-Match: *`` PATCHes at once on one asset, each allowed a single attempt (10 in
    production): one whose asset changed between its read and its write is answered 503 busy
    with Retry-After, and changes nothing; each 200 is one version, none lost."""
    monkeypatch.setattr("origin.asset_routes._CONDITIONAL_ATTEMPTS", 1)
    made = await create(api)
    url = f"/assets/{made['identifier']}"
    landed: set[int] = set()
    busy = 0
    for round_ in range(5):  # a race is likely in the first round, certain in none
        sent = range(round_ * 100, round_ * 100 + 12)
        racing = await asyncio.gather(
            *(api.patch(url, json={"attributes": {"n": n}}, headers={**AUTH, "If-Match": "*"})
              for n in sent)
        )  # fmt: skip
        for n, resp in zip(sent, racing, strict=True):
            if resp.status == 200:
                landed.add(n)
                continue
            await problem(resp, 503, "busy")
            assert resp.headers["Retry-After"] == "1"
            busy += 1
        if busy:
            break
    assert busy, "no PATCH ever lost its race"
    history = (await (await api.get(f"{url}/versions")).json())["versions"]
    assert len(history) == 1 + len(landed)
    assert {v["attributes"]["n"] for v in history if v["version"] > 1} == landed


# -- the rest of the contract's edges ---------------------------------------------------------


async def test_a_deleted_asset_has_no_versions(api: Client) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import update

    from origin.appkeys import CATALOG
    from origin.catalog.schema import assets

    made = await create(api)
    url = f"/assets/{made['identifier']}"
    assert (await api.get(f"{url}/versions")).status == 200
    async with api.app[CATALOG].engine.begin() as conn:  # a soft delete, as the catalog does
        await conn.execute(
            update(assets)
            .where(assets.c.id == uuid.UUID(made["identifier"]))
            .values(deleted=1, updated_at=datetime.now(UTC))
        )
    await problem(await api.get(url), 404, "not-found")
    await problem(await api.get(f"{url}/versions"), 404, "not-found")
    await problem(await api.get(f"/assets/{uuid.uuid4()}/versions"), 404, "not-found")


@pytest.mark.parametrize("extra", [{"owner": "bob"}, {"version": 1}, {"Name": "x"}])
async def test_create_refuses_unknown_fields(api: Client, extra: dict[str, object]) -> None:
    body = {"name": "Chair", "kind": "prop", "blob": await upload(api), **extra}
    doc = await (await api.post("/assets", json=body, headers=AUTH)).json(content_type=None)
    assert doc["type"] == "/problems/bad-json"
    (field,) = extra
    assert field in doc["detail"]
    listing = await (await api.get("/assets")).json()
    assert listing["items"] == []
