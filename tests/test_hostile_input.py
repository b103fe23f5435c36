"""Input that parses but breaks something later: each is a clear 4xx and changes nothing.

Found by probing a running origin: lone surrogates and NaN in JSON, nesting past the parser's
recursion, Range numbers of thousands of digits, a bearer token that is not UTF-8, and the
expect handlers that run outside the middleware.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import blake3
import pytest
from aiohttp import ClientResponse
from hypothesis import given
from hypothesis import strategies as st

from origin.problems import Problem
from origin.query import page_limit
from origin.recommend_routes import BUFFER

from .conftest import ADMIN_TOKEN, AUTH, Client

DEEP = "[" * 100_000 + "]" * 100_000


async def problem(resp: ClientResponse, status: int, slug: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(await resp.text())
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json"
    assert body["type"] == f"/problems/{slug}"
    return body


async def new_blob(client: Client) -> str:
    resp = await client.post("/blobs", data=os.urandom(64), headers=AUTH)
    assert resp.status == 201
    return str((await resp.json())["digest"])


async def new_asset(client: Client) -> str:
    doc = {"name": "Chair", "kind": "prop", "blob": await new_blob(client)}
    resp = await client.post("/assets", json=doc, headers=AUTH)
    assert resp.status == 201
    return str((await resp.json(content_type=None))["identifier"])


def obj(**members: str) -> str:
    """A JSON object of members given as JSON text, so NaN and lone surrogates go as written."""
    return "{" + ", ".join(f'"{key}": {value}' for key, value in members.items()) + "}"


async def post_text(client: Client, path: str, text: str, method: str = "POST") -> ClientResponse:
    headers = {**AUTH, "Content-Type": "application/json"}
    return await client.request(method, path, data=text.encode(), headers=headers)


async def raw_exchange(client: Client, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request as bytes (aiohttp's client will not send header bytes that are not UTF-8)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


async def test_a_lone_surrogate_in_an_event_is_refused_and_later_events_are_written(
    client: Client,
) -> None:
    asset = await new_asset(client)
    bad = obj(events="[" + obj(user='"x\\ud800"', asset=f'"{asset}"', kind='"download"') + "]")
    doc = await problem(await post_text(client, "/events", bad), 400, "bad-json")
    assert "surrogate" in doc["detail"]
    buffer = client.app[BUFFER]
    assert not buffer.pending_for("x\ud800")
    # Before, the refused event was accepted, failed every write of its batch and held up
    # every event after it.
    resp = await client.post(
        "/events", json={"events": [{"user": "ann", "asset": asset, "kind": "download"}]},
        headers=AUTH,
    )  # fmt: skip
    assert resp.status == 202
    await asyncio.wait_for(buffer.flush(), 10)
    assert buffer.written == 1


@pytest.mark.parametrize(
    "attributes", ['{"x": NaN}', '{"x": -Infinity}', '{"x": Infinity}', '{"x": "\\udfff"}']
)
async def test_assets_take_only_json_that_can_be_sent_back(client: Client, attributes: str) -> None:
    blob = await new_blob(client)
    text = obj(name='"Chair"', kind='"prop"', blob=f'"{blob}"', attributes=attributes)
    await problem(await post_text(client, "/assets", text), 400, "bad-json")
    asset = await new_asset(client)
    await problem(
        await post_text(client, f"/assets/{asset}", obj(attributes=attributes), "PATCH"),
        400, "bad-json",
    )  # fmt: skip
    listing = await client.get("/assets")
    assert [a["id"] for a in json.loads(await listing.text())["items"]] == [asset]


async def test_a_lone_surrogate_in_a_name_is_a_400(client: Client) -> None:
    text = obj(name='"a\\ud800"', kind='"prop"', blob=f'"{await new_blob(client)}"')
    await problem(await post_text(client, "/assets", text), 400, "bad-json")


@pytest.mark.parametrize("path", ["/blobs/missing", "/assets", "/events"])
async def test_json_nested_past_the_parser_is_a_400(client: Client, path: str) -> None:
    doc = await problem(await post_text(client, path, DEEP), 400, "bad-json")
    assert "nested too deeply" in doc["detail"]


async def test_an_oversized_json_body_is_a_413_with_the_limit(client: Client) -> None:
    text = json.dumps({"name": "x" * (2 << 20), "kind": "prop", "blob": "0" * 64})
    doc = await problem(await post_text(client, "/assets", text), 413, "too-large")
    assert doc["limit"] == 1 << 20


async def test_an_event_time_whose_utc_is_before_year_one_is_an_item_error(client: Client) -> None:
    asset = await new_asset(client)
    event = {"user": "ann", "asset": asset, "kind": "download", "at": "0001-01-01T00:30:00+01:00"}
    resp = await client.post("/events", json={"events": [event]}, headers=AUTH)
    doc = await problem(resp, 422, "invalid-events")
    assert [(e["index"], e["field"]) for e in doc["errors"]] == [(0, "at")]


async def test_range_numbers_longer_than_python_converts(client: Client) -> None:
    data = os.urandom(1000)
    resp = await client.post("/blobs", data=data, headers=AUTH)
    digest = (await resp.json())["digest"]
    resp = await client.get(f"/blobs/{digest}", headers={"Range": "bytes=10-" + "9" * 5000})
    assert resp.status == 206
    assert await resp.read() == data[10:]
    resp = await client.get(f"/blobs/{digest}", headers={"Range": "bytes=\u0663-\u0664"})
    assert resp.status == 416


@pytest.mark.parametrize("expect", [False, True])
async def test_a_bearer_token_that_is_not_utf8_is_a_401(client: Client, expect: bool) -> None:
    data = b"x" * 100
    head = (
        f"PUT /blobs/{blake3.blake3(data).hexdigest()} HTTP/1.1\r\nHost: origin\r\n"
        f"Content-Length: {len(data)}\r\n".encode()
        + (b"Expect: 100-continue\r\n" if expect else b"")
        + b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = await raw_exchange(client, head if expect else head + data)
    assert status == 401
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["type"] == "/problems/unauthorized"


@pytest.mark.parametrize("path", ["/events", "/assets", "/blobs/missing", "/blobs"])
async def test_an_unknown_expectation_is_a_417_problem(client: Client, path: str) -> None:
    resp = await client.post(path, data=b"{}", headers={**AUTH, "Expect": "bogus"})
    await problem(resp, 417, "expectation-failed")


async def test_json_routes_send_100_continue(client: Client) -> None:
    resp = await client.post(
        "/blobs/missing", json={"digests": ["0" * 64]}, headers={**AUTH, "Expect": "100-continue"}
    )
    assert resp.status == 200
    assert (await resp.json())["missing"] == ["0" * 64]


@pytest.mark.parametrize("raw", ["\uff15", "+5", " 5", "5_0", "-1", "1e2", "", "0"])
@pytest.mark.parametrize("path", ["/assets", "/users/u1/recommendations"])
async def test_a_limit_is_ascii_digits_only(client: Client, path: str, raw: str) -> None:
    # int() takes all of these but "1e2" and "": one answer under many cache keys.
    await problem(await client.get(path, params={"limit": raw}), 400, "bad-query")
    assert (await client.get(path, params={"limit": "5"})).status == 200


@given(st.text(max_size=12))
def test_page_limit_takes_exactly_the_ascii_numbers_in_range(raw: str) -> None:
    in_range = raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 500
    try:
        assert page_limit({"limit": raw}, default=50, maximum=500) == int(raw)
        assert in_range
    except Problem:
        assert not in_range


@pytest.mark.parametrize(
    "declared", [b"foo", b"a/", b"/", b"model/b c", "model/\u65e5\u672c".encode()]
)
async def test_a_content_type_that_is_no_media_type_is_a_400_and_stores_nothing(
    client: Client, declared: bytes
) -> None:
    data = os.urandom(100)
    digest = blake3.blake3(data).hexdigest()
    status, _, body = await raw_exchange(
        client,
        f"PUT /blobs/{digest} HTTP/1.1\r\nHost: origin\r\nContent-Length: {len(data)}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n".encode()
        + b"Content-Type: " + declared + b"\r\n\r\n" + data,
    )  # fmt: skip
    assert status == 400, body
    assert json.loads(body)["type"] == "/problems/bad-content-type"
    assert (await client.head(f"/blobs/{digest}")).status == 404


@pytest.mark.parametrize(
    ("declared", "served"),
    [("Model/GLTF-Binary; x=1", "model/gltf-binary"), ("", "application/octet-stream")],
)
async def test_a_media_type_is_kept_without_its_parameters(
    client: Client, declared: str, served: str
) -> None:
    data = os.urandom(100)
    digest = blake3.blake3(data).hexdigest()
    resp = await client.put(
        f"/blobs/{digest}", data=data, headers={**AUTH, "Content-Type": declared}
    )
    assert resp.status == 201
    assert (await client.get(f"/blobs/{digest}")).headers["Content-Type"] == served


# -- text and numbers no catalog can store (each on SQLite and on PostgreSQL) -----------------

UNSTORABLE = [
    {"name": '"a\\u0000b"'},
    {"attributes": '{"k": "a\\u0000"}'},
    {"attributes": '{"a\\u0000": 1}'},
    {"attributes": '{"deep": [{"x": ["\\u0000"]}]}'},
    {"attributes": '{"v": 1e400}'},
    {"attributes": '{"v": -1e400}'},
    {"attributes": '{"v": 1' + "0" * 400 + ".5}"},
    {"attributes": '{"v": ' + "9" * 400 + "}"},
    {"attributes": '{"v": -' + "9" * 5000 + "}"},
]


async def test_text_and_numbers_no_catalog_stores_are_a_400(api: Client) -> None:
    """NUL and numbers past a double's range were 500s on PostgreSQL (asyncpg refused the
    NUL, JSONB the 'Infinity' that 1e400 became); 5,000 digits were already refused."""
    blob = await new_blob(api)
    asset = await new_asset(api)
    for members in UNSTORABLE:
        fields = {"name": '"Chair"', "kind": '"prop"', "blob": f'"{blob}"', **members}
        await problem(await post_text(api, "/assets", obj(**fields)), 400, "bad-json")
        await problem(
            await post_text(api, f"/assets/{asset}", obj(**members), "PATCH"), 400, "bad-json"
        )
    listing = json.loads(await (await api.get("/assets")).text())
    assert [(a["id"], a["version"]) for a in listing["items"]] == [(asset, 1)]


ROUND_TRIP = {
    "id": "12345678901234567890",  # a 64-bit id and more: kept exactly
    "negative": "-18446744073709551617",
    "big": "1" + "0" * 308,  # a power of ten within a double's range, as an integer
    "not_a_double": "9007199254740993",  # 2**53 + 1: an integer is kept as one
    "tenth": "0.1",
    "tiny": "1e-400",  # below the smallest double: rounds to 0, as any rounding
    "escaped": '"a\\\\u0000"',  # a backslash, then the text u0000: no NUL in it
}


async def test_numbers_a_double_reaches_round_trip(api: Client) -> None:
    blob = await new_blob(api)
    attributes = obj(**ROUND_TRIP)
    text = obj(name='"Chair"', kind='"prop"', blob=f'"{blob}"', attributes=attributes)
    resp = await post_text(api, "/assets", text)
    assert resp.status == 201, await resp.text()
    asset = json.loads(await resp.text())["identifier"]
    got = await api.get(f"/assets/{asset}", headers={"Accept": "application/json"})
    assert json.loads(await got.text())["attributes"] == json.loads(attributes)


async def test_a_huge_integer_weight_in_an_event_is_a_400(api: Client) -> None:
    asset = await new_asset(api)
    event = obj(user='"ann"', asset=f'"{asset}"', kind='"download"', weight="9" * 5000)
    doc = await problem(await post_text(api, "/events", obj(events=f"[{event}]")), 400, "bad-json")
    assert "range" in doc["detail"]


async def test_a_nul_anywhere_in_events_is_a_400_and_nothing_is_buffered(api: Client) -> None:
    """Before, a NUL in "user" was a 422 item error, and one elsewhere (a key, "at") passed or
    failed by where it was; now every document is refused the same way, as lone surrogates."""
    asset = await new_asset(api)
    good = obj(user='"bob"', asset=f'"{asset}"', kind='"download"')
    for event in (
        {"user": '"ann\\u0000"'},
        {"kind": '"download\\u0000"'},
        {"asset": '"\\u0000"'},
        {"at": '"2024-01-01T00:00:00Z\\u0000"'},
        {"x\\u0000": "1"},
    ):
        members = {"user": '"ann"', "asset": f'"{asset}"', "kind": '"download"', **event}
        resp = await post_text(api, "/events", obj(events=f"[{good}, {obj(**members)}]"))
        doc = await problem(resp, 400, "bad-json")
        assert "NUL" in doc["detail"]
    assert not api.app[BUFFER].pending_for("bob")


async def test_a_nul_in_a_listing_query_is_a_400(api: Client) -> None:
    await new_asset(api)
    for param in ("name", "owner", "kind"):
        await problem(await api.get(f"/assets?{param}=a%00"), 400, "bad-query")
        await problem(await api.get(f"/assets?{param}=%00"), 400, "bad-query")
        assert (await api.get("/assets", params={param: "a\ufffd"})).status == 200


async def test_attributes_nested_past_the_limit_are_a_400(api: Client) -> None:
    """The document nests at most 64 levels (the body's object is the first). Nesting in the
    900s was a 500 on PostgreSQL: SQLAlchemy's JSON encoder ran out of recursion."""
    blob = await new_blob(api)
    asset = await new_asset(api)
    for depth in (65, 200, 966, 975, 980, 5000):
        inner = '{"a": ' * (depth - 1) + "1" + "}" * (depth - 1)
        text = obj(name='"d"', kind='"prop"', blob=f'"{blob}"', attributes=inner)
        doc = await problem(await post_text(api, "/assets", text), 400, "bad-json")
        assert "more than 64 levels" in doc["detail"], depth
        resp = await post_text(api, f"/assets/{asset}", obj(attributes=inner), "PATCH")
        doc = await problem(resp, 400, "bad-json")
        assert "more than 64 levels" in doc["detail"], depth


async def test_attributes_nested_to_the_limit_are_kept(api: Client) -> None:
    blob = await new_blob(api)
    inner = "[" * 61 + "{}" + "]" * 61  # 62 levels, in "attributes", in the body: 64
    text = obj(name='"d"', kind='"prop"', blob=f'"{blob}"', attributes=obj(a=inner))
    resp = await post_text(api, "/assets", text)
    assert resp.status == 201, await resp.text()
    asset = json.loads(await resp.text())["identifier"]
    got = await api.get(f"/assets/{asset}", headers={"Accept": "application/json"})
    assert json.loads(await got.text())["attributes"]["a"] == json.loads(inner)
