"""``origin upload`` against a live origin: trees, excludes, interruptions, changes, failures."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator
from pathlib import Path

import aiohttp
import blake3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tenacity import RetryCallState, Retrying

from origin import uploader
from origin.uploader import Item, Options, Progress, hashed, upload_hashed

from .conftest import LiveOrigin
from .nginx_server import EdgeNginx, nginx_binary
from .sshd_server import SshdServer


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def run_upload(origin: LiveOrigin, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "origin", "upload", "--url", origin.url, *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "ORIGIN_TOKEN": origin.token, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip


def missing(origin: LiveOrigin, digests: list[str]) -> list[str]:
    req = urllib.request.Request(
        origin.url + "/blobs/missing",
        data=json.dumps({"digests": digests}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        found: list[str] = json.load(resp)["missing"]
        return found


def stored(origin: LiveOrigin) -> set[str]:
    return {p.name for p in (origin.data_dir / "blobs").rglob("*") if p.is_file()}


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_uploads_a_tree_with_excludes_ignore_file_and_manifest(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    tree = tmp_path / "library"
    files = {
        "avatars/robot.glb": os.urandom(300_000),
        "avatars/robot-copy.glb": b"",  # filled below: same bytes as robot.glb
        "worlds/plaza/scene.gltf": b'{"asset": {"version": "2.0"}}',
        "worlds/plaza/empty.bin": b"",
        "props/chair.glb": os.urandom(5000),
        "props/notes.tmp": b"scratch",
        "build/cache.bin": os.urandom(100),
    }
    files["avatars/robot-copy.glb"] = files["avatars/robot.glb"]
    make_tree(tree, files)
    (tree / ".originignore").write_text("build/\n")
    manifest = tmp_path / "manifest.json"
    result = run_upload(
        live_origin, tmp_path, str(tree), "--exclude", "*.tmp", "--manifest", str(manifest),
        "--register", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kept = {k: v for k, v in files.items() if not k.endswith(".tmp") and not k.startswith("build/")}
    assert missing(live_origin, [b3(d) for d in kept.values()]) == []
    assert stored(live_origin) == {b3(d) for d in kept.values()}
    doc = json.loads(manifest.read_text())
    assert set(doc) == {str(tree / name) for name in kept}
    assert all(doc[str(tree / n)]["digest"] == b3(data) for n, data in kept.items())
    assert all(doc[str(tree / n)]["name"] == n and doc[str(tree / n)]["asset_id"] for n in kept)
    with urllib.request.urlopen(f"{live_origin.url}/assets?kind=avatars", timeout=10) as resp:
        names = sorted(item["name"] for item in json.load(resp)["items"])
    assert names == ["robot", "robot-copy"]
    assert "4 uploaded" in result.stdout  # two files share one blob; the empty blob counts once


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c", "sigterm"])
def test_a_run_stopped_mid_way_is_finished_by_a_rerun(
    live_origin: LiveOrigin, tmp_path: Path, how: str
) -> None:
    tree = tmp_path / "big"
    files = {f"f{i:02d}.bin": os.urandom(4 << 20) for i in range(16)}
    make_tree(tree, files)
    env = {**os.environ, "ORIGIN_TOKEN": live_origin.token, "XDG_CACHE_HOME": str(tmp_path / "c")}
    manifest = tmp_path / "manifest.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "origin", "upload", "--url", live_origin.url, "-j", "1",
         "--no-progress", "--manifest", str(manifest), str(tree)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    target = random.randint(2, 10)
    deadline = time.monotonic() + 60
    while len(stored(live_origin)) < target and time.monotonic() < deadline:
        time.sleep(0.01)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the whole group
    else:
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    if how != "sigkill":  # a stop it sees: it says so, saves its hash cache, exits 128 + signal
        signum = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
        assert proc.returncode == 128 + signum, err
        assert "Traceback" not in err
        assert f"stopped by {signum.name}" in err
        assert (tmp_path / "c" / "origin" / "upload-hashes.json").is_file()
    # A request whose body was wholly sent before the stop may still land: wait for the server
    # to finish what it received, so `before` is what the re-run finds.
    before = stored(live_origin)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = stored(live_origin)
        if now == before and not list((live_origin.data_dir / "tmp").glob("*.part")):
            break
        before = now
    assert 0 < len(before) < len(files), "the stop should land mid-run"
    if how != "sigkill":  # the manifest holds what the origin had by then, and nothing else
        assert {e["digest"] for e in json.loads(manifest.read_text()).values()} <= before
    result = run_upload(live_origin, tmp_path, str(tree), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert stored(live_origin) == {b3(d) for d in files.values()}
    assert f"{len(files) - len(before)} uploaded" in result.stdout


def test_changed_file_is_sent_again_and_unchanged_ones_are_not(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    tree = tmp_path / "t"
    make_tree(tree, {"a.glb": b"first", "b.glb": b"stays"})
    assert run_upload(live_origin, tmp_path, str(tree)).returncode == 0
    (tree / "a.glb").write_bytes(b"second version")
    result = run_upload(live_origin, tmp_path, str(tree))
    assert result.returncode == 0, result.stderr
    assert "1 uploaded" in result.stdout
    assert "1 already there" in result.stdout
    assert b3(b"second version") in stored(live_origin)


def test_same_size_rewrite_with_its_mtime_put_back_is_sent_again(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    tree = tmp_path / "t"
    make_tree(tree, {"a.glb": b"version 1", "b.glb": b"stays"})
    old = (tree / "a.glb").stat()
    assert run_upload(live_origin, tmp_path, str(tree)).returncode == 0
    time.sleep(2.1)  # the first digests are old enough to be cached, not "racily clean"
    assert run_upload(live_origin, tmp_path, str(tree)).returncode == 0
    (tree / "a.glb").write_bytes(b"version 2")  # same size; then the old mtime, as cp -p does
    os.utime(tree / "a.glb", ns=(old.st_atime_ns, old.st_mtime_ns))
    result = run_upload(live_origin, tmp_path, str(tree))
    assert result.returncode == 0, result.stderr
    assert "1 uploaded" in result.stdout
    assert b3(b"version 2") in stored(live_origin)


def test_unreadable_file_is_reported_and_the_rest_uploads(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    tree = tmp_path / "t"
    make_tree(tree, {"good.glb": b"good bytes"})
    (tree / "broken.glb").symlink_to(tree / "nowhere")  # unreadable even for root
    result = run_upload(live_origin, tmp_path, str(tree))
    assert result.returncode == 1
    assert "FAILED broken.glb: cannot read" in result.stderr
    assert b3(b"good bytes") in stored(live_origin)


def test_a_fifo_is_reported_not_waited_on(live_origin: LiveOrigin, tmp_path: Path) -> None:
    tree = tmp_path / "t"
    make_tree(tree, {"good.glb": b"sent anyway"})
    os.mkfifo(tree / "pipe.glb")  # opening it to hash would wait for a writer forever
    result = subprocess.run(
        [sys.executable, "-m", "origin", "upload", "--url", live_origin.url, str(tree)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ORIGIN_TOKEN": live_origin.token, "XDG_CACHE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAILED pipe.glb: not a regular file" in result.stderr
    assert b3(b"sent anyway") in stored(live_origin)


async def test_uploads_start_before_the_last_file_is_hashed(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    """The digests come from a source that holds the second file back until the first is on
    the origin: a run that hashed everything before sending anything would wait forever."""
    first, second = tmp_path / "first.glb", tmp_path / "second.glb"
    first.write_bytes(os.urandom(200_000))
    second.write_bytes(os.urandom(3 << 20))
    items = [Item(first, first.name), Item(second, second.name)]

    async def source() -> AsyncGenerator[Item, None]:
        for item in items:
            item.size = item.path.stat().st_size
            item.digest = b3(item.path.read_bytes())
        yield items[0]
        async with asyncio.timeout(30):
            # Another process's files: nothing to wait on but the files themselves.
            while items[0].digest not in stored(live_origin):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        yield items[1]

    options = Options(url=live_origin.url, token=live_origin.token, progress=False)
    summary = await upload_hashed(items, source(), options)
    assert (summary.uploaded, summary.failed) == (2, 0)
    assert {i.digest for i in items} <= stored(live_origin)


def _hashed_now(*paths: Path) -> list[Item]:
    """Items as the hashing stage leaves them: digest, size and mtime of the file as it is."""
    items = []
    for path in paths:
        stat = path.stat()
        items.append(Item(path, path.name, stat.st_size, stat.st_mtime_ns, b3(path.read_bytes())))
    return items


async def _yielding(items: list[Item]) -> AsyncGenerator[Item, None]:
    for item in items:
        yield item


async def test_a_large_file_goes_up_whole_from_the_kernel_with_its_type(
    live_origin: LiveOrigin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploader.FileBody, "PIECE", 1 << 20)  # several pieces, one short
    data = os.urandom((5 << 20) + 12345)
    (tmp_path / "texture.png").write_bytes(data)
    [item] = _hashed_now(tmp_path / "texture.png")
    options = Options(url=live_origin.url, token=live_origin.token, progress=False)
    progress = Progress(to_check=1, live=False)
    async with aiohttp.ClientSession() as session:
        await uploader.Client(session, options).put(item, progress)
        async with session.get(f"{live_origin.url}/blobs/{item.digest}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "image/png"
            assert await resp.read() == data
    assert progress.done_bytes == len(data)


async def test_files_changed_since_they_were_hashed_fail_and_nothing_of_them_lands(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    """Rewritten after hashing (a small file, a large one) or cut short: each is reported and
    none is stored under the digest it had; the file that stayed the same goes up."""
    paths = {name: tmp_path / name for name in ("small.glb", "large.glb", "same.glb")}
    paths["small.glb"].write_bytes(os.urandom(1000))
    paths["large.glb"].write_bytes(os.urandom(3 << 20))
    paths["same.glb"].write_bytes(os.urandom(2 << 20))
    items = _hashed_now(*paths.values())
    paths["small.glb"].write_bytes(os.urandom(1001))
    with paths["large.glb"].open("r+b") as f:
        f.truncate(1 << 20)
    options = Options(url=live_origin.url, token=live_origin.token, progress=False)
    summary = await upload_hashed(items, _yielding(items), options)
    assert (summary.uploaded, summary.failed) == (1, 2)
    for item in items[:2]:
        assert item.error is not None
        assert "changed since it was hashed" in item.error
    assert stored(live_origin) == {items[2].digest}


async def test_a_file_cut_short_while_it_is_sent_fails_and_nothing_of_it_lands(
    live_origin: LiveOrigin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The origin sees a body shorter than announced and keeps nothing; the retry finds the
    file changed and reports it instead of sending it again."""
    monkeypatch.setattr(uploader.FileBody, "PIECE", 1 << 20)
    path = tmp_path / "shrinks.glb"
    path.write_bytes(os.urandom(4 << 20))
    [item] = _hashed_now(path)

    class CutAfterTheFirstPiece(Progress):
        def advance(self, nbytes: int, finished_file: bool = False) -> None:
            super().advance(nbytes, finished_file)
            if self.done_bytes > 0:
                os.truncate(path, 2 << 20)

    options = Options(url=live_origin.url, token=live_origin.token, progress=False)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RuntimeError, match="changed since it was hashed"):
            await uploader.Client(session, options).put(item, CutAfterTheFirstPiece(1, False))
    assert stored(live_origin) == set()
    assert not list((live_origin.data_dir / "tmp").glob("*"))


