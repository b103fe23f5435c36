"""The origin with the SFTP bulk store as its durable store, against a real OpenSSH sshd."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import LiveOrigin
from .sshd_server import SshdServer
from .test_live_server import auth, b3, connect, http, read_head, request_head


@pytest.fixture
def sftp_origin(tmp_path: Path, sshd: SshdServer) -> Iterator[LiveOrigin]:
    # No memory tier, so reads of cached blobs come from the disk cache.
    env = {**sshd.origin_env(), "ORIGIN_MEMORY_CACHE_SIZE": "0"}
    origin = LiveOrigin(data_dir=tmp_path / "node", env=env).start()
    yield origin
    origin.stop()


def on_sftp(sshd: SshdServer, digest: str) -> Path:
    return sshd.root / "blobs" / digest[:2] / digest[2:4] / digest


def test_put_lands_on_sftp_and_get_fills_the_disk_cache(
    sftp_origin: LiveOrigin, sshd: SshdServer
) -> None:
    data = os.urandom(5 << 20)
    digest = b3(data)
    assert http(sftp_origin, "PUT", f"/blobs/{digest}", data, auth(sftp_origin))[0] == 201
    assert on_sftp(sshd, digest).read_bytes() == data  # acknowledged only once it is there
    cached = sftp_origin.data_dir / "cache" / "blobs" / digest[:2] / digest[2:4] / digest
    assert not cached.exists()
    assert http(sftp_origin, "GET", f"/blobs/{digest}") == (200, data)
    deadline = time.monotonic() + 10
    while not cached.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cached.read_bytes() == data
    status, part = http(sftp_origin, "GET", f"/blobs/{digest}", headers={"Range": "bytes=5-9"})
    assert (status, part) == (206, data[5:10])


def test_sshd_down_serves_cached_blobs_and_refuses_puts_then_recovers(
    sftp_origin: LiveOrigin, sshd: SshdServer
) -> None:
    blobs = [os.urandom(200_000 + i) for i in range(6)]
    for data in blobs:
        assert http(sftp_origin, "PUT", f"/blobs/{b3(data)}", data, auth(sftp_origin))[0] == 201
        assert http(sftp_origin, "GET", f"/blobs/{b3(data)}") == (200, data)  # now cached

    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:  # a stream of GETs of cached blobs while sshd goes away
        while not stop.is_set():
            for data in blobs:
                got = http(sftp_origin, "GET", f"/blobs/{b3(data)}")
                if got != (200, data):
                    failures.append(f"GET -> {got[0]}")

    reader = threading.Thread(target=load)
    reader.start()
    time.sleep(0.3)
    sshd.stop()
    time.sleep(1.0)
    new = os.urandom(300_000)
    status, body = http(sftp_origin, "PUT", f"/blobs/{b3(new)}", new, auth(sftp_origin))
    assert status == 503, body
    assert b"store-unavailable" in body
    # A Godot-style upload (whole body, then read) still sees the status.
    with connect(sftp_origin) as sock:
        sock.sendall(request_head("POST", "/blobs", {**auth(sftp_origin),
                                                     "Content-Length": str(len(new))}))  # fmt: skip
        sock.sendall(new)
        assert read_head(sock).startswith(b"HTTP/1.1 503")
    # With Expect: 100-continue, the presence check runs before the body and outside the
    # middleware: the same 503, as problem+json (it was a text/plain 500).
    with connect(sftp_origin) as sock:
        headers = {**auth(sftp_origin), "Content-Length": str(len(new)), "Expect": "100-continue"}
        sock.sendall(request_head("PUT", f"/blobs/{b3(new)}", headers))
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b"application/problem+json" in head
    # A query is not a write: its 503 does not say that nothing was stored.
    query = json.dumps({"digests": [b3(new)]}).encode()
    status, body = http(sftp_origin, "POST", "/blobs/missing", query,
                        {"Content-Type": "application/json"})  # fmt: skip
    assert status == 503, body
    assert json.loads(body)["type"] == "/problems/store-unavailable"
    assert "nothing was stored" not in json.loads(body)["detail"]
    stop.set()
    reader.join()
    assert failures == []
    assert not on_sftp(sshd, b3(new)).exists()
    assert list((sshd.root / "blobs").rglob(b3(new))) == []
    ready = http(sftp_origin, "GET", "/readyz")
    assert ready[0] == 200
    assert b'"degraded"' in ready[1]

    sshd.start()
    deadline = time.monotonic() + 20
    while http(sftp_origin, "PUT", f"/blobs/{b3(new)}", new, auth(sftp_origin))[0] != 201:
        assert time.monotonic() < deadline, "the origin never reconnected"
        time.sleep(0.5)
    assert on_sftp(sshd, b3(new)).read_bytes() == new


def sftp_temp_files(sshd: SshdServer) -> list[Path]:
    return [p for p in (sshd.root / "tmp").glob("*.part")]


def start_put(origin: LiveOrigin, digest: str, total: int, first: bytes) -> socket.socket:
    """A PUT whose body stops after ``first``, once the origin streams it into the store."""
    sock = connect(origin)
    sock.sendall(request_head("PUT", f"/blobs/{digest}",
                              {**auth(origin), "Content-Length": str(total)}))  # fmt: skip
    sock.sendall(first)
    return sock


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_origin_killed_mid_put_leaves_no_blob_on_sftp(
    sftp_origin: LiveOrigin, sshd: SshdServer
) -> None:
    data = os.urandom(8 << 20)
    digest = b3(data)
    with start_put(sftp_origin, digest, len(data), data[: 3 << 20]):
        wait_for(lambda: sftp_temp_files(sshd) != [], "the upload never reached the store")
        sftp_origin.kill()  # SIGKILL: no cleanup of any kind runs
    assert not on_sftp(sshd, digest).exists()
    assert list((sshd.root / "blobs").rglob(digest)) == []
    # Under temp names only (the bytes, and the metadata's file opened with them), swept once
    # they are old.
    left = sorted(p.name.endswith(".meta.part") for p in sftp_temp_files(sshd))
    assert left == [False, True]
    restarted = LiveOrigin(data_dir=sftp_origin.data_dir, env=sftp_origin.env).start()
    try:
        assert http(restarted, "PUT", f"/blobs/{digest}", data, auth(restarted))[0] == 201
        assert on_sftp(sshd, digest).read_bytes() == data
        assert http(restarted, "GET", f"/blobs/{digest}") == (200, data)
    finally:
        restarted.stop()


def test_sshd_stopped_mid_put_is_503_and_nothing_half_written(
    sftp_origin: LiveOrigin, sshd: SshdServer
) -> None:
    data = os.urandom(8 << 20)
    digest = b3(data)
    with start_put(sftp_origin, digest, len(data), data[: 3 << 20]) as sock:
        wait_for(lambda: sftp_temp_files(sshd) != [], "the upload never reached the store")
        sshd.stop()
        with contextlib.suppress(OSError):  # the origin may answer before taking it all
            sock.sendall(data[3 << 20 :])
        assert read_head(sock).startswith(b"HTTP/1.1 503")
    assert not on_sftp(sshd, digest).exists()
    assert list((sshd.root / "blobs").rglob(digest)) == []
    assert list((sshd.root / "meta").rglob(f"{digest}.json")) == []
    sshd.start()
    wait_for(
        lambda: http(sftp_origin, "PUT", f"/blobs/{digest}", data, auth(sftp_origin))[0] == 201,
        "the origin never reconnected",
    )
    assert on_sftp(sshd, digest).read_bytes() == data


def test_a_full_disk_cache_costs_the_cache_not_the_request(
    tmp_path: Path, sshd: SshdServer, tiny_fs: Path
) -> None:
    """The local disk cache on a 2 MiB file system (``disk_cache_size`` is 50 GiB): a 5 MiB
    blob is stored on SFTP and served from it, with no copy tried (more than half of what
    the disk holds), leaving nothing in the cache; the cache keeps working for what fits."""
    node = tmp_path / "node"
    node.mkdir()
    (node / "cache").symlink_to(tiny_fs)
    env = {**sshd.origin_env(), "ORIGIN_MEMORY_CACHE_SIZE": "0"}
    origin = LiveOrigin(data_dir=node, env=env).start()
    try:
        big, small = os.urandom(5 << 20), os.urandom(100_000)
        for data in (big, small):
            assert http(origin, "PUT", f"/blobs/{b3(data)}", data, auth(origin))[0] == 201
            assert on_sftp(sshd, b3(data)).read_bytes() == data
        for _ in range(2):  # the second GET of each, after its fill has ended
            assert http(origin, "GET", f"/blobs/{b3(big)}") == (200, big)
            assert http(origin, "GET", f"/blobs/{b3(small)}") == (200, small)
        wait_for(lambda: not any((tiny_fs / "tmp").iterdir()), "a partial copy stayed")
        cached = {p.name for p in (tiny_fs / "blobs").rglob("*") if p.is_file()}
        assert b3(big) not in cached
        wait_for(
            lambda: (tiny_fs / "blobs" / b3(small)[:2] / b3(small)[2:4] / b3(small)).exists(),
            "the blob that fits was not cached",
        )
        status, part = http(origin, "GET", f"/blobs/{b3(big)}", headers={"Range": "bytes=7-99"})
        assert (status, part) == (206, big[7:100])

        def gauge(name: str) -> float:
            text = http(origin, "GET", "/metrics")[1].decode()
            found = re.search(rf'^{name}{{tier="disk"}} (\S+)$', text, re.MULTILINE)
            assert found, text
            return float(found.group(1))

        # What an operator sees: the bound the disk allows, not disk_cache_size (50 GiB).
        assert gauge("origin_cache_capacity_bytes") <= 2 << 20
        assert gauge("origin_cache_size_bytes") <= gauge("origin_cache_capacity_bytes")
    finally:
        origin.stop()


def test_a_client_that_leaves_a_cold_get_does_not_wedge_the_blob(
    sftp_origin: LiveOrigin, sshd: SshdServer
) -> None:
    """The GET that leads a cache fill is left after its first bytes: the next GET of the blob
    is served whole, the fill completes, and the origin still stops when asked (every later
    GET hung, and the stop waited on the fill for ever)."""
    data = os.urandom(8 << 20)
    digest = b3(data)
    assert http(sftp_origin, "PUT", f"/blobs/{digest}", data, auth(sftp_origin))[0] == 201
    with connect(sftp_origin) as sock:
        sock.sendall(request_head("GET", f"/blobs/{digest}", {}))
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.recv(65536)
    assert http(sftp_origin, "GET", f"/blobs/{digest}") == (200, data)
    cached = sftp_origin.data_dir / "cache" / "blobs" / digest[:2] / digest[2:4] / digest
    wait_for(cached.exists, "the fill never completed")
    assert cached.read_bytes() == data
    assert not list((sftp_origin.data_dir / "cache" / "tmp").glob("*"))
    started = time.monotonic()
    sftp_origin.stop()
    assert time.monotonic() - started < 20


def test_a_client_that_stops_reading_a_cold_get_holds_up_no_one(
    sftp_origin: LiveOrigin, sshd: SshdServer
) -> None:
    """The GET that leads a cache fill stops reading (and keeps its connection): the copy goes
    on at the store's pace, the blob's other GETs are served, and the stalled client, once it
    reads again, gets every byte (from the cached copy). Before, the copy went at the leading
    client's pace, and every other GET of the blob waited for it."""
    # Twice what a stalled reader can take in before the copy would have to wait for it: the
    # lead queue (8 chunks of 1 MiB) and the socket buffers (a few MiB).
    data = os.urandom(24 << 20)
    digest = b3(data)
    assert http(sftp_origin, "PUT", f"/blobs/{digest}", data, auth(sftp_origin))[0] == 201
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    stalled.settimeout(30)
    stalled.connect(("127.0.0.1", sftp_origin.port))
    with stalled:
        stalled.sendall(request_head("GET", f"/blobs/{digest}", {}))
        received = stalled.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        url = f"{sftp_origin.url}/blobs/{digest}"
        ranged = urllib.request.Request(url, headers={"Range": "bytes=0-9"})
        with urllib.request.urlopen(ranged, timeout=20) as resp:
            assert resp.read() == data[:10]
        with urllib.request.urlopen(url, timeout=20) as resp:
            assert resp.read() == data
        body = bytearray(received.partition(b"\r\n\r\n")[2])
        while len(body) < len(data):  # it reads again
            chunk = stalled.recv(1 << 20)
            assert chunk, "the stalled client's download was cut short"
            body += chunk  # bytes would copy the whole body at every recv (16 s for 48 MiB)
    assert body == data


