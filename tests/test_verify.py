"""``origin verify`` against a disk store and a catalog on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from blobstore import DiskBackend
from origin.catalog import Catalog
from origin.verify import verify

from .conftest import LiveOrigin, chunks_of
from .sshd_server import SshdServer
from .test_live_server import auth, b3, http, origin_cli


async def test_verify_finds_corrupt_missing_and_unrecorded_blobs(
    catalog: Catalog, tmp_path: Path
) -> None:
    store = DiskBackend(tmp_path / "store")
    await store.start()
    infos = []
    for size in (10, 200_000, 3 << 20):
        info = (await store.put(chunks_of(os.urandom(size)))).info
        await catalog.record_blob(info)
        infos.append(info)
    report = await verify(store, catalog, jobs=2)
    assert (report.checked, report.findings, report.ok) == (3, [], True)
    assert report.bytes_read == sum(i.size for i in infos)

    rotten, gone = infos[1], infos[2]
    path = store.local_path(rotten.digest)
    assert path is not None
    with path.open("r+b") as f:  # one bit flipped behind the store
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 1]))
    assert await store.delete(gone.digest)
    stray = (await store.put(chunks_of(os.urandom(5000)))).info  # its catalog write "failed"

    report = await verify(store, catalog, jobs=2)
    found = {(f.digest, f.problem) for f in report.findings}
    assert found == {
        (rotten.digest.hex, "corrupt"), (gone.digest.hex, "missing"),
        (stray.digest.hex, "unrecorded"),
    }  # fmt: skip
    assert not report.ok
    assert await catalog.blob(stray.digest.hex) is None  # verify alone changes nothing

    report = await verify(store, catalog, jobs=2, record=True)
    assert report.recorded == 1
    record = await catalog.blob(stray.digest.hex)
    assert record is not None
    assert record.size == 5000
    assert {f.problem for f in (await verify(store, catalog, jobs=1)).findings} == {
        "corrupt", "missing",
    }  # fmt: skip


def test_origin_verify_reports_and_exits_1_on_a_corrupt_blob(live_origin: LiveOrigin) -> None:
    blobs = [os.urandom(n) for n in (100, 300_000)]
    for data in blobs:
        assert http(live_origin, "PUT", f"/blobs/{b3(data)}", data, auth(live_origin))[0] == 201
    live_origin.stop()
    clean = origin_cli(live_origin.data_dir, "verify", "--jobs", "2")
    assert clean.returncode == 0, clean.stderr
    assert "checked 2 blobs" in clean.stdout
    digest = b3(blobs[1])
    path = live_origin.data_dir / "blobs" / digest[:2] / digest[2:4] / digest
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    found = origin_cli(live_origin.data_dir, "verify")
    assert found.returncode == 1
    assert f"corrupt {digest}: its BLAKE3 is" in found.stdout
    assert "1 corrupt, 0 missing, 0 unrecorded" in found.stdout


def test_origin_verify_reads_the_sftp_store_and_leaves_the_nodes_cache_alone(
    tmp_path: Path, sshd: SshdServer
) -> None:
    """With SFTP configured, verify checks what is on the SFTP server, and opens nothing of the
    node's tiers: no disk cache of its own on the node's cache directory (it used to build the
    whole chain and start a second maintainer of that directory beside the running server)."""
    env = sshd.origin_env()
    origin = LiveOrigin(data_dir=tmp_path / "node", env=env).start()
    data = os.urandom(200_000)
    digest = b3(data)
    try:
        assert http(origin, "PUT", f"/blobs/{digest}", data, auth(origin))[0] == 201
    finally:
        origin.stop()
    shutil.rmtree(origin.data_dir / "cache")
    clean = origin_cli(origin.data_dir, "verify", env=env)
    assert clean.returncode == 0, clean.stderr
    assert "checked 1 blobs" in clean.stdout
    # asyncssh's lines for each connection and channel, at INFO, only at log_level debug.
    assert "asyncssh" not in clean.stderr, clean.stderr
    on_sftp = sshd.root / "blobs" / digest[:2] / digest[2:4] / digest
    on_sftp.write_bytes(data[:-1] + b"!")
    found = origin_cli(origin.data_dir, "verify", env=env)
    assert found.returncode == 1
    assert f"corrupt {digest}: its BLAKE3 is" in found.stdout
    assert not (origin.data_dir / "cache").exists()
