"""Every blob row of the HTTP contract, each error included, against the running app."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from pathlib import Path

import blake3
import pytest
from aiohttp.test_utils import TestClient

from blobstore import Digest, DiskBackend
from origin import Config
from origin.appkeys import CATALOG, STORE, TOKENS
from origin.catalog import Catalog, upgrade

from .conftest import AUTH, Client


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


async def put(client: Client, data: bytes, **headers: str) -> str:
    digest = b3(data)
    resp = await client.put(f"/blobs/{digest}", data=data, headers={**AUTH, **headers})
    assert resp.status in (200, 201), await resp.text()
    return digest


async def problem(resp: object, status: int, slug: str) -> dict[str, object]:
    from aiohttp import ClientResponse

    assert isinstance(resp, ClientResponse)
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json"
    doc: dict[str, object] = json.loads(body)
    assert doc["type"] == f"/problems/{slug}"
    assert doc["status"] == status
    assert doc["title"]
    assert doc["detail"]
    return doc


# -- PUT --------------------------------------------------------------------------------------


async def test_put_new_then_existing(client: Client, config: Config) -> None:
    data = os.urandom(200_000)
    digest = b3(data)
    resp = await client.put(
        f"/blobs/{digest}", data=data, headers={**AUTH, "Content-Type": "model/gltf-binary"}
    )
    assert resp.status == 201
    assert resp.headers["Location"] == f"/blobs/{digest}"
    doc = await resp.json()
    assert doc == {
        "digest": digest,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "model/gltf-binary",
    }
    stored = config.data_dir / "blobs" / digest[:2] / digest[2:4] / digest
    assert stored.read_bytes() == data
    again = await client.put(f"/blobs/{digest}", data=data, headers=AUTH)
    assert again.status == 200
    assert (await again.json())["content_type"] == "model/gltf-binary"  # first upload's type


@pytest.mark.parametrize("size", [5000, (1 << 20) + 1, 3 << 20])
async def test_put_of_an_existing_blob_checks_the_body(
    client: Client, config: Config, size: int
) -> None:
    """Every PUT body is checked against its digest, whether or not the blob is there yet: up
    to 1 MiB the store finds it at its commit, above it the origin asks first and only hashes
    the body. Either way the stored blob is left as it was."""
    data = os.urandom(size)
    digest = await put(client, data)
    stored = config.data_dir / "blobs" / digest[:2] / digest[2:4] / digest
    before = stored.stat()
    other = os.urandom(size)
    resp = await client.put(f"/blobs/{digest}", data=other, headers=AUTH)
    doc = await problem(resp, 422, "digest-mismatch")
    assert (doc["expected"], doc["actual"]) == (digest, b3(other))
    bad = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    resp = await client.put(
        f"/blobs/{digest}", data=data, headers={**AUTH, "Repr-Digest": f"sha-256=:{bad}:"}
    )
    assert (await problem(resp, 422, "digest-mismatch"))["algorithm"] == "sha-256"
    again = await client.put(f"/blobs/{digest}", data=data, headers=AUTH)
    assert again.status == 200
    assert (await again.json())["sha256"] == hashlib.sha256(data).hexdigest()
    after = stored.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert stored.read_bytes() == data
    assert not any((config.data_dir / "tmp").iterdir())


async def test_put_again_after_the_store_lost_the_blob_keeps_its_catalog_row(
    client: Client,
) -> None:
    """A put that creates the blob inserts its row without asking first; a row that is
    already there (the store lost the bytes, the catalog did not) is kept as it was."""
    data = os.urandom(5000)
    digest = await put(client, data, **{"Content-Type": "model/gltf-binary"})
    catalog = client.app[CATALOG]
    first = await catalog.blob(digest)
    assert first is not None
    assert await client.app[STORE].delete(Digest.parse(digest))
    resp = await client.put(
        f"/blobs/{digest}", data=data, headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert resp.status == 201, await resp.text()
    assert await catalog.blob(digest) == first
    assert (await client.get(f"/blobs/{digest}")).status == 200


@pytest.mark.timeout(30)  # the failure is a loop that never yields: only a signal ends it
async def test_empty_bodies_one_after_another(client: Client) -> None:
    """aiohttp hands every empty body the same reader, whose chunk iterator never ends once one
    empty body has been read (aio-libs/aiohttp#11397): the origin reads bodies without it."""
    empty = b3(b"")
    for method, path in [("PUT", f"/blobs/{empty}"), ("POST", "/blobs")] * 2:
        resp = await client.request(method, path, data=b"", headers=AUTH)
        assert resp.status in (200, 201), await resp.text()
        assert (await resp.json())["digest"] == empty


async def test_put_digest_mismatch_stores_nothing(client: Client, config: Config) -> None:
    data = os.urandom(3 << 20)
    wrong = b3(b"something else")
    resp = await client.put(f"/blobs/{wrong}", data=data, headers=AUTH)
    doc = await problem(resp, 422, "digest-mismatch")
    assert doc["actual"] == b3(data)
    assert not list((config.data_dir / "blobs").rglob("*" * 1 + "[0-9a-f]" * 64))
    assert not any((config.data_dir / "tmp").iterdir())
    assert (await client.get(f"/blobs/{wrong}")).status == 404


@pytest.mark.parametrize("header", ["Repr-Digest", "Content-Digest"])
async def test_put_verifies_declared_sha256(client: Client, config: Config, header: str) -> None:
    data = os.urandom(10_000)
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    bad = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    resp = await client.put(
        f"/blobs/{b3(data)}", data=data, headers={**AUTH, header: f"sha-256=:{bad}:"}
    )
    doc = await problem(resp, 422, "digest-mismatch")
    assert doc["algorithm"] == "sha-256"
    assert not any((config.data_dir / "tmp").iterdir())
    resp = await client.put(
        f"/blobs/{b3(data)}", data=data, headers={**AUTH, header: f"sha-256=:{good}:"}
    )
    assert resp.status == 201


async def test_put_malformed_digest_field_is_400(client: Client) -> None:
    data = b"abc"
    resp = await client.put(
        f"/blobs/{b3(data)}", data=data, headers={**AUTH, "Repr-Digest": "sha-256=nope"}
    )
    await problem(resp, 400, "bad-digest-field")


async def test_put_needs_write_token(client: Client, config: Config) -> None:
    data = b"payload"
    url = f"/blobs/{b3(data)}"
    resp = await client.put(url, data=data)
    await problem(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.put(url, data=data, headers={"Authorization": "Bearer nope"})
    await problem(resp, 401, "unauthorized")
    resp = await client.put(url, data=data, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    await problem(resp, 401, "unauthorized")
    tokens = client.app[TOKENS]
    _token, reader = await tokens.create("viewer", ("read",))
    _token, writer = await tokens.create("uploader", ("write",))
    resp = await client.put(url, data=data, headers={"Authorization": f"Bearer {reader}"})
    await problem(resp, 403, "forbidden")
    resp = await client.put(url, data=data, headers={"Authorization": f"Bearer {writer}"})
    assert resp.status == 201


async def test_put_bad_digest_is_400_before_any_io(client: Client, config: Config) -> None:
    resp = await client.put("/blobs/ABC", data=b"x", headers=AUTH)
    await problem(resp, 400, "bad-digest")
    assert not any((config.data_dir / "tmp").iterdir())


async def test_put_over_size_limit_is_413(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestServer

    from origin import create_app

    from .conftest import ADMIN_TOKEN

    config = Config(data_dir=tmp_path / "d", admin_token=ADMIN_TOKEN, max_blob_size=1000)
    async with TestClient(TestServer(create_app(config.validate()))) as small:
        data = os.urandom(1001)
        resp = await small.put(f"/blobs/{b3(data)}", data=data, headers=AUTH)
        doc = await problem(resp, 413, "too-large")
        assert doc["limit"] == 1000

        async def chunked() -> object:  # no Content-Length: the limit is enforced while streaming
            for _ in range(5):
                yield os.urandom(400)

        resp = await small.post("/blobs", data=chunked(), headers=AUTH)
        await problem(resp, 413, "too-large")
        assert not any((config.data_dir / "tmp").iterdir())
        assert not list((config.data_dir / "blobs").rglob("*" * 1 + "[0-9a-f]" * 64))
        ok = os.urandom(1000)
        assert (await small.put(f"/blobs/{b3(ok)}", data=ok, headers=AUTH)).status == 201


async def test_put_rejects_content_encoding(client: Client) -> None:
    data = b"zipped?"
    resp = await client.put(
        f"/blobs/{b3(data)}", data=data, headers={**AUTH, "Content-Encoding": "gzip"}
    )
    await problem(resp, 415, "unsupported-encoding")


async def test_empty_blob(client: Client) -> None:
    digest = await put(client, b"")
    resp = await client.get(f"/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "0"
    assert await resp.read() == b""
    resp = await client.get(f"/blobs/{digest}", headers={"Range": "bytes=0-"})
    await problem(resp, 416, "range-not-satisfiable")
    assert resp.headers["Content-Range"] == "bytes */0"


# -- POST /blobs ------------------------------------------------------------------------------


async def test_post_computes_digest(client: Client) -> None:
    data = bytes(range(256)) * 100
    resp = await client.post("/blobs", data=data, headers={**AUTH, "Content-Type": "image/png"})
    assert resp.status == 201
    digest = b3(data)
    assert resp.headers["Location"] == f"/blobs/{digest}"
    assert (await resp.json())["digest"] == digest
    again = await client.post("/blobs", data=data, headers=AUTH)
    assert again.status == 200
    got = await client.get(f"/blobs/{digest}")
    assert got.headers["Content-Type"] == "image/png"
    assert await got.read() == data


async def test_form_content_types_are_not_kept(client: Client) -> None:
    """curl --data-binary and urllib label raw bodies as forms; that is not the asset's type."""
    data = b"glb bytes"
    headers = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.post("/blobs", data=data, headers=headers)
    assert (await resp.json())["content_type"] == "application/octet-stream"
    got = await client.get(f"/blobs/{b3(data)}")
    assert got.headers["Content-Type"] == "application/octet-stream"


async def test_post_needs_token(client: Client) -> None:
    await problem(await client.post("/blobs", data=b"x"), 401, "unauthorized")


# -- GET / HEAD -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 4096, 64 * 1024, 64 * 1024 + 1, 3 << 20])
async def test_get_headers_and_bytes(client: Client, size: int) -> None:
    data = os.urandom(size)
    digest = await put(client, data, **{"Content-Type": "model/gltf+json"})
    resp = await client.get(f"/blobs/{digest}", headers={"Accept-Encoding": "gzip, br"})
    assert resp.status == 200
    assert await resp.read() == data
    h = resp.headers
    assert h["ETag"] == f'"{digest}"'
    assert h["Cache-Control"] == "public, max-age=31536000, immutable"
    assert h["Accept-Ranges"] == "bytes"
    assert h["Content-Length"] == str(size)
    assert h["Content-Type"] == "model/gltf+json"
    assert "Content-Encoding" not in h  # Godot never decompresses
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert h["Repr-Digest"] == f"sha-256=:{sha}:"


async def test_head(client: Client) -> None:
    data = os.urandom(100_000)
    digest = await put(client, data)
    resp = await client.head(f"/blobs/{digest}", headers={"Range": "bytes=0-9"})
    assert resp.status == 200  # Range is defined for GET only
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["ETag"] == f'"{digest}"'
    assert await resp.read() == b""


async def test_get_unknown_is_404(client: Client) -> None:
    resp = await client.get(f"/blobs/{'0' * 64}")
    await problem(resp, 404, "not-found")
    resp = await client.head(f"/blobs/{'0' * 64}")
    assert resp.status == 404


@pytest.mark.parametrize(
    "segment", ["abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "%20" + "0" * 61, "missing"]
)
async def test_bad_digest_in_path_is_400(client: Client, segment: str) -> None:
    await problem(await client.get(f"/blobs/{segment}"), 400, "bad-digest")


async def test_ranges(client: Client) -> None:
    data = os.urandom(1000)
    digest = await put(client, data)
    url = f"/blobs/{digest}"
    for header, (start, stop) in {
        "bytes=0-9": (0, 10),
        "bytes=990-": (990, 1000),
        "bytes=-5": (995, 1000),
        "bytes=500-5000": (500, 1000),
        "bytes=-5000": (0, 1000),
        "Bytes=1-1": (1, 2),
    }.items():
        resp = await client.get(url, headers={"Range": header})
        assert resp.status == 206, header
        assert await resp.read() == data[start:stop]
        assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/1000"
        assert resp.headers["Content-Length"] == str(stop - start)


async def test_several_ranges_get_the_whole_200(client: Client) -> None:
    data = os.urandom(1000)
    digest = await put(client, data)
    resp = await client.get(f"/blobs/{digest}", headers={"Range": "bytes=0-1, 5-9"})
    assert resp.status == 200
    assert await resp.read() == data


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=9-1",
                                    "bytes=abc", "bytes=", "bytes=1-2-3"])  # fmt: skip
async def test_bad_ranges_are_416(client: Client, header: str) -> None:
    digest = await put(client, os.urandom(1000))
    resp = await client.get(f"/blobs/{digest}", headers={"Range": header})
    await problem(resp, 416, "range-not-satisfiable")
    assert resp.headers["Content-Range"] == "bytes */1000"


async def test_other_range_unit_is_ignored(client: Client) -> None:
    digest = await put(client, os.urandom(1000))
    resp = await client.get(f"/blobs/{digest}", headers={"Range": "items=0-1"})
    assert resp.status == 200


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"{d}"', True),
        ('W/"{d}"', True),
        ('"x", "{d}"', True),
        ('"a,b", W/"{d}"', True),
        ("*", True),
        ('"other"', False),
        ("{d}", False),  # unquoted is not an entity tag
    ],
)
async def test_if_none_match(client: Client, header: str, matches: bool) -> None:
    digest = await put(client, os.urandom(100))
    resp = await client.get(f"/blobs/{digest}", headers={"If-None-Match": header.format(d=digest)})
    assert resp.status == (304 if matches else 200)
    assert resp.headers["ETag"] == f'"{digest}"'
    if matches:
        assert await resp.read() == b""


async def test_if_none_match_wins_over_range(client: Client) -> None:
    digest = await put(client, os.urandom(100))
    resp = await client.get(
        f"/blobs/{digest}", headers={"If-None-Match": f'"{digest}"', "Range": "bytes=0-1"}
    )
    assert resp.status == 304


async def test_if_range(client: Client) -> None:
    data = os.urandom(100)
    digest = await put(client, data)
    url = f"/blobs/{digest}"
    same = await client.get(url, headers={"Range": "bytes=0-1", "If-Range": f'"{digest}"'})
    assert same.status == 206
    assert await same.read() == data[:2]
    for stale in ['"other"', f'W/"{digest}"', "Sun, 22 Nov 2026 07:00:00 GMT"]:
        resp = await client.get(url, headers={"Range": "bytes=0-1", "If-Range": stale})
        assert resp.status == 200, stale
        assert await resp.read() == data


# -- SHA-256 alias, missing, health ----------------------------------------------------------


async def test_sha256_alias_redirects(client: Client) -> None:
    data = os.urandom(5000)
    digest = await put(client, data)
    sha = hashlib.sha256(data).hexdigest()
    for method in ("GET", "HEAD"):
        resp = await client.request(method, f"/blobs/sha256/{sha}", allow_redirects=False)
        assert resp.status == 308
        assert resp.headers["Location"] == f"/blobs/{digest}"
    followed = await client.get(f"/blobs/sha256/{sha}")
    assert await followed.read() == data
    await problem(await client.get(f"/blobs/sha256/{'1' * 64}"), 404, "not-found")
    await problem(await client.get("/blobs/sha256/XYZ"), 400, "bad-digest")


async def test_missing(client: Client) -> None:
    present = await put(client, b"present")
    absent = b3(b"absent")
    resp = await client.post("/blobs/missing", json={"digests": [present, absent, absent]})
    assert resp.status == 200
    assert await resp.json() == {"missing": [absent]}


@pytest.mark.parametrize(
    ("body", "slug"),
    [
        (b"{not json", "bad-json"),
        (b'{"digests": "abc"}', "bad-json"),
        (b"[]", "bad-json"),
        (b'{"digests": ["nope"]}', "bad-digest"),
        (b'{"digests": [123]}', "bad-digest"),
    ],
)
async def test_missing_bad_input(client: Client, body: bytes, slug: str) -> None:
    resp = await client.post(
        "/blobs/missing", data=body, headers={"Content-Type": "application/json"}
    )
    await problem(resp, 400, slug)


async def test_missing_batch_limit(client: Client, config: Config) -> None:
    digests = [b3(str(i).encode()) for i in range(config.max_missing_batch + 1)]
    resp = await client.post("/blobs/missing", json={"digests": digests})
    await problem(resp, 400, "batch-too-large")


async def test_healthz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    # The detail says what was asked (it was the status again: "404: Not Found").
    body = await problem(await client.get("/nope"), 404, "not-found")
    assert body["detail"] == "no route for /nope"
    resp = await client.delete(f"/blobs/{'0' * 64}")
    body = await problem(resp, 405, "method-not-allowed")
    assert body["detail"] == f"DELETE is not one of the methods of /blobs/{'0' * 64}"
    assert "GET" in resp.headers["Allow"]


# -- concurrency ------------------------------------------------------------------------------


async def test_fifty_concurrent_puts_store_once(client: Client, config: Config) -> None:
    data = os.urandom(2 << 20)
    digest = b3(data)
    responses = await asyncio.gather(
        *(client.put(f"/blobs/{digest}", data=data, headers=AUTH) for _ in range(50))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(201) == 1
    assert statuses.count(200) == 49
    blob_files = [p for p in (config.data_dir / "blobs").rglob("*") if p.is_file()]
    assert [p.name for p in blob_files] == [digest]
    assert blob_files[0].read_bytes() == data
    assert not any((config.data_dir / "tmp").iterdir())


async def test_get_racing_put_never_sees_partial(client: Client) -> None:
    block = os.urandom(1 << 20)
    data = block * 8
    digest = b3(data)

    async def slow_body() -> object:
        for i in range(8):
            yield block
            await asyncio.sleep(0.02 * (i % 2))

    upload = asyncio.ensure_future(client.put(f"/blobs/{digest}", data=slow_body(), headers=AUTH))
    seen: set[int] = set()
    while not upload.done() or 200 not in seen:
        resp = await client.get(f"/blobs/{digest}")
        seen.add(resp.status)
        if resp.status == 200:
            assert b3(await resp.read()) == digest
        else:
            assert resp.status == 404
            await resp.read()
    assert (await upload).status == 201
    assert 200 in seen


async def test_full_disk_is_507_and_leaves_nothing(tiny_fs: Path) -> None:
    from aiohttp.test_utils import TestServer

    from origin import create_app

    from .conftest import ADMIN_TOKEN

    config = Config(data_dir=tiny_fs, admin_token=ADMIN_TOKEN).validate()
    async with TestClient(TestServer(create_app(config))) as small_disk:
        data = os.urandom(3 << 20)
        resp = await small_disk.put(f"/blobs/{b3(data)}", data=data, headers=AUTH)
        await problem(resp, 507, "storage-full")
        assert not any((tiny_fs / "tmp").iterdir())
        assert (await small_disk.get(f"/blobs/{b3(data)}")).status == 404
        fits = os.urandom(100_000)
        assert (await small_disk.post("/blobs", data=fits, headers=AUTH)).status == 201


class _RemoteLikeDisk(DiskBackend):
    """A disk backend that offers no local file, as the Redis and SFTP tiers will not."""

    def local_path(self, digest: Digest) -> Path | None:
        return None


async def test_backends_without_local_files_stream_chunks(config: Config) -> None:
    from aiohttp.test_utils import TestServer

    from origin import create_app
    from origin.appkeys import STORE

    app = create_app(config)
    app[STORE] = _RemoteLikeDisk(config.data_dir, chunk_size=4096)
    async with TestClient(TestServer(app)) as remote:
        data = os.urandom(50_000)
        digest = await put(remote, data)
        whole = await remote.get(f"/blobs/{digest}")
        assert whole.headers["Content-Length"] == str(len(data))
        assert await whole.read() == data
        part = await remote.get(f"/blobs/{digest}", headers={"Range": "bytes=4000-9000"})
        assert part.status == 206
        assert await part.read() == data[4000:9001]


async def test_a_full_catalog_disk_is_507_and_the_retry_records_the_blob(
    tiny_fs: Path, tmp_path: Path
) -> None:
    from aiohttp.test_utils import TestServer

    from origin import create_app

    from .conftest import ADMIN_TOKEN

    config = Config(
        data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN,
        database_url=f"sqlite+aiosqlite:///{tiny_fs / 'catalog.sqlite'}",
    ).validate()  # fmt: skip
    assert config.database_url is not None
    catalog = Catalog.connect(config.database_url)
    await upgrade(catalog.engine)
    await catalog.close()
    async with TestClient(TestServer(create_app(config))) as client:
        filler = tiny_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        data = os.urandom(50_000)
        # Before, SQLite's "database or disk is full" was a 500 internal error.
        await problem(await client.put(f"/blobs/{b3(data)}", data=data, headers=AUTH), 507,
                      "storage-full")  # fmt: skip
        filler.unlink()
        resp = await client.put(f"/blobs/{b3(data)}", data=data, headers=AUTH)
        assert resp.status in (200, 201)
        assert (await client.get(f"/blobs/{b3(data)}")).status == 200