def test_cold_gets_on_every_worker_of_a_node_read_sftp_once(
    tmp_path: Path, sshd: SshdServer
) -> None:
    """Concurrent GETs of a cold blob, spread by the kernel over both workers: one copy from
    SFTP for the node (the other worker follows it), every GET served whole."""
    env = {**sshd.origin_env(), "ORIGIN_MEMORY_CACHE_SIZE": "0"}
    origin = LiveOrigin(data_dir=tmp_path / "node", env=env, workers=2).start()
    try:
        data = os.urandom(24 << 20)
        digest = b3(data)
        assert http(origin, "PUT", f"/blobs/{digest}", data, auth(origin))[0] == 201
        with ThreadPoolExecutor(8) as pool:  # eight connections: both workers get some
            got = list(pool.map(lambda _: http(origin, "GET", f"/blobs/{digest}"), range(8)))
        assert got == [(200, data)] * 8
        time.sleep(1.5)  # each worker publishes its counts once a second

        text = http(origin, "GET", "/metrics")[1].decode()
        reads = re.search(r"^origin_durable_reads_total (\S+)$", text, re.MULTILINE)
        assert reads is not None, text
        assert float(reads.group(1)) == 1
    finally:
        origin.stop()


def test_readiness_says_when_the_store_cannot_take_writes(
    sftp_origin: LiveOrigin, sshd: SshdServer
) -> None:
    """The store's directory gone (a volume that did not mount): reads of it say nothing is
    there, which readiness took for health. It now makes and removes a temp file."""
    assert b'"ready"' in http(sftp_origin, "GET", "/readyz")[1]
    shutil.rmtree(sshd.root)
    status, body = http(sftp_origin, "GET", "/readyz")
    assert (status, json.loads(body)["status"]) == (200, "degraded")  # the disk cache serves
    durable = json.loads(body)["tiers"][-1]
    assert durable["name"] == "durable"
    assert not durable["healthy"]
    sshd.root.mkdir()
    assert b'"ready"' in http(sftp_origin, "GET", "/readyz")[1]