@pytest.mark.skipif(not Path("/sys/devices/system/cpu/online").exists(), reason="needs sysfs")
def test_a_file_that_reads_shorter_than_its_size_fails_instead_of_hanging(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    """sysfs says 4096 bytes and gives a few: sent with a Content-Length of 4096, the body would
    leave the origin waiting for the rest, and the run with it."""
    tree = tmp_path / "t"
    make_tree(tree, {"good.glb": b"good"})
    (tree / "online").symlink_to("/sys/devices/system/cpu/online")
    result = run_upload(live_origin, tmp_path, str(tree), "--retries", "1")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("FAILED online: upload failed: read ")
    assert line.endswith(" of its 4096 bytes")
    assert b3(b"good") in stored(live_origin)


def test_failed_names_are_one_line_each(live_origin: LiveOrigin, tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "two\nlines.glb").symlink_to(tree / "nowhere")
    result = run_upload(live_origin, tmp_path, str(tree))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "FAILED 'two\\nlines.glb': cannot read: No such file or directory"
    ]


async def test_a_run_stopped_while_hashing_keeps_the_digests_it_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploader, "CACHE_SAVE_EVERY", 0.0)
    monkeypatch.setattr(uploader, "RACY_NS", 0)  # files written just now may be cached
    files = {tmp_path / f"f{i}.bin": os.urandom(2 << 20) for i in range(3)}
    for path, data in files.items():
        path.write_bytes(data)
    cache = tmp_path / "hashes.json"
    source = hashed([Item(path, path.name) for path in files], cache)
    first = await anext(source)
    await anext(source)  # the cache is written before the second file comes
    await source.aclose()  # stopped with a file still to come
    saved = json.loads(cache.read_text())
    assert saved[str(first.path.resolve())][-1] == b3(files[first.path])


