"""Against a real ``origin serve`` process: crashes, raw HTTP/1.1, workers, memory, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import blake3
import psutil
import pytest

from .conftest import ADMIN_TOKEN, LiveOrigin

BLOCK = os.urandom(1 << 20)


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def http(origin: LiveOrigin, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    req = urllib.request.Request(origin.url + path, data=body, method=method,
                                 headers=headers or {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def auth(origin: LiveOrigin) -> dict[str, str]:
    return {"Authorization": f"Bearer {origin.token}"}


def connect(origin: LiveOrigin) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", origin.port), timeout=30)
    return sock


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to and including the blank line that ends a response's head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: origin",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def temp_files(origin: LiveOrigin) -> list[Path]:
    return [p for p in (origin.data_dir / "tmp").iterdir() if p.name.endswith(".part")]


# -- crash safety -----------------------------------------------------------------------------


def test_sigkill_mid_upload_leaves_no_blob_and_keeps_acknowledged(live_origin: LiveOrigin) -> None:
    acknowledged = {}
    for i in range(5):
        data = os.urandom(100_000 + i)
        status, _ = http(live_origin, "PUT", f"/blobs/{b3(data)}", data, auth(live_origin))
        assert status == 201
        acknowledged[b3(data)] = data

    big_size = 256 << 20
    big = BLOCK * (big_size // len(BLOCK))
    digest = b3(big)
    sock = connect(live_origin)
    sock.sendall(request_head("PUT", f"/blobs/{digest}",
                              {**auth(live_origin), "Content-Length": str(big_size)}))  # fmt: skip
    sent = 0
    while sent < big_size // 2:  # half the body, then the power goes
        sock.sendall(BLOCK)
        sent += len(BLOCK)
    deadline = time.monotonic() + 10
    while not temp_files(live_origin) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_files(live_origin), "the upload should be in a temp file by now"
    live_origin.kill()
    sock.close()
    assert temp_files(live_origin), "SIGKILL leaves the temp file behind; restart must sweep it"

    live_origin.start()
    assert temp_files(live_origin) == []
    status, _ = http(live_origin, "GET", f"/blobs/{digest}")
    assert status == 404
    assert not (live_origin.data_dir / "blobs" / digest[:2] / digest[2:4] / digest).exists()
    for known, data in acknowledged.items():
        assert http(live_origin, "GET", f"/blobs/{known}") == (200, data)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_mid_upload_lets_it_finish(tmp_path: Path, workers: int) -> None:
    origin = LiveOrigin(data_dir=tmp_path / "data", workers=workers).start()
    try:
        data = os.urandom(16 << 20)
        with connect(origin) as sock:
            headers = {**auth(origin), "Content-Length": str(len(data))}
            sock.sendall(request_head("PUT", f"/blobs/{b3(data)}", headers))
            pieces = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
            sock.sendall(pieces[0])
            time.sleep(0.3)
            assert origin.proc is not None
            stopped_at = time.monotonic()
            origin.proc.send_signal(signal.SIGTERM)
            for piece in pieces[1:]:  # the rest of the body arrives after the signal
                time.sleep(0.05)
                sock.sendall(piece)
            sock.settimeout(15)
            head = read_head(sock)
        # Before, aiohttp dropped the bytes that came after SIGTERM: no answer, the upload
        # lost, and the worker waited out its 30 s shutdown timeout.
        assert head.startswith(b"HTTP/1.1 201"), head
        assert b"connection: close" in head.lower()
        origin.proc.wait(15)
        assert time.monotonic() - stopped_at < 10
        origin.start()
        assert http(origin, "GET", f"/blobs/{b3(data)}") == (200, data)
    finally:
        origin.stop()


# -- raw HTTP/1.1: Expect and the Godot drain ------------------------------------------------


def test_expect_100_continue(live_origin: LiveOrigin) -> None:
    data = os.urandom(300_000)
    digest = b3(data)
    headers = {**auth(live_origin), "Content-Length": str(len(data)), "Expect": "100-continue"}
    with connect(live_origin) as sock:
        sock.sendall(request_head("PUT", f"/blobs/{digest}", headers))
        assert read_head(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(data)
        assert b"HTTP/1.1 201" in read_head(sock)
    # Present now: answered 200 at once, without waiting for a byte of the body.
    with connect(live_origin) as sock:
        sock.sendall(request_head("PUT", f"/blobs/{digest}", headers))
        assert read_head(sock).startswith(b"HTTP/1.1 200")
    # No token: 401 at once.
    with connect(live_origin) as sock:
        no_auth = {k: v for k, v in headers.items() if k != "Authorization"}
        sock.sendall(request_head("PUT", f"/blobs/{b3(b'new')}", no_auth))
        assert read_head(sock).startswith(b"HTTP/1.1 401")


def test_rejected_upload_body_is_drained_before_the_answer(live_origin: LiveOrigin) -> None:
    """What Godot's HTTPClient.request_raw does: send all of Content-Length, then read."""
    data = os.urandom(8 << 20)
    with connect(live_origin) as sock:
        for _ in range(2):  # the connection stays usable after the error
            sock.sendall(request_head("PUT", f"/blobs/{b3(data)}",
                                      {"Content-Length": str(len(data))}))  # fmt: skip
            sock.sendall(data)  # would fail with EPIPE/ECONNRESET had the server closed early
            head = read_head(sock)
            assert head.startswith(b"HTTP/1.1 401"), head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += sock.recv(65536)


