"""Shared fixtures: an in-process app for API tests and a real ``origin serve`` subprocess."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from blobstore import BlobBackend, Digest, StorageFull
from origin import Config, create_app
from origin.catalog import Catalog, upgrade

from .postgres_server import PostgresServer
from .sshd_server import SshdServer

ADMIN_TOKEN = "test-admin-token-0123456789"
Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN).validate()


@pytest.fixture
async def client(config: Config) -> AsyncIterator[Client]:
    server = TestServer(create_app(config))
    async with TestClient(server) as test_client:
        yield test_client


@dataclass
class LiveOrigin:
    """``origin serve`` in its own process, on a free loopback port."""

    data_dir: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    token: str = ADMIN_TOKEN
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LiveOrigin:
        env = {**os.environ, "ORIGIN_ADMIN_TOKEN": self.token, **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "origin", "serve", "--data-dir", str(self.data_dir),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                return self
        self.stop()
        raise RuntimeError("origin did not start:\n" + "".join(self.output))

    def _pump(self, proc: subprocess.Popen[bytes], lines: queue.Queue[str]) -> None:
        """Keep reading the server's output so it never blocks on a full pipe."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            self.output.append(line)
            lines.put(line)

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def server_pids(self) -> list[int]:
        """The processes that serve requests: the workers, or the process itself with one."""
        import psutil

        assert self.proc is not None
        workers = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child.pid)
            except psutil.Error:  # exited (or a zombie not yet reaped): not serving
                continue
        return workers or [self.proc.pid]


@pytest.fixture
def live_origin(tmp_path: Path) -> Iterator[LiveOrigin]:
    origin = LiveOrigin(data_dir=tmp_path / "live-data").start()
    yield origin
    origin.stop()


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``mount`` (made) with mount ``options``; skips the test where none can
    be mounted."""
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs), so ENOSPC comes from the kernel, not from a mock."""
    with mounted_tmpfs(tmp_path / "tiny", "size=2m") as mount:
        yield mount


def bytes_in_new_shards(than: bytes, size: int = 1000) -> bytes:
    """Random bytes none of whose shard directories (BLAKE3's or SHA-256's) ``than`` uses."""

    def shards(data: bytes) -> set[str]:
        return {blake3.blake3(data).hexdigest()[:4], hashlib.sha256(data).hexdigest()[:4]}

    while shards(data := os.urandom(size)) & shards(than):
        pass
    return data


def limit_inodes(mount: Path, spare: int) -> None:
    """Remount a ``tiny_fs`` with room for only ``spare`` more files, directories or links."""
    vfs = os.statvfs(mount)
    used = vfs.f_files - vfs.f_ffree
    subprocess.run(["mount", "-o", f"remount,nr_inodes={used + spare}", str(mount)], check=True)


async def chunks_of(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def digest_of(data: bytes) -> Digest:
    return Digest(blake3.blake3(data).hexdigest())


async def refusals_until_it_fits(
    backend: BlobBackend, mount: Path, data: bytes, temps_left: Callable[[], list[str]]
) -> int:
    """Put ``data`` into a ``backend`` on the ``tiny_fs`` at ``mount`` with room for one more
    inode at each try, until it fits; how many tries were refused. Each refusal must be a
    StorageFull that left no temp file and no blob: the store holds what it held before."""
    before = [d async for d in backend.iter_digests()]
    refused = 0
    for spare in range(1, 20):
        limit_inodes(mount, spare)
        try:
            result = await backend.put(chunks_of(data))
        except StorageFull:
            refused += 1
            assert temps_left() == []
            assert [d async for d in backend.iter_digests()] == before
            assert await backend.stat(digest_of(data)) is None
            continue
        assert result.created
        return refused
    raise AssertionError("the upload never fitted")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshdServer]:
    """A private OpenSSH server (sftp subsystem) for one test; a module may share one instead."""
    server = SshdServer(tmp_path / "sshd").start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One catalog test suite, run on the embedded default and on PostgreSQL (SERIALIZABLE)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
async def catalog(catalog_url: str) -> AsyncIterator[Catalog]:
    """A migrated catalog on each of SQLite and PostgreSQL."""
    cat = Catalog.connect(catalog_url)
    await upgrade(cat.engine)
    yield cat
    await cat.close()


@pytest.fixture
def catalog_config(catalog_url: str, tmp_path: Path) -> Config:
    """The app's config for API tests on each catalog; a module overrides it for its needs.
    No scheduled training: tests that want a model ask for one."""
    return Config(
        data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, database_url=catalog_url,
        recommender_train_interval=0,
    ).validate()  # fmt: skip


@pytest.fixture
async def api(catalog_config: Config) -> AsyncIterator[Client]:
    """The app in-process on a migrated catalog: SQLite, then PostgreSQL (SERIALIZABLE)."""
    assert catalog_config.database_url is not None
    catalog = Catalog.connect(catalog_config.database_url)
    await upgrade(catalog.engine)
    await catalog.close()
    async with TestClient(TestServer(create_app(catalog_config))) as test_client:
        yield test_client