async def test_a_run_stopped_early_saves_what_it_hashed_since_the_last_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploader, "CACHE_SAVE_EVERY", 1e9)  # no save while hashing
    monkeypatch.setattr(uploader, "RACY_NS", 0)
    files = {tmp_path / f"f{i}.bin": os.urandom(1 << 20) for i in range(3)}
    for path, data in files.items():
        path.write_bytes(data)
    cache = tmp_path / "hashes.json"
    source = hashed([Item(path, path.name) for path in files], cache)
    got = [await anext(source), await anext(source)]
    await source.aclose()  # Ctrl-C, or the origin gone: the run ends with a file to come
    saved = json.loads(cache.read_text())
    for item in got:
        assert saved[str(item.path.resolve())][-1] == b3(files[item.path])


def test_progress_has_an_eta_only_once_every_file_is_checked() -> None:
    progress = Progress(to_check=3, live=False)
    progress.found(files=1, nbytes=2 << 20)
    progress.check(2)
    progress.done_bytes = 1 << 20
    assert progress.line().endswith("2/3 checked")
    assert "0/1 files, 1.0/2.0 MiB" in progress.line()
    progress.check(1)
    assert "ETA" in progress.line()
    assert "checked" not in progress.line()


def test_batch_file_dry_run_and_bad_input(live_origin: LiveOrigin, tmp_path: Path) -> None:
    (tmp_path / "x.glb").write_bytes(b"batched")
    batch = tmp_path / "batch.txt"
    batch.write_text(f"# comment\n\nput {tmp_path / 'x.glb'} renamed.glb\n")
    dry = run_upload(live_origin, tmp_path, "-b", str(batch), "--dry-run")
    assert dry.returncode == 0
    assert "would upload renamed.glb (7 bytes)" in dry.stdout
    assert b3(b"batched") not in stored(live_origin)
    assert run_upload(live_origin, tmp_path, "-b", str(batch)).returncode == 0
    assert b3(b"batched") in stored(live_origin)
    batch.write_text("get remote local\n")
    bad = run_upload(live_origin, tmp_path, "-b", str(batch))
    assert bad.returncode == 2
    assert "batch.txt:1: expected 'put [-f] LOCAL [NAME]'" in bad.stderr
    assert run_upload(live_origin, tmp_path, str(tmp_path / "absent")).returncode == 2


