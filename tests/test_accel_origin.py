"""The origin's side of X-Accel-Redirect (``accel_redirect``): what it answers, without nginx.

tests/test_edge.py runs nginx in front of it; here the origin's answers are checked one by one:
the redirect's headers, what the origin still answers itself (304, 416, HEAD, small blobs), a
token-carrying GET that records a download, and, with SFTP as the durable store, that a blob
not in the local disk cache is streamed rather than named.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import os
import time
from pathlib import Path

import blake3
import pytest

from origin import Config
from origin.appkeys import CATALOG, TOKENS
from origin.catalog import RecommenderCatalog
from origin.recommend_routes import BUFFER

from .conftest import ADMIN_TOKEN, AUTH, Client, LiveOrigin
from .sshd_server import SshdServer

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture
def catalog_config(catalog_url: str, tmp_path: Path) -> Config:
    """The conftest ``api`` fixture's app, in X-Accel-Redirect mode on the plain disk store."""
    return Config(
        data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, database_url=catalog_url,
        recommender_train_interval=0, accel_redirect="/_accel/",
    ).validate()  # fmt: skip


async def put(api: Client, data: bytes, content_type: str = "model/gltf-binary") -> str:
    digest = blake3.blake3(data).hexdigest()
    headers = {**AUTH, "Content-Type": content_type}
    resp = await api.put(f"/blobs/{digest}", data=data, headers=headers)
    assert resp.status == 201, await resp.text()
    return str(digest)


def accel_uri(digest: str) -> str:
    return f"/_accel/{digest[:2]}/{digest[2:4]}/{digest}"


async def test_a_get_names_the_file_with_every_header_but_the_lengths(api: Client) -> None:
    data = os.urandom(300_000)
    digest = await put(api, data)
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    for _ in range(2):  # the second from the cached header set
        resp = await api.get(f"/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == b""
        got = {k.lower(): v for k, v in resp.headers.items() if k not in ("Date", "Server")}
        # nginx adds Content-Length, Content-Range and Accept-Ranges for the file it sends.
        assert got == {
            "etag": f'"{digest}"',
            "cache-control": IMMUTABLE,
            "content-type": "model/gltf-binary",
            "repr-digest": f"sha-256=:{sha}:",
            "x-accel-redirect": accel_uri(digest),
            "content-length": "0",
        }
    # A satisfiable Range is nginx's to apply: the same redirect.
    ranged = await api.get(f"/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert (ranged.status, ranged.headers["X-Accel-Redirect"]) == (200, accel_uri(digest))


async def test_what_the_origin_still_answers_itself(api: Client) -> None:
    data = os.urandom(200_000)
    digest = await put(api, data)
    path = f"/blobs/{digest}"
    past = await api.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert (past.status, past.headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    assert "X-Accel-Redirect" not in past.headers
    same = await api.get(path, headers={"If-None-Match": f'"{digest}"'})
    assert (same.status, same.headers["ETag"]) == (304, f'"{digest}"')
    assert "X-Accel-Redirect" not in same.headers
    head = await api.head(path)
    assert (head.status, head.headers["Content-Length"]) == (200, str(len(data)))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert "X-Accel-Redirect" not in head.headers
    small = os.urandom(4096)
    small_digest = await put(api, small)
    resp = await api.get(f"/blobs/{small_digest}")
    assert (resp.status, await resp.read()) == (200, small)
    assert "X-Accel-Redirect" not in resp.headers
    gone = "0" * 63 + "1"
    assert (await api.get(f"/blobs/{gone}")).status == 404
    # Range forms nginx would read otherwise than we do: answered here, the bytes included.
    for odd in ("bytes=1-2,", "bytes=01-2", "bytes= 1-2", f"bytes=1-{'9' * 20}"):
        resp = await api.get(path, headers={"Range": odd})
        assert "X-Accel-Redirect" not in resp.headers, odd
        assert resp.status == 206, odd
        assert resp.headers["Accept-Ranges"] == "bytes"
        start = int(odd.split("=")[1].strip().split("-")[0])
        assert await resp.read() == data[start : len(data) if "9" * 20 in odd else 3]


async def test_a_token_carrying_get_records_a_download(api: Client) -> None:
    digest = await put(api, os.urandom(100_000))
    resp = await api.post(
        "/assets", json={"name": "Big", "kind": "prop", "blob": digest}, headers=AUTH
    )
    assert resp.status == 201
    asset = str((await resp.json(content_type=None))["identifier"])
    _token, secret = await api.app[TOKENS].create("gus", ("read",))
    resp = await api.get(f"/blobs/{digest}", headers={"Authorization": f"Bearer {secret}"})
    assert (resp.status, resp.headers["X-Accel-Redirect"]) == (200, accel_uri(digest))
    await asyncio.sleep(0.05)  # attributed by a background task
    await api.app[BUFFER].flush()
    catalog = RecommenderCatalog(api.app[CATALOG].engine)
    events = [e async for page in catalog.event_pages() for e in page]
    assert [(e.user, str(e.asset), e.kind) for e in events] == [("gus", asset, "download")]


# -- SFTP as the durable store: the local disk is a cache ----------------------------------


def request(origin: LiveOrigin, method: str, path: str, body: bytes | None = None) -> tuple[
    int, dict[str, str], bytes
]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_with_sftp_only_blobs_in_the_disk_cache_are_named(tmp_path: Path, sshd: SshdServer) -> None:
    env = {
        **sshd.origin_env(),
        "ORIGIN_MEMORY_CACHE_SIZE": "0",
        "ORIGIN_ACCEL_REDIRECT": "/_accel/",
    }
    origin = LiveOrigin(data_dir=tmp_path / "node", env=env).start()
    try:
        data = os.urandom(3 << 20)
        digest = blake3.blake3(data).hexdigest()
        assert request(origin, "PUT", f"/blobs/{digest}", data)[0] == 201
        cached = origin.data_dir / "cache" / "blobs" / digest[:2] / digest[2:4] / digest
        assert not cached.exists()
        # Only on the SFTP server: streamed by the origin (and copied into the disk cache).
        status, headers, body = request(origin, "GET", f"/blobs/{digest}")
        assert (status, body) == (200, data)
        assert "X-Accel-Redirect" not in headers
        deadline = time.monotonic() + 10
        while not cached.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        status, headers, body = request(origin, "GET", f"/blobs/{digest}")
        assert (status, body, headers.get("X-Accel-Redirect")) == (200, b"", accel_uri(digest))
    finally:
        origin.stop()