def test_body_over_drain_limit_is_answered_and_closed(tmp_path: Path) -> None:
    origin = LiveOrigin(tmp_path / "d", env={"ORIGIN_DRAIN_LIMIT": "64KiB"}).start()
    try:
        with connect(origin) as sock:
            sock.sendall(request_head("PUT", f"/blobs/{'0' * 64}",
                                      {"Content-Length": str(64 << 20)}))  # fmt: skip
            head = read_head(sock)
            assert head.startswith(b"HTTP/1.1 401")
            assert b"Connection: close" in head
    finally:
        origin.stop()


# -- workers ----------------------------------------------------------------------------------


def test_workers_share_the_port(tmp_path: Path) -> None:
    origin = LiveOrigin(tmp_path / "d", workers=2).start()
    try:
        pids = origin.server_pids()
        assert len(pids) == 2
        for pid in pids:
            listening = [c for c in psutil.Process(pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN]  # fmt: skip
            assert [c.laddr.port for c in listening] == [origin.port]
        data = os.urandom(50_000)
        assert http(origin, "PUT", f"/blobs/{b3(data)}", data, auth(origin))[0] == 201
        for _ in range(20):  # new connections land on either worker; both see the blob
            assert http(origin, "GET", f"/blobs/{b3(data)}") == (200, data)
        # A worker that dies is replaced.
        os.kill(pids[0], 9)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            current = origin.server_pids()
            if len(current) == 2 and pids[0] not in current:
                break
            time.sleep(0.2)
        assert len(origin.server_pids()) == 2
        assert pids[0] not in origin.server_pids()
        assert http(origin, "GET", f"/blobs/{b3(data)}") == (200, data)
    finally:
        origin.stop()
    assert origin.proc is not None
    assert origin.proc.returncode == 0


def break_the_store_layout(data_dir: Path) -> None:
    """Make every worker's own start fail where the parent's preflight passes: the store's
    temp directory is a file (the preflight tries the data directory itself, not its layout;
    each worker's DiskBackend.start makes the layout)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "tmp").write_bytes(b"")


def test_a_worker_that_dies_before_it_is_ready_stops_the_server_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    break_the_store_layout(data_dir)
    started = time.monotonic()
    result = origin_cli(data_dir, "serve", "--port", "0", "--workers", "2",
                        env={"ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN})  # fmt: skip
    # Before, the supervisor waited out its whole 30 s ready timeout.
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert "listening on" not in result.stdout
    assert re.search(r"worker \d+ exited with status 1 before it was ready", result.stderr)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_start_that_fails_in_the_worker_says_why_in_one_line(
    tmp_path: Path, workers: int
) -> None:
    data_dir = tmp_path / "d"
    break_the_store_layout(data_dir)
    args = ("serve", "--port", "0", "--workers", str(workers))
    started = time.monotonic()
    result = origin_cli(data_dir, *args, env={"ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN})
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    # Before, a traceback: the process's own with one worker, one per worker with several.
    assert "Traceback" not in result.stderr
    if workers == 1:
        last = result.stderr.splitlines()[-1]
        assert last.startswith("origin: cannot start: FileExistsError")
        assert str(data_dir / "tmp") in last
    else:
        # A worker still starting when the first fails is stopped: it may say nothing.
        said = re.findall(r"\d+ ERROR origin\.server: cannot start: FileExistsError", result.stderr)
        assert 1 <= len(said) <= workers
    # The traceback is there for whoever asks for it.
    debug_env = {"ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN, "ORIGIN_LOG_LEVEL": "debug"}
    debug = origin_cli(data_dir, *args, env=debug_env)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert "FileExistsError" in debug.stderr


def test_a_worker_that_keeps_dying_is_restarted_after_a_growing_back_off(tmp_path: Path) -> None:
    origin = LiveOrigin(tmp_path / "d", workers=2).start()
    try:
        first = origin.server_pids()
        assert len(first) == 2
        shutil.rmtree(origin.data_dir / "tmp")
        break_the_store_layout(origin.data_dir)  # every replacement's start fails from now on
        os.kill(first[0], signal.SIGKILL)
        # Each worker's first and last sighting.
        seen: dict[int, list[float]] = {}
        killed_at = time.monotonic()
        while (now := time.monotonic()) - killed_at < 8:
            for pid in origin.server_pids():
                seen.setdefault(pid, [now, now])[1] = now
            time.sleep(0.05)
        replacements = sorted(span for pid, span in seen.items() if pid not in first)
        # Before, each replacement started within 0.2 s of the last one's death (4 in 8 s
        # here, as many as the host could start); now it waits 0.5, 1, 2, 4 s...
        assert 1 <= len(replacements) <= 3, replacements
        waits = [later[0] - earlier[1] for earlier, later in pairwise(replacements)]
        assert all(wait > 0.7 for wait in waits), waits
        assert first[1] in origin.server_pids()  # the other worker serves on
        # Backing off does not hold up a stop.
        assert origin.proc is not None
        stopped_at = time.monotonic()
        origin.proc.send_signal(signal.SIGTERM)
        assert origin.proc.wait(15) == 0
        assert time.monotonic() - stopped_at < 5
    finally:
        origin.kill()
    output = "".join(origin.output)
    assert "cannot start: FileExistsError" in output
    assert "Traceback" not in output  # one line for each, not a traceback


def test_hung_workers_share_one_shutdown_deadline(tmp_path: Path) -> None:
    env = {"ORIGIN_SHUTDOWN_TIMEOUT": "3"}
    origin = LiveOrigin(tmp_path / "d", workers=2, env=env).start()
    pids = origin.server_pids()
    try:
        assert len(pids) == 2
        for pid in pids:  # hung: their SIGTERM stays pending, as in a call that never returns
            os.kill(pid, signal.SIGSTOP)
        assert origin.proc is not None
        stopped_at = time.monotonic()
        origin.proc.send_signal(signal.SIGTERM)
        # One deadline (3 s and 5 more) for both, then SIGKILL; before, 8 s for each in turn.
        # Exit status 1: a stop that had to kill is not clean (before, 0).
        assert origin.proc.wait(30) == 1
        assert 7 < time.monotonic() - stopped_at < 12
        assert not any(psutil.pid_exists(pid) for pid in pids)
    finally:
        origin.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_that_dies_as_the_server_stops_makes_the_stop_unclean(tmp_path: Path) -> None:
    origin = LiveOrigin(tmp_path / "d", workers=2).start()
    pids = origin.server_pids()
    try:
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGSTOP)  # its SIGTERM stays pending: it is still stopping
        assert origin.proc is not None
        origin.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        os.kill(pids[0], signal.SIGKILL)  # it dies before it has stopped
        # Exit status 1, as for a worker that had to be killed (before, 0: it was not hung).
        assert origin.proc.wait(30) == 1
    finally:
        origin.kill()
    said = "".join(origin.output)
    assert re.search(rf"worker {pids[0]} exited with status -9 as it stopped", said)


# -- memory -----------------------------------------------------------------------------------


class PeakRss:
    """Samples a process's RSS in a thread; ``growth`` is the peak over the starting value."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


def gib_body() -> Iterator[bytes]:
    for _ in range(1024):
        yield BLOCK


@pytest.mark.slow
def test_one_gib_put_and_get_keep_rss_flat(live_origin: LiveOrigin) -> None:
    hasher = blake3.blake3()
    for block in gib_body():
        hasher.update(block)
    digest = hasher.hexdigest()
    # Warm the server up so one-off allocations are not counted as growth.
    warm = os.urandom(4 << 20)
    http(live_origin, "PUT", f"/blobs/{b3(warm)}", warm, auth(live_origin))
    http(live_origin, "GET", f"/blobs/{b3(warm)}")
    (pid,) = live_origin.server_pids()

    with PeakRss(pid) as put_rss, connect(live_origin) as sock:
        headers = {**auth(live_origin), "Content-Length": str(1 << 30)}
        sock.sendall(request_head("PUT", f"/blobs/{digest}", headers))
        for block in gib_body():
            sock.sendall(block)
        assert read_head(sock).startswith(b"HTTP/1.1 201")
    with PeakRss(pid) as get_rss, connect(live_origin) as sock:
        sock.sendall(request_head("GET", f"/blobs/{digest}", {}))
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200")
        received = len(head.split(b"\r\n\r\n", 1)[1])
        check = blake3.blake3(head.split(b"\r\n\r\n", 1)[1])
        while received < 1 << 30:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
            check.update(chunk)
        assert check.hexdigest() == digest
    assert put_rss.growth < 64 << 20, f"PUT grew RSS by {put_rss.growth >> 20} MiB"
    assert get_rss.growth < 64 << 20, f"GET grew RSS by {get_rss.growth >> 20} MiB"


# -- CLI --------------------------------------------------------------------------------------


def origin_cli(data_dir: Path, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "origin", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_token_cli_and_revocation_reach_a_running_server(tmp_path: Path) -> None:
    origin = LiveOrigin(tmp_path / "d", workers=2).start()
    try:
        made = origin_cli(origin.data_dir, "token", "create", "--subject", "ci", "--scope", "write")
        assert made.returncode == 0, made.stderr
        token_id = made.stdout.split()[1]
        secret = made.stdout.splitlines()[1]
        assert secret.startswith("orgn_")
        stored = b"".join(p.read_bytes() for p in origin.data_dir.glob("catalog.sqlite*"))
        assert secret.encode() not in stored  # only its hash is kept
        listed = origin_cli(origin.data_dir, "token", "list")
        assert token_id in listed.stdout
        assert "ci" in listed.stdout
        assert secret not in listed.stdout
        data = os.urandom(1000)
        headers = {"Authorization": f"Bearer {secret}"}
        deadline = time.monotonic() + 5
        while http(origin, "PUT", f"/blobs/{b3(data)}", data, headers)[0] != 201:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert origin_cli(origin.data_dir, "token", "revoke", token_id).returncode == 0
        time.sleep(2.5)  # each worker caches a token for 2 s
        for _ in range(10):  # every worker has forgotten it
            other = os.urandom(10)
            assert http(origin, "PUT", f"/blobs/{b3(other)}", other, headers)[0] == 401
        assert origin_cli(origin.data_dir, "token", "revoke", token_id).returncode == 1
    finally:
        origin.stop()


def serve_at_first_start(data_dir: Path, *args: str) -> list[str]:
    """``origin serve`` without ORIGIN_ADMIN_TOKEN: the first start makes the admin token."""
    return [sys.executable, "-m", "origin", "--data-dir", str(data_dir), "serve", "--port", "0",
            *args]  # fmt: skip


def without_admin_token() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "ORIGIN_ADMIN_TOKEN"}


def start_at_first_start(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        serve_at_first_start(data_dir, *args),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=without_admin_token(),
    )  # fmt: skip


def post_blob(url: str, token: str) -> int:
    req = urllib.request.Request(f"{url}/blobs", data=os.urandom(100), method="POST",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


def test_first_start_prints_a_working_admin_token(tmp_path: Path) -> None:
    proc = start_at_first_start(tmp_path / "d")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        token = proc.stdout.readline().strip().split()[-1]
        assert token.startswith("orgn_")
        assert post_blob(url, token) == 201
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_first_start_that_fails_still_prints_its_admin_token(
    tmp_path: Path, workers: int
) -> None:
    data_dir = tmp_path / "d"
    break_the_store_layout(data_dir)
    failed = subprocess.run(serve_at_first_start(data_dir, "--workers", str(workers)),
                            capture_output=True, text=True, timeout=60,
                            env=without_admin_token())  # fmt: skip
    assert failed.returncode == 1
    # Before, nothing: the token existed (as a hash) and its secret was never shown.
    did_not_start, token_line = failed.stdout.splitlines()
    assert "did not start" in did_not_start
    token = token_line.split()[-1]
    assert token.startswith("orgn_")
    (data_dir / "tmp").unlink()
    proc = start_at_first_start(data_dir, "--workers", str(workers))
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        assert "created at first start" in proc.stdout.readline()  # no second token
        assert post_blob(url, token) == 201
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"ORIGIN_MAX_BLOB_SIZE": "lots"}, [], "max_blob_size"),
        ({"ORIGIN_WORKRES": "2"}, [], "workres: unknown setting"),
        ({}, ["--workers", "0"], "workers"),
        ({"ORIGIN_ADMIN_TOKEN": "short"}, [], "admin_token"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    result = origin_cli(tmp_path / "d", "serve", "--port", "0", *args,
                        env={"ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN, **env})  # fmt: skip
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert message in result.stderr


def test_metrics_add_up_across_workers(tmp_path: Path) -> None:
    origin = LiveOrigin(tmp_path / "d", workers=2).start()
    try:
        data = os.urandom(3000)
        assert http(origin, "PUT", f"/blobs/{b3(data)}", data, auth(origin))[0] == 201
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            assert http(origin, "GET", f"/blobs/{b3(data)}") == (200, data)
        # A second server on the same data directory keeps its counters apart.
        LiveOrigin(tmp_path / "d", workers=2).start().stop()
        time.sleep(1.5)  # each worker flushes its counts once a second
        _, body = http(origin, "GET", "/metrics")
        values = {}
        for line in body.decode().splitlines():
            if line.startswith("origin_") and " " in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        memory = [values.get(f'origin_cache_{kind}_total{{tier="memory"}}', 0.0)
                  for kind in ("hits", "misses")]  # fmt: skip
        assert sum(memory) == 40
        route = 'method="GET",route="/blobs/{digest}",status="200"'
        assert values[f"origin_request_duration_seconds_count{{{route}}}"] == 40
        ready = json.loads(http(origin, "GET", "/readyz")[1])
        assert ready["status"] == "ready"
    finally:
        origin.stop()


def test_serve_refuses_an_old_schema_and_names_the_command(tmp_path: Path) -> None:
    import asyncio

    from origin.catalog import Catalog, head_revision, upgrade

    data_dir = tmp_path / "d"
    data_dir.mkdir()

    async def old_schema() -> None:
        catalog = Catalog.connect(f"sqlite+aiosqlite:///{data_dir / 'catalog.sqlite'}")
        await upgrade(catalog.engine, "0001")
        await catalog.close()

    asyncio.run(old_schema())
    refused = origin_cli(data_dir, "serve", "--port", "0", env={"ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN})
    assert refused.returncode == 2
    assert "origin db upgrade" in refused.stderr
    upgraded = origin_cli(data_dir, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert origin_cli(data_dir, "db", "current").stdout.split()[1] == head_revision()


def test_large_gets_survive_clients_that_leave_and_ranges_come_exact(
    live_origin: LiveOrigin,
) -> None:
    data = BLOCK * 96  # 96 MiB: sent with sendfile from a worker thread
    digest = b3(data)
    assert http(live_origin, "PUT", f"/blobs/{digest}", data, auth(live_origin))[0] == 201
    for _ in range(5):  # clients that hang up mid-body
        with connect(live_origin) as sock:
            sock.sendall(request_head("GET", f"/blobs/{digest}", {}))
            assert read_head(sock).startswith(b"HTTP/1.1 200")
            sock.recv(1 << 20)
    status, body = http(
        live_origin, "GET", f"/blobs/{digest}", headers={"Range": "bytes=1000000-70000000"}
    )
    assert status == 206
    assert body == data[1000000:70000001]
    assert http(live_origin, "GET", f"/blobs/{digest}") == (200, data)
