"""The nginx edge (nginx/edge.conf.template), a real nginx in front of a real ``origin serve``.

Cache mode: proxy_cache with slices, cache lock, stale serving, streamed uploads. X-Accel-Redirect
mode: the origin names its own file and nginx sends it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
import psutil
import pytest

from origin.config import ConfigError, load_config

from .conftest import ADMIN_TOKEN, LiveOrigin
from .nginx_server import TEMPLATE, EdgeNginx, lua_available, nginx_binary, placeholders

MiB = 1 << 20
SLICE = 8 * MiB
IMMUTABLE = "public, max-age=31536000, immutable"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def call(
    base: str,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def pattern_blob(size: int, tag: bytes) -> bytes:
    """``size`` bytes fast: one random MiB repeated, each MiB stamped with its index and tag,
    so every range is distinct and every blob new."""
    block = os.urandom(MiB)
    return b"".join(
        (b"%s:%08d:" % (tag, i) + block)[: min(MiB, size - i * MiB)]
        for i in range((size + MiB - 1) // MiB)
    )


def store(origin: LiveOrigin, data: bytes, content_type: str = "model/gltf-binary") -> str:
    digest = blake3.blake3(data).hexdigest()
    headers = {**AUTH, "Content-Type": content_type}
    reply = call(origin.url, "PUT", f"/blobs/{digest}", data, headers)
    assert reply.status == 201, reply.body
    return str(digest)


def origin_gets(origin: LiveOrigin, digest: str) -> list[str]:
    """The origin's access-log lines for GETs of ``digest``, once the log has caught up."""
    marker = f"/healthz?mark={time.monotonic_ns()}"
    assert call(origin.url, "GET", marker).status == 200
    deadline = time.monotonic() + 10
    while not any(marker in line for line in origin.output) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [line for line in origin.output if f'"GET /blobs/{digest} ' in line]


def logged_status(line: str) -> int:
    match = re.search(r'HTTP/1\.1" (\d{3}) ', line)
    assert match, line
    return int(match.group(1))


def upstream_ports(origin: LiveOrigin) -> set[int]:
    """The client ports of the connections nginx holds open to the origin's worker."""
    [pid] = origin.server_pids()
    return {
        c.raddr.port
        for c in psutil.Process(pid).net_connections("tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == origin.port and c.raddr
    }


# What an answer says, to compare the edge's with the origin's: the status, the body and every
# header, repeats included, but the connection's own, Date, Server and the edge's X-Cache-Status.
_NOT_COMPARED = {"connection", "keep-alive", "date", "server", "x-cache-status", "x-accel-redirect"}


def answer(reply: Reply) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k.lower(), v) for k, v in reply.headers.items() if k.lower() not in _NOT_COMPARED]
    return reply.status, sorted(headers), reply.body


def range_asks(size: int, digest: str) -> list[tuple[str, dict[str, str]]]:
    """Request shapes for a blob of ``size`` bytes: plain ranges nginx cuts from its slices,
    ranges past the end, malformed ones, several, another unit, conditionals, HEAD."""
    tag = f'"{digest}"'
    return [
        ("GET", {}),
        ("HEAD", {}),
        ("GET", {"Range": "bytes=0-9"}),
        ("GET", {"Range": f"bytes={size - 1}-"}),
        ("GET", {"Range": f"bytes={size - 5}-{size + 5}"}),
        ("GET", {"Range": "bytes=-7"}),
        ("GET", {"Range": f"bytes=-{size + 50}"}),
        ("GET", {"Range": f"bytes={size}-"}),
        ("GET", {"Range": f"bytes={size + 10}-{size + 20}"}),
        ("GET", {"Range": f"bytes={size + SLICE}-"}),
        ("GET", {"Range": "bytes=-0"}),
        ("GET", {"Range": "bytes=5-2"}),
        ("GET", {"Range": "bytes=abc"}),
        ("GET", {"Range": "bytes="}),
        ("GET", {"Range": "bytes=1 -2"}),
        ("GET", {"Range": "bytes=0-99999999999999999999"}),
        ("GET", {"Range": "bytes=1-2,"}),
        ("GET", {"Range": "bytes=0-1,5-9"}),
        ("GET", {"Range": f"bytes={size}-,0-1"}),
        ("GET", {"Range": "items=0-5"}),
        ("HEAD", {"Range": "bytes=0-3"}),
        ("GET", {"Range": "bytes=1-4", "If-Range": tag}),
        ("GET", {"Range": "bytes=1-4", "If-Range": '"other"'}),
        ("GET", {"Range": f"bytes={size}-", "If-Range": tag}),
        ("GET", {"Range": f"bytes={size}-", "If-Range": '"other"'}),
        ("GET", {"If-None-Match": tag}),
        ("GET", {"If-None-Match": tag, "Range": f"bytes={size}-"}),
        ("GET", {"If-None-Match": tag, "Range": "bytes=0-3"}),
        ("HEAD", {"If-None-Match": tag}),
    ]


def new_asset(origin: LiveOrigin, digest: str) -> str:
    body = json.dumps({"name": "Thing", "kind": "prop", "blob": digest}).encode()
    reply = call(origin.url, "POST", "/assets", body, {**AUTH, "Content-Type": "application/json"})
    assert reply.status == 201, reply.body
    return str(json.loads(reply.body)["identifier"])