def test_a_wrong_token_fails_every_file(live_origin: LiveOrigin, tmp_path: Path) -> None:
    (tmp_path / "x.glb").write_bytes(b"nope")
    result = subprocess.run(
        [sys.executable, "-m", "origin", "upload", "--url", live_origin.url, "--token", "bad",
         str(tmp_path / "x.glb")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 1
    assert "401" in result.stderr


def failed_attempt(attempt: int, failure: Exception) -> RetryCallState:
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    try:
        raise failure
    except Exception:
        state.set_exception(sys.exc_info())  # type: ignore[arg-type]
    return state


def test_a_retry_waits_at_least_what_the_origin_asked() -> None:
    """Before, the back-off alone: 0.5-1.5 s after a 503 that said Retry-After: 5."""
    asked = uploader.Transient("503 Service Unavailable", retry_after=5)
    assert uploader.wait_before_retry(failed_attempt(1, asked)) >= 5
    assert 0.5 <= uploader.wait_before_retry(failed_attempt(1, uploader.Transient("503"))) <= 1.5
    # Once the back-off is the longer (10 s by the sixth attempt), the back-off; an absurd
    # Retry-After is capped.
    assert uploader.wait_before_retry(failed_attempt(6, asked)) >= 10
    huge = uploader.Transient("429", retry_after=86_400)
    assert uploader.wait_before_retry(failed_attempt(1, huge)) == uploader.MAX_RETRY_AFTER


def test_an_upload_rides_out_an_sftp_outage_through_its_retries(
    tmp_path: Path, sshd: SshdServer
) -> None:
    """The SFTP store is away when the upload starts and back 3 s later: the origin answers
    503 with Retry-After meanwhile, and the run waits, retries and ends with every file on
    the store and exit 0, with no re-run."""
    origin = LiveOrigin(tmp_path / "node", env=sshd.origin_env()).start()
    try:
        files = {f"props/p{i}.glb": os.urandom(20_000 + i) for i in range(12)}
        files["worlds/big.glb"] = os.urandom(3 << 20)
        make_tree(tmp_path / "tree", files)
        sshd.stop()
        back = threading.Timer(3.0, sshd.start)
        back.start()
        try:
            result = run_upload(origin, tmp_path, str(tmp_path / "tree"))
        finally:
            back.join()
        assert result.returncode == 0, result.stdout + result.stderr
        on_sftp = {p.name for p in (sshd.root / "blobs").rglob("*") if p.is_file()}
        assert on_sftp == {b3(data) for data in files.values()}
    finally:
        origin.stop()


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
def test_files_an_edge_refuses_are_one_line_each_and_the_rest_upload(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    """Through the nginx edge with a 1 MiB body limit: the two larger files get nginx's 413,
    an HTML page, which each FAILED line used to quote whole (seven lines); now the status
    and its reason, one line each. The small file goes through."""
    edge = EdgeNginx(tmp_path / "nginx", [f"127.0.0.1:{live_origin.port}"], max_body_size="1m")
    edge.start()
    try:
        tree = tmp_path / "tree"
        files = {"big.glb": os.urandom(2 << 20), "mid.glb": os.urandom(1_100_000)}
        make_tree(tree, {**files, "small.glb": b"small"})
        result = subprocess.run(
            [sys.executable, "-m", "origin", "upload", "--url", edge.url, str(tree)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "ORIGIN_TOKEN": live_origin.token,
                 "XDG_CACHE_HOME": str(tmp_path / "cache")},
        )  # fmt: skip
    finally:
        edge.stop()
    assert result.returncode == 1
    assert sorted(result.stderr.splitlines()) == [
        f"FAILED {name}: upload failed: 413: Request Entity Too Large" for name in sorted(files)
    ]
    assert stored(live_origin) == {b3(b"small")}


def test_an_origin_that_cannot_be_reached_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "x.glb").write_bytes(b"unsent")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    manifest = tmp_path / "m.json"
    manifest.write_text('{"earlier": {}}')
    result = subprocess.run(
        [sys.executable, "-m", "origin", "upload", "--url", url, "--retries", "1",
         "--manifest", str(manifest), str(tmp_path / "x.glb")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"origin upload: {url} could not say which blobs it lacks:")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert manifest.read_text() == '{"earlier": {}}'  # it heard nothing, so it says nothing


async def test_a_server_that_is_not_an_origin_stops_the_run_with_its_status(
    tmp_path: Path,
) -> None:
    """``--url`` names some other service, which answers a 4xx with JSON that is not a problem
    document (a list): the run stops with its status and reason. Before, reading the answer's
    ``detail`` raised an AttributeError past the run's handling (a traceback)."""

    async def not_an_origin(request: web.Request) -> web.Response:
        return web.json_response(["no", "such", "api"], status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_an_origin)
    (tmp_path / "x.glb").write_bytes(b"unsent")
    items = _hashed_now(tmp_path / "x.glb")
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        options = Options(url=url, token=None, progress=False, retries=1)
        with pytest.raises(uploader.OriginUnusable, match=r"could not say .*: 400: Bad Request$"):
            await upload_hashed(items, _yielding(items), options)


def test_dry_run_names_what_it_would_send_and_counts_the_rest(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    tree = tmp_path / "t"
    make_tree(tree, {"old.glb": b"already sent", "new.glb": b"not yet", "also/new.png": b"png"})
    assert run_upload(live_origin, tmp_path, str(tree / "old.glb")).returncode == 0
    (tree / "broken.glb").symlink_to(tree / "nowhere")
    dry = run_upload(live_origin, tmp_path, str(tree), "--dry-run")
    assert dry.returncode == 1  # the broken link
    lines = dry.stdout.splitlines()
    assert sorted(x for x in lines if x.startswith("would upload")) == [
        "would upload also/new.png (3 bytes)",
        "would upload new.glb (7 bytes)",
    ]
    assert lines[-1] == "4 files: 2 would be uploaded (10 bytes), 1 already there, 1 failed"
    assert b3(b"not yet") not in stored(live_origin)


def test_register_twice_makes_each_asset_once_with_kinds_from_folders(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    tree = tmp_path / "avatars"
    make_tree(tree, {"top.glb": b"top", "My Props/lamp.glb": b"lamp", "Hero/knight.glb": b"kn"})
    for _ in range(2):
        result = run_upload(live_origin, tmp_path, str(tree), "--register")
        assert result.returncode == 0, result.stderr
    assert "3 already there, 0 failed" in result.stdout
    (tree / "top.glb").write_bytes(b"top, changed")
    assert run_upload(live_origin, tmp_path, str(tree), "--register").returncode == 0
    with urllib.request.urlopen(f"{live_origin.url}/assets?limit=500", timeout=10) as resp:
        assets = sorted((a["kind"], a["name"], a["blob"]) for a in json.load(resp)["items"])
    assert assets == sorted(
        [
            ("avatars", "top", b3(b"top")),
            ("avatars", "top", b3(b"top, changed")),
            ("my-props", "lamp", b3(b"lamp")),
            ("hero", "knight", b3(b"kn")),
        ]
    )
    # A name that is not UTF-8 is registered with U+FFFD for its bad bytes (it failed the file).
    odd = tmp_path / "odd"
    odd.mkdir()
    (Path(os.fsdecode(bytes(odd) + b"/caf\xe9.glb"))).write_bytes(b"cafe")
    assert run_upload(live_origin, tmp_path, str(odd), "--register").returncode == 0
    query = urllib.parse.urlencode({"name": "caf\ufffd"})
    with urllib.request.urlopen(f"{live_origin.url}/assets?{query}", timeout=10) as resp:
        assert [a["blob"] for a in json.load(resp)["items"]] == [b3(b"cafe")]
    bad = run_upload(live_origin, tmp_path, str(tree), "--register", "--kind", "My Kind")
    assert bad.returncode == 2
    assert "--kind 'My Kind'" in bad.stderr


def test_unlistable_directories_and_linked_ones_are_reported(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    make_tree(tree, {"ok.glb": b"ok", "locked/secret.glb": b"s", "real/inside.glb": b"i"})
    (tree / "linked").symlink_to(tree / "real")
    (tree / "locked").chmod(0)
    # Root reads any directory; without the capabilities that let it, it is refused as others are.
    caps = "-dac_override,-dac_read_search"
    drop = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"] if os.geteuid() == 0 else []
    script = (
        "import sys; from origin.uploader import Options, collect\n"
        "for i in collect([sys.argv[1]], Options(url='', token=None)): print(i.name, i.error)"
    )
    try:
        out = subprocess.run(
            [*drop, sys.executable, "-c", script, str(tree)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    finally:
        (tree / "locked").chmod(0o755)
    assert sorted(out.splitlines()) == [
        "linked a link to a directory, not followed",
        "locked cannot list: Permission denied",
        "ok.glb None",
        "real/inside.glb None",
    ]


@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        (["--exclude", "!"], {}, "--exclude:"),
        ([], {".originignore": b"\xff\n"}, ".originignore: not UTF-8 text"),
        (["-b", "{tree}/batch.txt"], {"batch.txt": b"put \xff\n"}, "batch.txt: not UTF-8 text"),
        (["-b", "{tree}/batch.txt"], {"batch.txt": b'put "open\n'}, "batch.txt:1: No closing"),
        (["-b", "{tree}/batch.txt"], {"batch.txt": b"put -r dir\n"}, "batch.txt:1: expected"),
        (["--manifest", "/nonexistent/m.json"], {}, "--manifest /nonexistent/m.json"),
        (["--url", "127.0.0.1:8080"], {}, "--url '127.0.0.1:8080': an origin's address is"),
        (["--url", "ftp://127.0.0.1"], {}, "--url 'ftp://127.0.0.1': an origin's address is"),
        (["--url", ""], {}, "--url '': an origin's address is"),
        (["--url", "http://[::1"], {}, "--url 'http://[::1': Invalid IPv6 URL"),
        (["--url", "http://127.0.0.1:99999"], {}, "--url 'http://127.0.0.1:99999': Port out"),
    ],
)
def test_bad_patterns_and_batch_files_are_usage_errors(
    live_origin: LiveOrigin, tmp_path: Path, args: list[str], files: dict[str, bytes], message: str
) -> None:
    tree = tmp_path / "t"
    make_tree(tree, {"a.glb": b"never sent", **files})
    result = run_upload(live_origin, tmp_path, str(tree), *(a.format(tree=tree) for a in args))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert b3(b"never sent") not in stored(live_origin)


def test_batch_files_read_as_sftp_reads_them(live_origin: LiveOrigin, tmp_path: Path) -> None:
    make_tree(
        tmp_path / "src",
        {"with space.glb": b"spaced", "big.bin": b"big", "c.png": b"c", "a b.glb": b"ab"},
    )
    batch = tmp_path / "batch.txt"
    batch.write_text(
        "-mkdir models\n"
        f'put "{tmp_path}/src/with space.glb" "remote name.glb"  # quoted\n'
        f"put -f {tmp_path}/src/big.bin models/\n"
        f"-put {tmp_path}/src/a\\ b.glb\n"
        f"put {tmp_path}/src/c.png\n"
    )
    manifest = tmp_path / "m.json"
    result = run_upload(live_origin, tmp_path, "-b", str(batch), "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr
    names = sorted(e["name"] for e in json.loads(manifest.read_text()).values())
    assert names == ["a b.glb", "c.png", "models/big.bin", "remote name.glb"]
    assert {b3(b"spaced"), b3(b"big"), b3(b"c"), b3(b"ab")} <= stored(live_origin)


def test_the_manifest_keeps_files_of_the_same_name_in_two_trees(
    live_origin: LiveOrigin, tmp_path: Path
) -> None:
    make_tree(tmp_path, {"libA/chair.glb": b"chair A", "libB/chair.glb": b"chair B"})
    manifest = tmp_path / "m.json"
    result = run_upload(
        live_origin, tmp_path, str(tmp_path / "libA"), str(tmp_path / "libB"),
        "--manifest", str(manifest),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(manifest.read_text())
    assert {k: v["digest"] for k, v in doc.items()} == {
        str(tmp_path / "libA" / "chair.glb"): b3(b"chair A"),
        str(tmp_path / "libB" / "chair.glb"): b3(b"chair B"),
    }


def test_plain_progress_ends_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A quick run prints one line, once its last file has finished: before, it came when the
    last bytes had been read, and said "0/2 files" of a run that uploaded both."""
    progress = Progress(to_check=2, live=False)
    progress.found(files=2, nbytes=10)
    progress.check(2)
    progress.advance(10)
    progress.advance(0, finished_file=True)
    assert capsys.readouterr().out == ""  # one PUT still under way
    progress.advance(0, finished_file=True)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("2/2 files, 0.0/0.0 MiB")
    assert line.endswith(", done")  # no ETA once nothing is left (it said "ETA 0s")
    # A file that fails ends the run's progress as one that finishes does.
    failing = Progress(to_check=2, live=False)
    failing.found(files=2, nbytes=10)
    failing.check(2)
    failing.advance(0, finished_file=True)
    assert capsys.readouterr().out == ""
    failing.fail_file()
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("1/2 files")
    assert line.endswith(", done")  # not an ETA for bytes that will never be sent