def downloads(origin: LiveOrigin, asset: str, *, at_least: int = 0) -> int:
    """The download events of ``asset`` in the origin's catalog, once there are ``at_least``
    (or after a few flushes of the origin's event buffer, when none are awaited)."""
    deadline = time.monotonic() + (10 if at_least else 2)
    while True:
        with sqlite3.connect(origin.data_dir / "catalog.sqlite") as db:
            rows = db.execute("SELECT asset_id FROM events WHERE kind = 'download'").fetchall()
        count = sum(str(uuid.UUID(str(a))) == asset for (a,) in rows)
        if (at_least and count >= at_least) or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


# -- fixtures ---------------------------------------------------------------------------------


def _origin(data_dir: Path, **env: str) -> LiveOrigin:
    return LiveOrigin(data_dir=data_dir, env={"ORIGIN_ACCESS_LOG": "true", **env}).start()


def _running(origin: LiveOrigin, edge: EdgeNginx) -> Iterator[tuple[LiveOrigin, EdgeNginx]]:
    """A fixture's body: the edge started in front of the (started) origin, both stopped after."""
    try:
        edge.start()
        yield origin, edge
    finally:
        edge.stop()
        origin.stop()


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveOrigin, EdgeNginx]]:
    """Cache mode: an origin and the edge in front of it, shared by the module's tests."""
    root = tmp_path_factory.mktemp("edge")
    origin = _origin(root / "data")
    edge = EdgeNginx(root / "nginx", [f"127.0.0.1:{origin.port}"], workers=2)
    yield from _running(origin, edge)


@pytest.fixture(scope="module")
def accel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveOrigin, EdgeNginx]]:
    """X-Accel-Redirect mode: nginx reads the origin's blob directory itself."""
    yield from _accel_edge(tmp_path_factory.mktemp("accel"), direct=False)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveOrigin, EdgeNginx]]:
    """Direct mode: X-Accel-Redirect mode plus nginx/edge-direct.conf (the Lua module)."""
    if not lua_available():
        pytest.skip("the nginx Lua module is not installed (scripts/test installs it)")
    yield from _accel_edge(tmp_path_factory.mktemp("direct"), direct=True)


def _accel_edge(root: Path, *, direct: bool) -> Iterator[tuple[LiveOrigin, EdgeNginx]]:
    """An origin answering with X-Accel-Redirect to /_accel/, and an edge without a blob cache
    that reads the origin's blob directory."""
    origin = _origin(root / "data", ORIGIN_ACCEL_REDIRECT="/_accel/")
    edge = EdgeNginx(
        root / "nginx",
        [f"127.0.0.1:{origin.port}"],
        blob_cache="off",
        accel_prefix="/_accel/",
        accel_root=root / "data" / "blobs",
        direct=direct,
    )
    yield from _running(origin, edge)


# -- the template -----------------------------------------------------------------------------


def test_template_documents_every_placeholder() -> None:
    text = TEMPLATE.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    used = placeholders("\n".join(ln for ln in text.splitlines() if not ln.startswith("#")))
    assert used
    for name in used:
        assert f"#   {name} " in header, f"{name} is not described at the top of the template"
    readme = (TEMPLATE.parent / "README.md").read_text()
    assert all(name in readme for name in used)


# -- cache mode -------------------------------------------------------------------------------


def test_second_get_is_a_hit_with_the_origins_headers(
    cached: tuple[LiveOrigin, EdgeNginx],
) -> None:
    origin, edge = cached
    data = pattern_blob(300_000, b"hit")
    reply = call(edge.url, "POST", "/blobs", data, {**AUTH, "Content-Type": "model/gltf-binary"})
    assert reply.status == 201, reply.body
    digest = blake3.blake3(data).hexdigest()
    path = f"/blobs/{digest}"
    # Godot and browsers ask for gzip; a blob is never compressed.
    ask = {"Accept-Encoding": "gzip, deflate"}
    first, second = (
        call(edge.url, "GET", path, headers=ask),
        call(edge.url, "GET", path, headers=ask),
    )
    assert (first.status, first.header("X-Cache-Status")) == (200, "MISS")
    assert (second.status, second.header("X-Cache-Status")) == (200, "HIT")
    sha = hashlib.sha256(data).digest()
    for reply in (first, second):
        assert reply.body == data
        assert reply.header("Content-Length") == str(len(data))
        assert reply.header("ETag") == f'"{digest}"'
        assert reply.header("Cache-Control") == IMMUTABLE
        assert reply.header("Content-Type") == "model/gltf-binary"
        assert reply.header("Repr-Digest") == f"sha-256=:{base64.b64encode(sha).decode()}:"
        assert reply.header("Content-Encoding") is None
    head = call(edge.url, "HEAD", path)
    assert (head.status, head.header("X-Cache-Status")) == (200, "HIT")
    assert head.header("Content-Length") == str(len(data))
    not_modified = call(edge.url, "GET", path, headers={"If-None-Match": f'"{digest}"'})
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert len(origin_gets(origin, digest)) == 1


def test_missing_blob_is_not_cached(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = cached
    data = pattern_blob(5000, b"late")
    digest = blake3.blake3(data).hexdigest()
    assert call(edge.url, "GET", f"/blobs/{digest}").status == 404
    # Uploaded after a client saw the 404: the next GET finds it.
    store(origin, data)
    reply = call(edge.url, "GET", f"/blobs/{digest}")
    assert (reply.status, reply.body) == (200, data)
    assert call(edge.url, "GET", "/blobs/not-a-digest").status == 400


def test_cold_head_answers_and_fills_the_first_slice(
    cached: tuple[LiveOrigin, EdgeNginx],
) -> None:
    origin, edge = cached
    data = pattern_blob(SLICE + 5000, b"head")
    digest = store(origin, data)
    head = call(edge.url, "HEAD", f"/blobs/{digest}")
    assert (head.status, head.body) == (200, b"")
    assert head.header("Content-Length") == str(len(data))
    assert head.header("ETag") == f'"{digest}"'
    first = call(edge.url, "GET", f"/blobs/{digest}", headers={"Range": "bytes=0-99"})
    assert (first.status, first.header("X-Cache-Status"), first.body) == (206, "HIT", data[:100])


def test_empty_blob_and_ranges_past_the_end(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = cached
    empty = store(origin, b"")
    reply = call(edge.url, "GET", f"/blobs/{empty}")
    assert (reply.status, reply.body, reply.header("Content-Length")) == (200, b"", "0")
    data = pattern_blob(100_000, b"end")
    digest = store(origin, data)
    past = call(edge.url, "GET", f"/blobs/{digest}", headers={"Range": "bytes=200000-"})
    assert past.status == 416
    assert past.header("Content-Range") == f"bytes */{len(data)}"
    tail = call(edge.url, "GET", f"/blobs/{digest}", headers={"Range": "bytes=-1000"})
    assert (tail.status, tail.body) == (206, data[-1000:])


def test_range_on_a_large_blob_fetches_only_the_slices_it_touches(
    cached: tuple[LiveOrigin, EdgeNginx],
) -> None:
    origin, edge = cached
    data = pattern_blob(64 * MiB, b"slices")
    digest = store(origin, data)
    path = f"/blobs/{digest}"
    before = set(edge.cache_files())

    start = 20_000_000  # inside slice 2 (16 MiB .. 24 MiB)
    reply = call(edge.url, "GET", path, headers={"Range": f"bytes={start}-{start + 999}"})
    assert reply.status == 206
    assert reply.body == data[start : start + 1000]
    assert reply.header("Content-Range") == f"bytes {start}-{start + 999}/{len(data)}"
    new = set(edge.cache_files()) - before
    assert len(new) == 1
    assert SLICE <= sum(p.stat().st_size for p in new) < SLICE + 64 * 1024
    gets = origin_gets(origin, digest)
    assert [logged_status(line) for line in gets] == [206]

    # Across the boundary of slices 2 and 3: only slice 3 is new.
    edge_at = 3 * SLICE
    reply = call(edge.url, "GET", path, headers={"Range": f"bytes={edge_at - 10}-{edge_at + 9}"})
    assert (reply.status, reply.body) == (206, data[edge_at - 10 : edge_at + 10])
    assert len(set(edge.cache_files()) - before) == 2
    assert [logged_status(line) for line in origin_gets(origin, digest)] == [206, 206]


def test_cache_misses_reuse_upstream_connections(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    """A location's own proxy_set_header (Range, for slices) drops every inherited one, the
    Connection "" keepalive needs included: each miss then opened and closed a connection."""
    origin, edge = cached
    digests = [store(origin, pattern_blob(3000 + i, b"keep%d" % i)) for i in range(6)]
    seen: list[set[int]] = []
    for digest in digests:
        reply = call(edge.url, "GET", f"/blobs/{digest}")
        assert (reply.status, reply.header("X-Cache-Status")) == (200, "MISS")
        seen.append(upstream_ports(origin))
    # Two nginx workers: at most two kept connections, the same ones throughout.
    assert seen[0], seen
    assert len(set().union(*seen)) <= 2, seen


def test_concurrent_cold_gets_reach_the_origin_once(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = cached
    data = pattern_blob(20 * MiB, b"herd")  # three slices
    digest = store(origin, data)

    def get(_: int) -> Reply:
        return call(edge.url, "GET", f"/blobs/{digest}")

    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(get, range(12)))
    assert all(r.status == 200 and r.body == data for r in replies)
    # One request per slice, whatever the number of clients.
    assert [logged_status(line) for line in origin_gets(origin, digest)] == [206, 206, 206]


def test_upload_through_the_edge_streams(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = cached
    size, block = 256 * MiB, os.urandom(MiB)

    midway: list[int] = []

    def chunks(watch: bool = False) -> Iterator[bytes]:
        for i in range(size // MiB):
            if watch and i == 192:
                # What the origin has already written while the client is still sending.
                parts = (origin.data_dir / "tmp").glob("*.part")
                midway.append(sum(p.stat().st_size for p in parts))
            yield i.to_bytes(8, "big") + block[8:]

    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for chunk in chunks():
        hasher.update(chunk)
    digest = hasher.hexdigest()
    [pid] = origin.server_pids()
    worker = psutil.Process(pid)
    nginx_workers = psutil.Process(edge.pid).children()
    base_rss = worker.memory_info().rss
    peak = {"origin": 0, "nginx": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["origin"] = max(peak["origin"], worker.memory_info().rss)
            peak["nginx"] = max(peak["nginx"], *(p.memory_info().rss for p in nginx_workers))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        headers = {**AUTH, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
        reply = call(edge.url, "PUT", f"/blobs/{digest}", chunks(watch=True), headers)
    finally:
        done.set()
        sampler.join()
    assert reply.status == 201, reply.body
    # Streamed: three quarters into the body, most of it had reached the origin's temp file
    # (buffered by nginx, none would have), and neither process held it in memory.
    assert len(midway) == 1
    assert midway[0] > 128 * MiB, midway
    assert peak["origin"] - base_rss < 64 * MiB, (base_rss, peak)
    assert peak["nginx"] < 64 * MiB, peak
    stored = origin.data_dir / "blobs" / digest[:2] / digest[2:4] / digest
    assert stored.stat().st_size == size
    on_disk = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with stored.open("rb") as f:
        while chunk := f.read(8 * MiB):
            on_disk.update(chunk)
    assert on_disk.hexdigest() == digest
    head = call(edge.url, "HEAD", f"/blobs/{digest}")
    assert (head.status, head.header("Content-Length")) == (200, str(size))


def test_body_limit_is_enforced_at_the_edge(
    tmp_path: Path, cached: tuple[LiveOrigin, EdgeNginx]
) -> None:
    origin, _ = cached
    edge = EdgeNginx(tmp_path / "nginx", [f"127.0.0.1:{origin.port}"], max_body_size="1m")
    edge.start()
    try:
        data = pattern_blob(2 * MiB, b"big")
        digest = blake3.blake3(data).hexdigest()
        reply = call(edge.url, "PUT", f"/blobs/{digest}", data, {**AUTH})
        assert reply.status == 413
        assert origin_gets(origin, digest) == []
        small = pattern_blob(MiB // 2, b"small")
        reply = call(edge.url, "POST", "/blobs", small, {**AUTH})
        assert reply.status == 201
    finally:
        edge.stop()


def test_cached_blob_is_served_while_the_origin_is_down(tmp_path: Path) -> None:
    origin = _origin(tmp_path / "data")
    edge = EdgeNginx(tmp_path / "nginx", [f"127.0.0.1:{origin.port}"])
    try:
        edge.start()
        kept, lost = pattern_blob(3 * MiB, b"kept"), pattern_blob(4096, b"lost")
        kept_digest, lost_digest = store(origin, kept), store(origin, lost)
        assert call(edge.url, "GET", f"/blobs/{kept_digest}").body == kept
        origin.stop()
        reply = call(edge.url, "GET", f"/blobs/{kept_digest}")
        assert (reply.status, reply.header("X-Cache-Status"), reply.body) == (200, "HIT", kept)
        part = call(edge.url, "GET", f"/blobs/{kept_digest}", headers={"Range": "bytes=10-19"})
        assert (part.status, part.body) == (206, kept[10:20])
        assert call(edge.url, "GET", f"/blobs/{lost_digest}").status == 502
    finally:
        edge.stop()
        origin.stop()


def test_cache_mode_416_is_the_origins(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    """A range nginx finds unsatisfiable from the slice it holds: its 416 used to carry that
    slice's headers as well as the origin's (two Cache-Control, two Content-Range, two
    X-Cache-Status, the ETag and Repr-Digest of the blob)."""
    origin, edge = cached
    warm = pattern_blob(5000, b"416-warm")
    warm_digest = store(origin, warm)
    assert call(edge.url, "GET", f"/blobs/{warm_digest}").body == warm
    for spec in ("5000-", "5010-5020", "-0", "5-2", "abc"):
        cold_digest = store(origin, pattern_blob(5000, b"416-cold-" + spec.encode()))
        for digest in (cold_digest, warm_digest):
            path, ask = f"/blobs/{digest}", {"Range": f"bytes={spec}"}
            mine = call(edge.url, "GET", path, headers=ask)
            theirs = call(origin.url, "GET", path, headers=ask)
            assert theirs.status == 416
            assert answer(mine) == answer(theirs), (spec, digest == warm_digest)
            assert mine.headers.get_all("Content-Range") == ["bytes */5000"]
            assert mine.headers.get_all("Cache-Control") == ["no-store"]
            assert mine.header("Content-Type") == "application/problem+json"
            assert mine.header("ETag") is None
            assert mine.header("Repr-Digest") is None
            assert len(mine.headers.get_all("X-Cache-Status") or []) == 1


def test_cache_mode_206_announces_accept_ranges(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    """As the origin does on every blob response; nginx adds it to a 200 only."""
    origin, edge = cached
    data = pattern_blob(SLICE + 5000, b"accept-ranges")
    digest = store(origin, data)
    for spec, first, last in (("0-9", 0, 9), (f"{SLICE - 5}-{SLICE + 4}", SLICE - 5, SLICE + 4),
                              ("-10", len(data) - 10, len(data) - 1), ("0-9", 0, 9)):  # fmt: skip
        part = call(edge.url, "GET", f"/blobs/{digest}", headers={"Range": f"bytes={spec}"})
        assert (part.status, part.body) == (206, data[first : last + 1])
        assert part.headers.get_all("Accept-Ranges") == ["bytes"], part.header("X-Cache-Status")
        assert part.headers.get_all("Content-Range") == [f"bytes {first}-{last}/{len(data)}"]
    whole = call(edge.url, "GET", f"/blobs/{digest}")
    assert (whole.status, whole.headers.get_all("Accept-Ranges")) == (200, ["bytes"])


def test_cache_mode_ignores_a_range_on_head(cached: tuple[LiveOrigin, EdgeNginx]) -> None:
    """docs/DECISIONS.md: Range on HEAD is ignored; nginx used to answer 206, 4 bytes long."""
    origin, edge = cached
    data = pattern_blob(5000, b"head-range")
    digest = store(origin, data)
    for _ in ("cold", "warm"):
        mine = call(edge.url, "HEAD", f"/blobs/{digest}", headers={"Range": "bytes=0-3"})
        theirs = call(origin.url, "HEAD", f"/blobs/{digest}", headers={"Range": "bytes=0-3"})
        assert (mine.status, mine.header("Content-Length")) == (200, "5000")
        assert mine.header("Content-Range") is None
        assert answer(mine) == answer(theirs)
        assert call(edge.url, "GET", f"/blobs/{digest}").body == data


@pytest.mark.parametrize("size", [5000, SLICE + 5000], ids=["one-slice", "two-slices"])
def test_cache_mode_answers_every_request_shape_as_the_origin(
    cached: tuple[LiveOrigin, EdgeNginx], size: int
) -> None:
    """Header for header and byte for byte, cold (each shape the blob's first request) and warm:
    plain ranges nginx cuts from its slices, and every other shape (several ranges, malformed
    ones, ``bytes=``, numbers nginx's parser reads differently) sent on to the origin."""
    origin, edge = cached
    warm = pattern_blob(size, b"shapes")
    warm_digest = store(origin, warm)
    assert call(edge.url, "GET", f"/blobs/{warm_digest}").body == warm
    for cold in (True, False):
        for i, (method, ask) in enumerate(range_asks(size, "DIGEST")):
            digest = store(origin, pattern_blob(size, b"shape%d" % i)) if cold else warm_digest
            ask = {k: v.replace("DIGEST", digest) for k, v in ask.items()}
            path = f"/blobs/{digest}"
            mine = call(edge.url, method, path, headers=ask)
            theirs = call(origin.url, method, path, headers=ask)
            assert answer(mine) == answer(theirs), (method, ask, "cold" if cold else "warm")
            assert len(mine.headers.get_all("X-Cache-Status") or []) == 1, (method, ask)


def test_cache_mode_compares_range_numbers_as_the_origin(
    cached: tuple[LiveOrigin, EdgeNginx],
) -> None:
    """nginx config has no arithmetic: whether last >= first, and whether first >= the blob's
    size, are regular expressions over the digits. Random pairs around the size, as long and
    one digit longer or shorter, against the origin's answers."""
    origin, edge = cached
    size = 12_345
    data = pattern_blob(size, b"numbers")
    digest = store(origin, data)
    path = f"/blobs/{digest}"
    assert call(edge.url, "GET", path).body == data
    rng = random.Random(20261203)

    def near(n: int) -> int:
        return max(0, rng.choice([n, n - 1, n + 1, rng.randrange(10 ** len(str(n)))]))

    specs = {f"{size}-", f"{size - 1}-", f"{size}-{size}", f"{size - 1}-{size - 1}"}
    while len(specs) < 150:
        first = near(rng.choice([size, size // 10, size * 10, rng.randrange(2 * size)]))
        last = near(rng.choice([first, first // 10, first * 10, rng.randrange(2 * size)]))
        specs.add(f"{first}-{last}" if rng.random() < 0.8 else f"{first}-")
    for spec in sorted(specs):
        mine = call(edge.url, "GET", path, headers={"Range": f"bytes={spec}"})
        theirs = call(origin.url, "GET", path, headers={"Range": f"bytes={spec}"})
        assert answer(mine) == answer(theirs), spec


def test_cache_mode_records_downloads_it_serves_from_the_cache(
    cached: tuple[LiveOrigin, EdgeNginx],
) -> None:
    """A GET with a token is a download (README); the edge mirrors it to the origin (a GET with
    the token and If-None-Match: *), so a cache hit is recorded too, and a miss once."""
    origin, edge = cached
    data = pattern_blob(100_000, b"edge-download")
    digest = store(origin, data)
    asset = new_asset(origin, digest)
    path = f"/blobs/{digest}"
    # Anonymous reads and a HEAD with a token are not downloads.
    assert call(edge.url, "GET", path).status == 200
    assert call(edge.url, "HEAD", path, headers=AUTH).status == 200
    assert call(edge.url, "GET", path, headers={"Range": "bytes=0-9"}).status == 206
    assert downloads(origin, asset) == 0
    got = call(edge.url, "GET", path, headers=AUTH)
    assert (got.status, got.header("X-Cache-Status"), got.body) == (200, "HIT", data)
    assert downloads(origin, asset, at_least=1) == 1
    # The fill, then the mirror's conditional GET (no bytes), and nothing else.
    assert sorted(logged_status(line) for line in origin_gets(origin, digest)) == [206, 304]

    # A miss: the slice is filled anonymously and the download recorded by the mirror alone.
    other = pattern_blob(5000, b"edge-download-miss")
    other_digest = store(origin, other)
    other_asset = new_asset(origin, other_digest)
    got = call(edge.url, "GET", f"/blobs/{other_digest}", headers=AUTH)
    assert (got.status, got.header("X-Cache-Status"), got.body) == (200, "MISS", other)
    assert downloads(origin, other_asset, at_least=1) == 1
    assert sorted(logged_status(line) for line in origin_gets(origin, other_digest)) == [206, 304]


def test_a_range_past_the_end_is_answered_while_the_origin_is_down(tmp_path: Path) -> None:
    """nginx knows the size from the slice it holds: its 416 is the origin's, origins or not.
    Past the last slice it would have to ask an origin for the size (a 502 without one)."""
    origin = _origin(tmp_path / "data")
    edge = EdgeNginx(tmp_path / "nginx", [f"127.0.0.1:{origin.port}"])
    try:
        edge.start()
        small, large = pattern_blob(5000, b"down-small"), pattern_blob(SLICE + 5000, b"down-large")
        asks: list[tuple[str, str]] = []
        for data in (small, large):
            digest = store(origin, data)
            assert call(edge.url, "GET", f"/blobs/{digest}").body == data
            for spec in (f"{len(data)}-", f"{len(data) + 10}-{len(data) + 20}"):
                asks.append((f"/blobs/{digest}", f"bytes={spec}"))
        large_path = asks[-1][0]
        asks.append((large_path, f"bytes={SLICE + 6000}-"))  # in the last slice, past the end
        expected = [answer(call(origin.url, "GET", p, headers={"Range": r})) for p, r in asks]
        assert all(status == 416 for status, _, _ in expected)
        origin.stop()
        for (path, spec), theirs in zip(asks, expected, strict=True):
            assert answer(call(edge.url, "GET", path, headers={"Range": spec})) == theirs, spec
        beyond = call(edge.url, "GET", large_path, headers={"Range": f"bytes={2 * SLICE}-"})
        assert beyond.status == 502
    finally:
        edge.stop()
        origin.stop()


# -- X-Accel-Redirect mode --------------------------------------------------------------------


def test_accel_redirect_serves_the_origins_file(accel: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = accel
    data = pattern_blob(3 * MiB, b"accel")  # above memory_max_object: never in memory
    digest = store(origin, data, "model/gltf-binary")
    path = f"/blobs/{digest}"
    sha = hashlib.sha256(data).digest()

    direct = call(origin.url, "GET", path)
    assert direct.header("X-Accel-Redirect") == f"/_accel/{digest[:2]}/{digest[2:4]}/{digest}"
    assert direct.body == b""

    whole = call(edge.url, "GET", path)
    assert (whole.status, whole.header("X-Cache-Status")) == (200, "ACCEL")
    assert whole.body == data
    assert whole.header("Content-Length") == str(len(data))
    assert whole.header("ETag") == f'"{digest}"'
    assert whole.header("Cache-Control") == IMMUTABLE
    assert whole.header("Content-Type") == "model/gltf-binary"
    assert whole.header("Repr-Digest") == f"sha-256=:{base64.b64encode(sha).decode()}:"
    assert whole.headers.get_all("Accept-Ranges") == ["bytes"]
    assert whole.header("Last-Modified") is None
    assert whole.header("X-Accel-Redirect") is None

    part = call(edge.url, "GET", path, headers={"Range": "bytes=1000000-2000000"})
    assert (part.status, part.body) == (206, data[1_000_000:2_000_001])
    assert part.header("Content-Range") == f"bytes 1000000-2000000/{len(data)}"
    assert part.header("ETag") == f'"{digest}"'
    suffix = call(edge.url, "GET", path, headers={"Range": "bytes=-10"})
    assert (suffix.status, suffix.body) == (206, data[-10:])
    fresh = call(edge.url, "GET", path, headers={"Range": "bytes=0-9", "If-Range": f'"{digest}"'})
    assert (fresh.status, fresh.body) == (206, data[:10])
    other = call(edge.url, "GET", path, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (other.status, other.body) == (200, data)

    # Answered by the origin itself, as before.
    past = call(edge.url, "GET", path, headers={"Range": f"bytes={len(data)}-"})
    assert (past.status, past.header("Content-Range")) == (416, f"bytes */{len(data)}")
    same = call(edge.url, "GET", path, headers={"If-None-Match": f'"{digest}"'})
    assert (same.status, same.body) == (304, b"")
    head = call(edge.url, "HEAD", path)
    assert (head.status, head.header("Content-Length")) == (200, str(len(data)))
    assert head.header("ETag") == f'"{digest}"'
    # Clients cannot reach the internal location.
    assert call(edge.url, "GET", f"/_accel/{digest[:2]}/{digest[2:4]}/{digest}").status == 404


def test_accel_redirects_reuse_upstream_connections(accel: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = accel
    digest = store(origin, pattern_blob(MiB, b"keepalive"))
    seen: list[set[int]] = []
    for _ in range(6):
        reply = call(edge.url, "GET", f"/blobs/{digest}", headers={"Range": "bytes=0-99"})
        assert (reply.status, reply.header("X-Cache-Status")) == (206, "ACCEL")
        seen.append(upstream_ports(origin))
    assert seen[0], seen
    assert all(ports == seen[0] for ports in seen), seen


def test_accel_mode_small_blobs_come_from_the_origin(accel: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = accel
    data = pattern_blob(4096, b"small")
    digest = store(origin, data)
    reply = call(edge.url, "GET", f"/blobs/{digest}")
    assert (reply.status, reply.body) == (200, data)
    assert reply.header("X-Cache-Status") != "ACCEL"
    assert call(origin.url, "GET", f"/blobs/{digest}").header("X-Accel-Redirect") is None


def test_accel_mode_ranges_are_the_origins(accel: tuple[LiveOrigin, EdgeNginx]) -> None:
    """The origin sees the client's Range (nginx does not slice without a cache): a 416 is the
    origin's problem+json, not nginx's HTML page with the blob's headers; a range it applies
    is cut from the file by nginx, Accept-Ranges and all."""
    origin, edge = accel
    data = pattern_blob(3 * MiB, b"accel-ranges")
    digest = store(origin, data)
    path = f"/blobs/{digest}"
    for spec in (f"{len(data)}-", f"{len(data) + 10}-{len(data) + 20}", "abc", "5-2", "-0"):
        mine = call(edge.url, "GET", path, headers={"Range": f"bytes={spec}"})
        theirs = call(origin.url, "GET", path, headers={"Range": f"bytes={spec}"})
        assert theirs.header("X-Accel-Redirect") is None
        assert (theirs.status, theirs.header("Content-Type")) == (416, "application/problem+json")
        assert answer(mine) == answer(theirs), spec
        assert len(mine.headers.get_all("X-Cache-Status") or []) == 1
    for spec, first, last in (("0-9", 0, 9), (f"{len(data) - 10}-", len(data) - 10, len(data) - 1),
                              ("-10", len(data) - 10, len(data) - 1)):  # fmt: skip
        part = call(edge.url, "GET", path, headers={"Range": f"bytes={spec}"})
        assert (part.status, part.body) == (206, data[first : last + 1])
        assert part.headers.get_all("Content-Range") == [f"bytes {first}-{last}/{len(data)}"]
        assert part.headers.get_all("Accept-Ranges") == ["bytes"]
        assert part.header("X-Cache-Status") == "ACCEL"
    # A small blob, which the origin sends itself: its If-Range decides as well.
    small = pattern_blob(5000, b"accel-small-range")
    small_path = f"/blobs/{store(origin, small)}"
    for ask in ({"Range": "bytes=1-4", "If-Range": '"other"'}, {"Range": "bytes=1-4"},
                {"Range": "bytes=6000-"}):  # fmt: skip
        mine = call(edge.url, "GET", small_path, headers=ask)
        assert answer(mine) == answer(call(origin.url, "GET", small_path, headers=ask)), ask


def test_accel_mode_records_token_carrying_downloads(accel: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = accel
    data = pattern_blob(2 * MiB, b"accel-download")
    digest = store(origin, data)
    asset = new_asset(origin, digest)
    assert call(edge.url, "GET", f"/blobs/{digest}").status == 200
    assert downloads(origin, asset) == 0
    got = call(edge.url, "GET", f"/blobs/{digest}", headers=AUTH)
    assert (got.status, got.header("X-Cache-Status"), got.body) == (200, "ACCEL", data)
    assert downloads(origin, asset, at_least=1) == 1


def test_accel_redirect_setting_is_checked() -> None:
    assert load_config(env={"ORIGIN_ACCEL_REDIRECT": "/_accel/"}).accel_redirect == "/_accel/"
    assert load_config(env={}).accel_redirect is None
    for bad in ("_accel", "/a b/", "/x?y"):
        with pytest.raises(ConfigError, match="accel_redirect"):
            load_config(env={"ORIGIN_ACCEL_REDIRECT": bad})


# -- direct mode ------------------------------------------------------------------------------

# What a blob response says about the blob; Date, Server and the connection's own are left out.
CONTRACT = ("ETag", "Cache-Control", "Content-Type", "Repr-Digest", "Accept-Ranges")


def contract_headers(reply: Reply) -> dict[str, list[str]]:
    names = (*CONTRACT, "Content-Length", "Content-Range", "Last-Modified", "Content-Encoding")
    return {name: reply.headers.get_all(name) or [] for name in names}


def test_direct_mode_answers_from_the_disk_like_the_origin(
    direct: tuple[LiveOrigin, EdgeNginx],
) -> None:
    origin, edge = direct
    # A small blob (the origin sends it itself), a large one (the origin names its file),
    # a stored content type, the default one, and the empty blob.
    blobs = [
        (pattern_blob(4096, b"direct-small"), "model/gltf-binary"),
        (pattern_blob(3 * MiB, b"direct-large"), "application/octet-stream"),
        (b"", "application/octet-stream"),
    ]
    asks: list[dict[str, str]] = [{}, {"Range": "bytes=100-199"}, {"Range": "bytes=-10"}]
    for data, content_type in blobs:
        digest = store(origin, data, content_type)
        path = f"/blobs/{digest}"
        for ask in asks if data else [{}]:
            mine, theirs = (
                call(edge.url, "GET", path, headers=ask),
                call(origin.url, "GET", path, headers=ask),
            )
            assert mine.header("X-Cache-Status") == "DIRECT", (ask, mine.status)
            want = contract_headers(theirs)
            if theirs.header("X-Accel-Redirect"):
                # The origin names its file here (nginx applies the range, adds the lengths):
                # what it would send itself is what the Range asks of the bytes.
                first, last = {"": (0, len(data) - 1), "bytes=100-199": (100, 199)}.get(
                    ask.get("Range", ""), (len(data) - 10, len(data) - 1)
                )
                theirs = Reply(206 if ask else 200, theirs.headers, data[first : last + 1])
                want |= {"Accept-Ranges": ["bytes"], "Content-Length": [str(len(theirs.body))]}
                if ask:
                    want["Content-Range"] = [f"bytes {first}-{last}/{len(data)}"]
            assert (mine.status, mine.body) == (theirs.status, theirs.body)
            assert contract_headers(mine) == want, ask
        whole = call(edge.url, "GET", path)
        assert whole.body == data
        assert whole.header("Content-Type") == content_type
        sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert whole.header("Repr-Digest") == f"sha-256=:{sha}:"
        assert whole.header("ETag") == f'"{digest}"'
        head = call(edge.url, "HEAD", path)
        assert (head.status, head.header("X-Cache-Status"), head.body) == (200, "DIRECT", b"")
        assert contract_headers(head) == contract_headers(call(origin.url, "HEAD", path))
        # None of these GETs reached the origin: only the test's own did.
        assert len(origin_gets(origin, digest)) == len(asks if data else [{}])
    large = blobs[1][0]
    digest = blake3.blake3(large).hexdigest()
    part = call(edge.url, "GET", f"/blobs/{digest}", headers={"Range": "bytes=1000000-2000000"})
    assert (part.status, part.body) == (206, large[1_000_000:2_000_001])
    assert part.header("Content-Range") == f"bytes 1000000-2000000/{len(large)}"


def test_direct_mode_leaves_the_rest_to_the_origin(direct: tuple[LiveOrigin, EdgeNginx]) -> None:
    origin, edge = direct
    data = pattern_blob(200_000, b"direct-rest")
    digest = store(origin, data)
    path = f"/blobs/{digest}"
    # Conditionals, and a range past the end: the origin's answers (and its 416 body).
    same = call(edge.url, "GET", path, headers={"If-None-Match": f'"{digest}"'})
    assert (same.status, same.header("X-Cache-Status"), same.body) == (304, "ORIGIN", b"")
    fresh = call(edge.url, "GET", path, headers={"Range": "bytes=0-9", "If-Range": f'"{digest}"'})
    assert (fresh.status, fresh.body) == (206, data[:10])
    other = call(edge.url, "GET", path, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (other.status, other.body) == (200, data)
    past = call(edge.url, "GET", path, headers={"Range": f"bytes={len(data)}-"})
    assert past.status == 416
    assert past.header("Content-Range") == f"bytes */{len(data)}"
    assert past.header("Content-Type") == "application/problem+json"
    # Not on the disk: the origin's 404.
    unknown = "ab" * 32
    missing = call(edge.url, "GET", f"/blobs/{unknown}")
    assert (missing.status, missing.header("X-Cache-Status")) == (404, "ORIGIN")
    assert missing.header("Content-Type") == "application/problem+json"
    assert call(edge.url, "GET", "/blobs/not-a-digest").status == 400
    # Metadata nginx cannot read (a hand-edited tree): the origin answers, headers and all.
    lone = pattern_blob(5000, b"direct-lone")
    lone_digest = store(origin, lone, "model/gltf-binary")
    meta = origin.data_dir / "meta" / lone_digest[:2] / lone_digest[2:4] / f"{lone_digest}.json"
    meta.rename(meta.with_suffix(".moved"))
    reply = call(edge.url, "GET", f"/blobs/{lone_digest}")
    assert (reply.status, reply.header("X-Cache-Status"), reply.body) == (200, "ORIGIN", lone)
    assert reply.header("Content-Type") == "model/gltf-binary"
    # Uploads still reach the origin.
    new = pattern_blob(1000, b"direct-put")
    new_digest = blake3.blake3(new).hexdigest()
    put = call(edge.url, "PUT", f"/blobs/{new_digest}", new, AUTH)
    assert put.status == 201, put.body
    assert call(edge.url, "GET", f"/blobs/{new_digest}").body == new


def test_direct_mode_sends_token_carrying_gets_to_the_origin(
    direct: tuple[LiveOrigin, EdgeNginx],
) -> None:
    origin, edge = direct
    data = pattern_blob(100_000, b"direct-token")
    digest = store(origin, data)
    reply = call(origin.url, "POST", "/assets", json.dumps(
        {"name": "Thing", "kind": "prop", "blob": digest}).encode(),
        {**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert reply.status == 201, reply.body
    asset = json.loads(reply.body)["identifier"]
    got = call(edge.url, "GET", f"/blobs/{digest}", headers=AUTH)
    assert (got.status, got.header("X-Cache-Status"), got.body) == (200, "ACCEL", data)
    assert [logged_status(line) for line in origin_gets(origin, digest)] == [200]
    # The origin recorded the download (its buffer reaches the catalog within a second).
    catalog = origin.data_dir / "catalog.sqlite"
    deadline = time.monotonic() + 10
    rows: list[tuple[str, str]] = []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.1)
        with sqlite3.connect(catalog) as db:
            rows = db.execute("SELECT asset_id, kind FROM events").fetchall()
    assert [(str(uuid.UUID(str(a))), k) for a, k in rows] == [(asset, "download")]
