"""SftpBackend against a real OpenSSH sshd: layout, ranges, atomic commits, races, outages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncssh
import psutil
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE

from blobstore import (
    BackendUnavailable,
    BlobBackend,
    BlobNotFound,
    BlobTooLarge,
    Digest,
    DigestMismatch,
    DiskBackend,
    Expectation,
    SftpBackend,
    StorageFull,
    sshsend,
)
from blobstore.sftp_pool import Channel, Remote, Stalled
from blobstore.sshsend import fast_channel_data, fast_requests
from blobstore.sshtune import (
    _KeyedGCMCipher,
    buffer_padding_randomness,
    coalesce_writes,
    keep_gcm_keys,
    log_lazily,
    skip_ignore_packets,
)

from .conftest import (
    bytes_in_new_shards,
    chunks_of,
    digest_of,
    limit_inodes,
    refusals_until_it_fits,
)
from .sshd_server import SshdServer, keygen

CHUNK = 256 * 1024
# An operation against a stopped server must fail at once, not after a timeout.
PROMPT = 5.0


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    server = SshdServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def running(sshd: SshdServer) -> Iterator[SshdServer]:
    """The shared server, started again after a test that stopped it."""
    if sshd.proc is None or sshd.proc.poll() is not None:
        sshd.start()
    yield sshd
    if sshd.proc is None or sshd.proc.poll() is not None:
        sshd.start()


@pytest.fixture
def root(running: SshdServer) -> Path:
    """A store directory of this test's own on the server (the server runs on this host)."""
    return running.root / uuid.uuid4().hex


def make_backend(sshd: SshdServer, root: Path, **options: Any) -> SftpBackend:
    return SftpBackend.from_url(
        sshd.url_at(root),
        client_keys=[sshd.client_key],
        known_hosts=sshd.known_hosts,
        chunk_size=CHUNK,
        **options,
    )


@pytest.fixture
async def sftp(running: SshdServer, root: Path) -> AsyncIterator[SftpBackend]:
    backend = make_backend(running, root)
    await backend.start()
    yield backend
    await backend.close()


def files_under(root: Path, part: str) -> list[str]:
    base = root / part
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if not p.is_dir())


def stored_anything(root: Path) -> bool:
    return root.exists()


def assert_nothing_stored(root: Path) -> None:
    for part in ("tmp", "blobs", "meta"):
        assert files_under(root, part) == [], part


async def read_all(
    backend: SftpBackend, digest: Digest, start: int = 0, end: int | None = None
) -> bytes:
    return b"".join([c async for c in backend.open(digest, start, end)])


async def test_is_a_blob_backend(sftp: SftpBackend) -> None:
    assert isinstance(sftp, BlobBackend)
    assert sftp.local_path(digest_of(b"x")) is None


@pytest.mark.parametrize("size", [0, 1, 3 << 20])
async def test_round_trip_with_metadata_and_disk_layout(
    sftp: SftpBackend, running: SshdServer, root: Path, size: int
) -> None:
    data = os.urandom(size)
    d = digest_of(data)
    result = await sftp.put(chunks_of(data), Expectation(blake3=d), "model/gltf-binary")
    assert result.created
    assert (result.info.digest, result.info.size) == (d, size)
    assert result.info.sha256 == hashlib.sha256(data).digest()
    assert await read_all(sftp, d) == data

    # A backend without cached info reads the metadata file back.
    fresh = make_backend(running, root)
    try:
        info = await fresh.stat(d)
        assert info is not None
        assert (info.size, info.sha256, info.content_type) == (
            size,
            result.info.sha256,
            "model/gltf-binary",
        )
        assert info.created_at == result.info.created_at
        assert await fresh.resolve_sha256(result.info.sha256) == d
    finally:
        await fresh.close()

    # DiskBackend's layout exactly: a DiskBackend on the same tree serves the blob.
    blob = root / "blobs" / d.hex[:2] / d.hex[2:4] / d.hex
    assert blob.read_bytes() == data
    meta = json.loads((root / "meta" / d.hex[:2] / d.hex[2:4] / f"{d.hex}.json").read_text())
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    disk = DiskBackend(root)
    assert await disk.stat(d) == info
    assert await disk.resolve_sha256(result.info.sha256) == d
    assert files_under(root, "tmp") == []


async def test_ranges(sftp: SftpBackend) -> None:
    data = os.urandom(3 * CHUNK + 1000)
    d = (await sftp.put(chunks_of(data))).info.digest
    for start, end in [(0, 1), (10, 20), (CHUNK - 5, CHUNK + 5), (1, 3 * CHUNK), (0, len(data))]:
        assert await read_all(sftp, d, start, end) == data[start:end], (start, end)
    assert await read_all(sftp, d, 2 * CHUNK + 7) == data[2 * CHUNK + 7 :]  # to the end
    assert await read_all(sftp, d, len(data) - 1) == data[-1:]
    assert await read_all(sftp, d, 5, 5) == b""
    assert await read_all(sftp, d, len(data) - 10, len(data) + 100) == data[-10:]
    # Streamed in bounded chunks, never the whole blob at once.
    sizes = [len(c) async for c in sftp.open(d)]
    assert max(sizes) <= CHUNK
    assert sum(sizes) == len(data)


async def test_missing_blob(sftp: SftpBackend) -> None:
    d = digest_of(b"never stored")
    assert await sftp.stat(d) is None
    with pytest.raises(BlobNotFound):
        await read_all(sftp, d)
    with pytest.raises(BlobNotFound):
        await read_all(sftp, d, 0, 10)
    assert await sftp.resolve_sha256(hashlib.sha256(b"never stored").digest()) is None
    assert not await sftp.delete(d)


async def test_mismatch_and_oversize_leave_nothing(sftp: SftpBackend, root: Path) -> None:
    data = os.urandom(600_000)
    with pytest.raises(DigestMismatch):
        await sftp.put(chunks_of(data), Expectation(blake3=digest_of(b"other")))
    with pytest.raises(DigestMismatch):
        await sftp.put(chunks_of(data), Expectation(sha256=hashlib.sha256(b"x").digest()))
    with pytest.raises(BlobTooLarge):
        await sftp.put(chunks_of(data), Expectation(max_size=len(data) - 1))
    assert await sftp.stat(digest_of(data)) is None
    assert_nothing_stored(root)


async def test_concurrent_puts_of_one_blob_from_two_nodes(
    sftp: SftpBackend, running: SshdServer, root: Path
) -> None:
    other_node = make_backend(running, root)
    await other_node.start()
    try:
        data = os.urandom(2 << 20)
        puts = [
            node.put(chunks_of(data), Expectation(blake3=digest_of(data)))
            for node in [sftp, other_node] * 4
        ]
        results = await asyncio.gather(*puts)
        assert sum(r.created for r in results) == 1
        assert {r.info.sha256 for r in results} == {hashlib.sha256(data).digest()}
        assert await read_all(other_node, digest_of(data)) == data
        assert files_under(root, "tmp") == []
        assert files_under(root, "blobs") == [
            f"{digest_of(data).hex[:2]}/{digest_of(data).hex[2:4]}/{digest_of(data).hex}"
        ]
    finally:
        await other_node.close()


async def test_cancelled_upload_leaves_no_file(sftp: SftpBackend, root: Path) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield os.urandom(CHUNK)
        started.set()
        await asyncio.Event().wait()  # the client stops sending
        yield b""

    task = asyncio.create_task(sftp.put(stalls()))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.2)
    assert files_under(root, "tmp") != []  # it was streaming to a temp file
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_stored(root)


@dataclass(frozen=True)
class SentRequest:
    pkttype: int
    body: bytes
    alone: bool  # every earlier request was answered when this one went out


@contextlib.contextmanager
def requests_sent(channel: Any) -> Iterator[list[SentRequest]]:
    """The SFTP requests sent on ``channel`` while inside, in order."""
    handler: Any = channel.sftp._handler
    send_packet = handler.send_packet
    sent: list[SentRequest] = []

    def recording(pkttype: int, pktid: int | None, *args: bytes) -> None:
        sent.append(SentRequest(pkttype, b"".join(args), len(handler._requests) <= 1))
        send_packet(pkttype, pktid, *args)

    handler.send_packet = recording
    try:
        yield sent
    finally:
        handler.send_packet = send_packet


async def test_a_small_put_is_five_round_trips_the_last_making_its_rename_durable(
    sftp: SftpBackend, root: Path
) -> None:
    """Open both temps; write and check the name; fsync both, close and place the metadata
    (with the SHA-256 link); rename the blob; fsync the blob again through its open handle, so
    that the server's file system commits the rename, and close it. Counted as flights:
    requests sent while no other was outstanding, i.e. after waiting for every answer.
    Requests on one file go out back to back (fsync, then close), which the protocol allows;
    each file still ends in place and whole."""
    data = os.urandom(4096)
    # start() made the first level of shard directories, so the second level's mkdir goes
    # with the writes.
    with requests_sent(await sftp._pool.lease()) as sent:
        result = await sftp.put(chunks_of(data))
    flights: list[list[SentRequest]] = []
    for request in sent:
        if request.alone:
            flights.append([])
        flights[-1].append(request)
    assert result.created
    assert len(flights) == 5, flights
    assert [r.pkttype for r in flights[-2]] == [asyncssh.constants.FXP_RENAME]
    assert [r.pkttype for r in flights[-1]] == [
        asyncssh.constants.FXP_EXTENDED,
        asyncssh.constants.FXP_CLOSE,
    ]
    assert b"fsync@openssh.com" in flights[-1][0].body
    digest = result.info.digest
    assert (root / "blobs" / Path(*digest.shard()) / digest.hex).read_bytes() == data
    meta = json.loads((root / "meta" / Path(*digest.shard()) / f"{digest.hex}.json").read_text())
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert files_under(root, "tmp") == []


async def test_a_duplicate_upload_is_answered_once_the_blob_is_durable(
    sftp: SftpBackend, root: Path
) -> None:
    """The first upload may have renamed the blob and not yet fsynced it again; the second,
    about to be answered "stored", fsyncs the blob itself first."""
    data = os.urandom(4096)
    assert (await sftp.put(chunks_of(data))).created
    with requests_sent(await sftp._pool.lease()) as sent:
        again = await sftp.put(chunks_of(data))
    assert not again.created
    assert again.info.sha256 == hashlib.sha256(data).digest()
    assert any(
        r.pkttype == asyncssh.constants.FXP_EXTENDED and b"fsync@openssh.com" in r.body
        for r in sent
    ), [r.pkttype for r in sent]
    assert files_under(root, "tmp") == []


async def test_sshd_killed_mid_upload(sftp: SftpBackend, running: SshdServer, root: Path) -> None:
    half_sent = asyncio.Event()
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for i in range(16):
            if i == 8:
                half_sent.set()
                await go_on.wait()
            yield os.urandom(CHUNK)

    task = asyncio.create_task(sftp.put(body()))
    await asyncio.wait_for(half_sent.wait(), 10)
    await asyncio.sleep(0.2)
    running.stop()
    go_on.set()
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await task
    assert time.monotonic() - t0 < PROMPT
    assert files_under(root, "blobs") == []
    running.start()
    assert (await sftp.put(chunks_of(b"after the outage"))).created  # the same instance
    # The half-written temp file, and the metadata's opened beside it, stay (the connection to
    # remove them was gone) until a start, here by another node, finds them old enough to be
    # sure no upload is still writing them.
    left = files_under(root, "tmp")
    assert sorted(name.endswith(".meta.part") for name in left) == [False, True]
    # 8 blocks were received; the last one is held back for the commit, the 7th may be in flight.
    assert sum((root / "tmp" / name).stat().st_size for name in left) >= 6 * CHUNK
    two_hours_ago = time.time() - 7200
    for name in left:
        os.utime(root / "tmp" / name, (two_hours_ago, two_hours_ago))
    other_node = make_backend(running, root)
    try:
        assert await other_node.start() == 2
    finally:
        await other_node.close()
    assert files_under(root, "tmp") == []


async def test_sshd_killed_mid_download(sftp: SftpBackend, running: SshdServer) -> None:
    data = os.urandom(20 * CHUNK)
    d = (await sftp.put(chunks_of(data))).info.digest
    received: list[bytes] = []
    stopped_at = [0.0]

    async def download() -> None:
        async for chunk in sftp.open(d):
            received.append(chunk)
            if len(received) == 2:
                running.stop()
                stopped_at[0] = time.monotonic()

    # Never a stream that just ends early: the caller must know the body is incomplete.
    with pytest.raises(BackendUnavailable):
        await download()
    assert time.monotonic() - stopped_at[0] < PROMPT
    assert len(b"".join(received)) < len(data)


async def test_outage_fails_fast_then_recovers(
    sftp: SftpBackend, running: SshdServer, root: Path
) -> None:
    kept = os.urandom(100_000)
    d = (await sftp.put(chunks_of(kept))).info.digest
    unknown = digest_of(b"not cached")
    running.stop()

    async def fails(op: Awaitable[object]) -> None:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await op
        assert time.monotonic() - t0 < PROMPT

    await fails(sftp.stat(unknown))
    await fails(read_all(sftp, d))
    await fails(sftp.put(chunks_of(b"during the outage")))
    await fails(sftp.delete(d))
    await fails(sftp.resolve_sha256(hashlib.sha256(kept).digest()))
    await fails(sftp.ping())

    async def walk() -> None:
        _ = [x async for x in sftp.iter_digests()]

    await fails(walk())
    assert files_under(root, "blobs") != []

    running.start()
    assert await read_all(sftp, d) == kept
    assert await sftp.stat(unknown) is None
    assert (await sftp.put(chunks_of(b"after the outage"))).created


async def test_restart_unnoticed_reads_retry_and_uploads_do_not(
    sftp: SftpBackend, running: SshdServer
) -> None:
    data = os.urandom(10_000)
    d = (await sftp.put(chunks_of(data))).info.digest
    # Stopped and started without giving the event loop a turn: the pooled connections still
    # look alive, and the first request on each finds it dead.
    running.stop()
    running.start()
    assert await read_all(sftp, d) == data
    running.stop()
    running.start()
    with pytest.raises(BackendUnavailable):
        await sftp.put(chunks_of(b"sent on a dead connection"))
    assert (await sftp.put(chunks_of(b"sent on a dead connection"))).created


async def test_wrong_host_key_is_refused(running: SshdServer, root: Path, tmp_path: Path) -> None:
    impostor = keygen(tmp_path / "other_host", "impostor")
    known_hosts = running.write_known_hosts(tmp_path / "known_hosts", impostor)
    backend = SftpBackend.from_url(
        running.url_at(root),
        client_keys=[running.client_key],
        known_hosts=known_hosts,
    )
    with pytest.raises(BackendUnavailable, match="host key") as caught:
        await backend.start()
    assert isinstance(caught.value.__cause__, asyncssh.HostKeyNotVerifiable)
    assert not stored_anything(root)
    await backend.close()


async def test_unauthorised_client_key_is_refused(
    running: SshdServer, root: Path, tmp_path: Path
) -> None:
    keygen(tmp_path / "stranger", "stranger")
    backend = SftpBackend.from_url(
        running.url_at(root),
        client_keys=[tmp_path / "stranger"],
        known_hosts=running.known_hosts,
    )
    with pytest.raises(BackendUnavailable) as caught:
        await backend.start()
    assert isinstance(caught.value.__cause__, asyncssh.PermissionDenied)
    await backend.close()


async def test_iter_digests_and_delete(sftp: SftpBackend, running: SshdServer, root: Path) -> None:
    blobs = [os.urandom(n) for n in (10, 20_000, 300_000)]
    digests = {(await sftp.put(chunks_of(b))).info.digest for b in blobs}
    assert {d async for d in sftp.iter_digests()} == digests
    gone = digest_of(blobs[1])
    assert await sftp.stat(gone) is not None
    other_node = make_backend(running, root)  # nothing cached: asks the server
    try:
        assert await other_node.exists(gone)
        assert await sftp.delete(gone)
        assert not await other_node.exists(gone)
    finally:
        await other_node.close()
    assert not await sftp.exists(gone)
    assert not await sftp.delete(gone)
    assert await sftp.stat(gone) is None
    with pytest.raises(BlobNotFound):
        await read_all(sftp, gone)
    assert await sftp.resolve_sha256(hashlib.sha256(blobs[1]).digest()) is None
    assert {d async for d in sftp.iter_digests()} == digests - {gone}
    assert not any(
        gone.hex in name for part in ("meta", "sha256") for name in files_under(root, part)
    )


async def test_resolve_sha256(sftp: SftpBackend, root: Path) -> None:
    data = os.urandom(5000)
    sha = hashlib.sha256(data).digest()
    assert await sftp.resolve_sha256(sha) is None
    d = (await sftp.put(chunks_of(data))).info.digest
    assert await sftp.resolve_sha256(sha) == d
    # A server without symlinks gets a file holding the BLAKE3 hex: read as well.
    link = root / "sha256" / sha.hex()[:2] / sha.hex()[2:4] / sha.hex()
    link.unlink()
    link.write_text(d.hex)
    assert await sftp.resolve_sha256(sha) == d


async def test_start_sweeps_only_old_temp_files(running: SshdServer, root: Path) -> None:
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "old.part").write_bytes(b"left by a crashed node")
    hour_ago = time.time() - 3700
    os.utime(tmp / "old.part", (hour_ago, hour_ago))
    (tmp / "young.part").write_bytes(b"another node is uploading this")
    # A long upload: its blob's temp is being written, its metadata's waits for the commit.
    (tmp / "long.part").write_bytes(b"still arriving")
    (tmp / "long.meta.part").write_bytes(b"")
    os.utime(tmp / "long.meta.part", (hour_ago, hour_ago))
    (tmp / "dead.part").write_bytes(b"")
    (tmp / "dead.meta.part").write_bytes(b"")
    for name in ("dead.part", "dead.meta.part"):
        os.utime(tmp / name, (hour_ago, hour_ago))
    (tmp / "unrelated").write_bytes(b"not ours")
    backend = make_backend(running, root)
    try:
        assert await backend.start() == 3
    finally:
        await backend.close()
    assert sorted(p.name for p in tmp.iterdir()) == [
        "long.meta.part",
        "long.part",
        "unrelated",
        "young.part",
    ]


async def test_missing_metadata_is_rebuilt(
    sftp: SftpBackend, running: SshdServer, root: Path
) -> None:
    data = os.urandom(700_000)
    d = (await sftp.put(chunks_of(data))).info.digest
    meta = root / "meta" / d.hex[:2] / d.hex[2:4] / f"{d.hex}.json"
    meta.unlink()
    fresh = make_backend(running, root)
    try:
        info = await fresh.stat(d)
    finally:
        await fresh.close()
    assert info is not None
    assert info.sha256 == hashlib.sha256(data).digest()
    assert meta.exists()


async def test_metadata_that_cannot_be_saved_still_answers_the_read(
    running: SshdServer, tiny_fs: Path
) -> None:
    """The rebuilt metadata's directory cannot be made (no inode left, which SFTP v3 reports
    as a plain failure): the read still gets the rehashed facts, and nothing is left."""
    backend = make_backend(running, tiny_fs)
    await backend.start()
    try:
        data = os.urandom(10_000)
        d = (await backend.put(chunks_of(data))).info.digest
        meta = tiny_fs / "meta" / d.hex[:2] / d.hex[2:4]
        shutil.rmtree(meta)
        backend._info.clear()
        limit_inodes(tiny_fs, 1)  # the temp file, not its directory
        info = await backend.stat(d)
        assert info is not None
        assert info.sha256 == hashlib.sha256(data).digest()
        assert not meta.exists()
        assert files_under(tiny_fs, "tmp") == []
    finally:
        await backend.close()


async def test_rebuilding_a_large_blobs_metadata_is_not_held_to_one_requests_deadline(
    running: SshdServer, root: Path
) -> None:
    """Rehashing reads the whole blob: under one request's deadline, a large blob's stat would
    time out, drop the connection and be a 503 for ever."""
    # Each read takes milliseconds; reading 200 MiB takes well over the 0.2 s deadline.
    backend = make_backend(running, root, io_timeout=0.2)
    await backend.start()
    try:
        block = os.urandom(CHUNK)
        d = (await backend.put(chunks_of(block * 800))).info.digest
        (root / "meta" / d.hex[:2] / d.hex[2:4] / f"{d.hex}.json").unlink()
        backend._info.clear()
        info = await backend.stat(d)
        assert info is not None
        assert info.size == 800 * CHUNK
        assert info.sha256 == hashlib.sha256(block * 800).digest()
    finally:
        await backend.close()


async def test_a_blob_deleted_by_another_node_is_forgotten_at_the_first_failed_read(
    sftp: SftpBackend, running: SshdServer, root: Path
) -> None:
    data = os.urandom(10_000)
    d = (await sftp.put(chunks_of(data))).info.digest
    assert await sftp.exists(d)  # known to this node, from its own cache
    other = make_backend(running, root)
    try:
        assert await other.delete(d)
    finally:
        await other.close()
    with pytest.raises(BlobNotFound):
        await read_all(sftp, d)
    assert not await sftp.exists(d)
    assert await sftp.stat(d) is None


async def test_metadata_without_its_blob_is_ignored_then_replaced(
    sftp: SftpBackend, running: SshdServer, root: Path
) -> None:
    """What a commit that failed after the metadata's rename leaves (it goes out with the
    fsyncs and closes): the metadata at its final name, no blob. Readers go by the blob, and
    the next upload of the same bytes writes its own metadata over the stale one."""
    data = os.urandom(5000)
    d = digest_of(data)
    meta = root / "meta" / d.hex[:2] / d.hex[2:4] / f"{d.hex}.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    stale = {"size": 1, "sha256": "00" * 32, "content_type": "text/stale",
             "created_at": "2020-01-01T00:00:00+00:00"}  # fmt: skip
    meta.write_text(json.dumps(stale))
    assert await sftp.stat(d) is None
    assert not await sftp.exists(d)
    with pytest.raises(BlobNotFound):
        await read_all(sftp, d)
    assert (await sftp.put(chunks_of(data), content_type="model/gltf-binary")).created
    fresh = make_backend(running, root)  # no cached info: stat reads the server's files
    try:
        info = await fresh.stat(d)
    finally:
        await fresh.close()
    assert info is not None
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).digest())
    assert info.content_type == "model/gltf-binary"


async def test_pool_is_bounded(running: SshdServer, root: Path) -> None:
    backend = make_backend(running, root, pool_size=2)
    await backend.start()
    try:
        data = os.urandom(1 << 20)
        d = (await backend.put(chunks_of(data))).info.digest
        reads = await asyncio.gather(*(read_all(backend, d) for _ in range(16)))
        assert reads == [data] * 16
        ours = [
            c
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == running.port and c.status == psutil.CONN_ESTABLISHED
        ]
        assert 1 <= len(ours) <= 2
    finally:
        await backend.close()


async def test_a_client_gone_mid_upload_does_not_drop_the_shared_connection(
    sftp: SftpBackend, root: Path
) -> None:
    channel = await sftp._pool.lease()  # the connection every operation here shares

    async def reset() -> AsyncIterator[bytes]:
        yield os.urandom(CHUNK)
        yield os.urandom(CHUNK)
        raise ConnectionResetError("the client went away")  # as aiohttp's body raises it

    with pytest.raises(ConnectionResetError):  # the client's failure, not a 503
        await sftp.put(reset())
    assert channel.alive
    assert await sftp._pool.lease() is channel
    assert_nothing_stored(root)
    assert (await sftp.put(chunks_of(b"the next upload"))).created


async def test_a_refused_extra_connection_shares_a_busy_one(
    running: SshdServer, root: Path
) -> None:
    backend = make_backend(running, root, pool_size=2)
    await backend.start()
    try:
        first = await backend._pool.lease()

        async def refused() -> Any:
            raise BackendUnavailable("sshd: too many connections (MaxStartups)")

        backend._pool._connect = refused  # the server refuses a second connection
        with first.busy():
            assert await backend._pool.lease() is first
            data = os.urandom(100_000)
            d = (await backend.put(chunks_of(data))).info.digest  # not a 503
        assert await read_all(backend, d) == data
    finally:
        await backend.close()


def test_the_fsync_deadline_of_a_large_blob_allows_a_slow_disk(
    running: SshdServer, root: Path
) -> None:
    """An fsync of gigabytes on a slow disk takes minutes, not a request's 30 s: taken for a
    dead connection, it would fail every large upload with a 503."""
    backend = make_backend(running, root, io_timeout=30.0)
    assert backend._flush_timeout(0) == 30.0
    # 4 GiB written out at 10 MiB/s (an old disk, a busy array) fits.
    assert backend._flush_timeout(4 << 30) > (4 << 30) / (10 << 20)


async def test_full_store_is_storage_full_and_leaves_nothing(
    running: SshdServer, tiny_fs: Path
) -> None:
    backend = make_backend(running, tiny_fs)
    await backend.start()
    try:
        small = os.urandom(100_000)
        await backend.put(chunks_of(small))
        with pytest.raises(StorageFull):
            await backend.put(chunks_of(os.urandom(3 << 20)))
        assert files_under(tiny_fs, "tmp") == []
        assert [d async for d in backend.iter_digests()] == [digest_of(small)]
        assert (await backend.put(chunks_of(os.urandom(500_000)))).created
    finally:
        await backend.close()


async def test_a_commit_out_of_inodes_is_storage_full_and_leaves_nothing(
    running: SshdServer, tiny_fs: Path
) -> None:
    """The bytes fit, but a shard directory, the metadata or the SHA-256 link does not: SFTP v3
    answers only "failure" (or, after a failed mkdir, "no such file" from the rename into it),
    so the backend asks the server whether its disk is full. Every step of the commit is hit,
    one more inode at a time, until the upload fits."""
    backend = make_backend(running, tiny_fs)
    await backend.start()
    try:
        first = os.urandom(1000)
        await backend.put(chunks_of(first))
        data = bytes_in_new_shards(first)
        refused = await refusals_until_it_fits(
            backend, tiny_fs, data, lambda: files_under(tiny_fs, "tmp")
        )
        # One inode short for the two temps, then for each directory and the link.
        assert refused >= 4
        assert await read_all(backend, digest_of(data)) == data
    finally:
        await backend.close()


def test_urls() -> None:
    with pytest.raises(ValueError, match="sftp://"):
        SftpBackend.from_url("https://example.org/x", client_keys=[], known_hosts=None)
    b = SftpBackend.from_url(
        "sftp://bulk@store.example/srv/blobs/", client_keys=[], known_hosts=None
    )
    assert (b.host, b.port, b.root) == ("store.example", 22, "/srv/blobs")
    b = SftpBackend.from_url("sftp://store.example:2222/~/assets", client_keys=[], known_hosts=None)
    assert (b.port, b.root) == (2222, "assets")


async def _connect(server: SshdServer, **options: Any) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        server.port,
        username=server.user,
        client_keys=[str(server.client_key)],
        known_hosts=str(server.known_hosts),
        config=[],
        agent_path=None,
        **options,
    )


async def test_asyncssh_tuning_is_in_effect(running: SshdServer, root: Path) -> None:
    """blobstore.sshtune reaches into asyncssh's internals (pinned): if an upgrade moves them,
    this fails instead of the uploads silently getting slower."""
    assert buffer_padding_randomness()
    packet_os: Any = vars(asyncssh.connection)["os"]
    assert packet_os is not os
    padding = packet_os.urandom(16)
    assert len(padding) == 16
    assert padding != packet_os.urandom(16)
    assert keep_gcm_keys()
    assert log_lazily()
    conn = await _connect(running, encryption_algs=["aes128-gcm@openssh.com"])
    try:
        encryption: Any = conn._send_encryption
        assert isinstance(encryption._cipher, _KeyedGCMCipher)
        transport: Any = conn._transport
        writes = 0
        write = transport.write

        def counting(data: bytes) -> None:
            nonlocal writes
            writes += 1
            write(data)

        transport.write = counting
        assert coalesce_writes(conn)
        async with conn.start_sftp_client() as client:
            writes = 0
            # 32 requests (64 packets with asyncssh's ignore packets) sent in one loop turn.
            found = await asyncio.gather(*(client.exists(str(root / str(i))) for i in range(32)))
        assert found == [False] * 32
        assert 1 <= writes <= 4
    finally:
        conn.close()
        await conn.wait_closed()


async def test_uploads_take_the_one_copy_send_path(
    sftp: SftpBackend, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """blobstore.sshsend is in effect on the backend's channels (asyncssh is pinned; if an
    upgrade moves its internals this fails), the bytes arrive whole, and at DEBUG asyncssh's
    own path (which logs every request) takes over."""
    channel = await sftp._pool.lease()
    sent: list[int] = []
    send_packet = channel.conn.send_packet

    def recording(pkttype: int, *args: bytes, handler: Any = None) -> None:
        sent.append(pkttype)
        send_packet(pkttype, *args, handler=handler)

    channel.conn.send_packet = recording  # type: ignore[method-assign]
    data = os.urandom(3 * CHUNK + 12345)
    result = await sftp.put(chunks_of(data))
    assert (
        root / "blobs" / Path(*result.info.digest.shard()) / result.info.digest.hex
    ).read_bytes() == data
    # Every packet of the upload (the requests, all its data) went by the fast path.
    assert sent == []
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        again = os.urandom(CHUNK + 1)
        result = await sftp.put(chunks_of(again))
    assert await read_all(sftp, result.info.digest) == again
    assert sent.count(MSG_CHANNEL_DATA) >= 2
    assert "Sending write for" in caplog.text


async def test_the_one_copy_path_through_real_re_keys(
    running: SshdServer, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-keying every MiB while 16 MiB go up: the key exchanges are asyncssh's (the packets
    sent while one runs wait in its queue), the fast path takes over again after each, sshd
    accepts every packet sealed under the old keys and the new, and the file arrives whole."""
    assert keep_gcm_keys()
    fast_sends = 0
    send_data = sshsend._send_data

    def counted(*args: Any) -> bool:
        nonlocal fast_sends
        sent = send_data(*args)
        fast_sends += sent
        return sent

    monkeypatch.setattr(sshsend, "_send_data", counted)
    conn = await _connect(running, encryption_algs=["aes128-gcm@openssh.com"], rekey_bytes=1 << 20)
    kexinits = 0
    send_kexinit: Any = conn._send_kexinit
    by_asyncssh: list[int] = []

    def counting() -> None:
        nonlocal kexinits
        kexinits += 1
        send_kexinit()

    conn._send_kexinit = counting  # type: ignore[method-assign]
    try:
        assert coalesce_writes(conn)
        assert skip_ignore_packets(conn)
        send_packet = conn.send_packet

        def recording(pkttype: int, *args: bytes, handler: Any = None) -> None:
            by_asyncssh.append(pkttype)
            send_packet(pkttype, *args, handler=handler)

        conn.send_packet = recording  # type: ignore[method-assign]
        async with conn.start_sftp_client() as client:
            handler: Any = client._handler
            assert fast_requests(handler)
            assert fast_channel_data(handler._writer.channel)
            data = os.urandom(16 << 20)
            await client.mkdir(str(root))
            async with client.open(str(root / "rekeyed"), "wb") as f:
                await f.write(data, 0)
        assert (root / "rekeyed").read_bytes() == data
        assert kexinits >= 8
        assert fast_sends > 0
        assert MSG_CHANNEL_DATA in by_asyncssh
    finally:
        conn.close()
        await conn.wait_closed()


@pytest.mark.parametrize(
    ("cipher", "ignores_sent"),
    [("aes128-gcm@openssh.com", False), ("aes128-ctr", False), ("aes128-cbc", True)],
)
async def test_ignore_packets_only_for_cbc(
    running: SshdServer, root: Path, cipher: str, ignores_sent: bool
) -> None:
    """RFC 4251's ignore-packet countermeasure is kept where it protects something (CBC)."""
    conn = await _connect(running, encryption_algs=[cipher])
    try:
        assert conn.get_extra_info("send_cipher") == cipher
        # The message type of every packet encrypted (the plaintext is padding length, type, ...).
        sent_types: list[int] = []
        encryption: Any = conn._send_encryption
        encrypt = encryption.encrypt_packet

        def recording(seq: int, header: bytes, packet: bytes) -> Any:
            sent_types.append(packet[1])
            return encrypt(seq, header, packet)

        encryption.encrypt_packet = recording
        assert skip_ignore_packets(conn)
        async with conn.start_sftp_client() as client:
            assert not await client.exists(str(root / "absent"))
        assert len(sent_types) >= 4
        assert (MSG_IGNORE in sent_types) is ignores_sent
        if ignores_sent:  # then asyncssh puts one ahead of every packet
            assert sent_types[::2] == [MSG_IGNORE] * len(sent_types[::2])
    finally:
        conn.close()
        await conn.wait_closed()


# -- a stuck SFTP server, a store directory that went or cannot be written ----------------------


SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def sftp_processes(server: SshdServer, backend: SftpBackend | None = None) -> list[psutil.Process]:
    """The processes serving SFTP for ``server`` (each session's child); only those of
    ``backend``'s connections when given."""
    ports = None
    if backend is not None:
        ports = {c.conn.get_extra_info("sockname")[1] for c in backend._pool._live()}
    found = []
    assert server.proc is not None
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if not any(s in " ".join(proc.cmdline()) for s in ("internal-sftp", "sftp-server")):
                continue
            session = proc.parent()
            assert session is not None
            if ports is not None and not any(
                c.raddr and c.raddr.port in ports for c in session.net_connections(kind="tcp")
            ):
                continue
            found.append(proc)
    return found


@pytest.fixture
def gated_sshd(tmp_path: Path) -> Iterator[SshdServer]:
    """A server of this test's own whose new SFTP sessions get stuck from their first byte
    while ``<workdir>/gate`` exists (``sftp_stuck(..., new_ones_too=True)``)."""
    if not os.path.exists(SFTP_SERVER):
        pytest.skip(f"no {SFTP_SERVER}")
    server = SshdServer(tmp_path / "gated")
    wrapper = server.workdir / "gated-sftp"
    wrapper.write_text(
        f'#!/bin/sh\n[ -e "{server.workdir / "gate"}" ] && kill -STOP $$\nexec {SFTP_SERVER}\n'
    )
    wrapper.chmod(0o755)
    config = server.config.read_text()
    server.config.write_text(config.replace("internal-sftp", str(wrapper)))
    server.start()
    yield server
    server.stop()
    # Wrappers stopped at the gate whose sessions had already gone were orphaned (no longer
    # under sshd, so sftp_stuck never saw them) and stayed stopped after the test.
    for proc in psutil.process_iter(["cmdline"]):
        if str(wrapper) in " ".join(proc.info["cmdline"] or ()):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


@contextlib.asynccontextmanager
async def sftp_stuck(
    server: SshdServer, backend: SftpBackend | None = None, *, new_ones_too: bool = False
) -> AsyncIterator[None]:
    """The server's SFTP processes stopped (SIGSTOP), as when they hang on a dead disk or NFS
    mount while their SSH sessions still answer keepalives; only ``backend``'s when given.
    ``new_ones_too`` (a ``gated_sshd``): every session opened meanwhile is stuck as well. All
    are let go (SIGCONT) on the way out."""
    gate = server.workdir / "gate"
    if new_ones_too:
        gate.touch()
    stopped = []
    for proc in sftp_processes(server, backend):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.suspend()
            stopped.append(proc)
    assert stopped, "no SFTP process to stop"
    try:
        yield
    finally:
        gate.unlink(missing_ok=True)
        for proc in {p.pid: p for p in stopped + sftp_processes(server)}.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()


IO_TIMEOUT = 1.0


@pytest.mark.parametrize("stuck_at", ["open", "write", "commit"])
async def test_a_put_on_a_stuck_sftp_server_is_unavailable_within_the_request_timeout(
    running: SshdServer, root: Path, stuck_at: str
) -> None:
    """The server's SFTP process stops answering (its SSH session still does): the upload
    fails with BackendUnavailable once a request has waited the request timeout, wherever it
    was, and its connection is dropped, so that the next upload gets a fresh one."""
    backend = make_backend(running, root, io_timeout=IO_TIMEOUT)
    await backend.start()
    received = asyncio.Event()
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for i in range(8):
            yield os.urandom(CHUNK)
            if (stuck_at, i) in (("write", 3), ("commit", 7)):
                received.set()
                await go_on.wait()

    try:
        channel = await backend._pool.lease()
        async with contextlib.AsyncExitStack() as stack:
            if stuck_at == "open":
                await stack.enter_async_context(sftp_stuck(running, backend))
            task = asyncio.create_task(backend.put(body()))
            if stuck_at != "open":
                await asyncio.wait_for(received.wait(), 10)
                await asyncio.sleep(0.1)  # the blocks before are written
                await stack.enter_async_context(sftp_stuck(running, backend))
                go_on.set()
            t0 = time.monotonic()
            done, _ = await asyncio.wait([task], timeout=IO_TIMEOUT + 10)
            assert done, "the upload never ended"
            with pytest.raises(BackendUnavailable, match="no answer in 1 s"):
                task.result()
            assert time.monotonic() - t0 < IO_TIMEOUT + 1.5
            assert not channel.alive
            # While the stuck process is still stuck: a fresh connection serves the next one.
            data = os.urandom(100_000)
            assert (await backend.put(chunks_of(data))).created
            assert await read_all(backend, digest_of(data)) == data
            assert await backend._pool.lease() is not channel
        assert files_under(root, "blobs") == [
            f"{digest_of(data).hex[:2]}/{digest_of(data).hex[2:4]}/{digest_of(data).hex}"
        ]
    finally:
        await backend.close()


async def test_every_operation_on_a_stuck_sftp_server_ends_within_its_deadlines(
    gated_sshd: SshdServer,
) -> None:
    """Every session the server opens gets stuck too (a hung disk stalls them all): each
    operation fails with BackendUnavailable after a request timeout or two (one retry on a
    fresh connection), none hangs, and all work again once the server does."""
    backend = make_backend(gated_sshd, gated_sshd.root / "store", io_timeout=IO_TIMEOUT)
    await backend.start()
    try:
        data = os.urandom(300_000)
        d = (await backend.put(chunks_of(data))).info.digest
        backend._info.clear()
        sha = hashlib.sha256(data).digest()

        async def walk() -> None:
            _ = [x async for x in backend.iter_digests()]

        async with sftp_stuck(gated_sshd, backend, new_ones_too=True):
            operations: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("put", lambda: backend.put(chunks_of(os.urandom(1000)))),
                ("stat", lambda: backend.stat(d)),
                ("exists", lambda: backend.exists(digest_of(b"unknown"))),
                ("open", lambda: read_all(backend, d)),
                ("resolve_sha256", lambda: backend.resolve_sha256(sha)),
                ("delete", lambda: backend.delete(digest_of(b"unknown"))),
                ("iter_digests", walk),
                ("ping", lambda: backend.ping()),
                ("ready", lambda: backend.ready()),
            ]
            for name, op in operations:
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(op(), 10 * IO_TIMEOUT)
                except BackendUnavailable:
                    pass
                except TimeoutError:
                    pytest.fail(f"{name} hung")
                else:
                    pytest.fail(f"{name} succeeded on a stuck server")
                # A retry each: a request timeout, a new connection, another timeout.
                assert time.monotonic() - t0 < 3 * IO_TIMEOUT + 2, name
        assert await read_all(backend, d) == data
        assert (await backend.put(chunks_of(b"once the server answers again"))).created
        await backend.ready()
    finally:
        await backend.close()


async def test_the_layout_removed_behind_the_store_is_made_again(
    sftp: SftpBackend, running: SshdServer, root: Path
) -> None:
    """tmp/ (or all of the store's directories, blobs, metadata and index with them) removed
    while the store runs: the next upload makes what it needs again, instead of failing until
    a restart."""
    first = os.urandom(100_000)
    assert (await sftp.put(chunks_of(first))).created
    shutil.rmtree(root / "tmp")
    again = os.urandom(100_000)
    assert (await sftp.put(chunks_of(again))).created
    await sftp.ready()
    for part in ("tmp", "blobs", "meta", "sha256"):
        shutil.rmtree(root / part)
    await sftp.ready()  # makes tmp/ again
    assert (root / "tmp").is_dir()
    data = bytes_in_new_shards(first)
    result = await sftp.put(chunks_of(data), content_type="model/gltf-binary")
    assert result.created
    # Whole, with its metadata and index: a node without cached info reads them.
    fresh = make_backend(running, root)
    try:
        assert await fresh.stat(result.info.digest) == result.info
        assert await fresh.resolve_sha256(result.info.sha256) == result.info.digest
        assert await read_all(fresh, result.info.digest) == data
    finally:
        await fresh.close()
    assert files_under(root, "tmp") == []


async def test_the_store_directory_gone_is_unavailable_and_not_made_behind_the_operator(
    sftp: SftpBackend, root: Path
) -> None:
    """The store's own directory missing (a volume not mounted, a wrong path): a 503 that says
    so, and nothing is written where the store was (under a mount point); a start makes it."""
    assert (await sftp.put(chunks_of(b"before"))).created
    shutil.rmtree(root)
    with pytest.raises(BackendUnavailable, match="store's directory is missing"):
        await sftp.put(chunks_of(os.urandom(10_000)))
    with pytest.raises(BackendUnavailable, match="store's directory is missing"):
        await sftp.ready()
    with pytest.raises(BackendUnavailable, match="store's directory is missing"):
        await sftp.ping()
    assert not stored_anything(root)
    await sftp.start()
    await sftp.ready()
    assert (await sftp.put(chunks_of(b"after"))).created


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i``: nothing can be made, renamed or removed in these directories, not even by
    root (the server logs in as root here), so the server answers "permission denied"."""
    made = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


async def test_a_store_the_server_will_not_let_us_write_is_unavailable(
    sftp: SftpBackend, root: Path
) -> None:
    """Permission denied on tmp/ or on a shard directory: BackendUnavailable (a 503 that says
    what the server refused), not a bare SFTP error (a 500); fine again once it is writable."""
    with immutable(root / "tmp"):
        with pytest.raises(BackendUnavailable, match="refuses to write"):
            await sftp.put(chunks_of(os.urandom(10_000)))
        with pytest.raises(BackendUnavailable, match="refuses to write"):
            await sftp.ready()
    await sftp.ready()
    data = os.urandom(10_000)
    d = digest_of(data)
    # Its second level of shard directories cannot be made.
    with immutable(root / "blobs" / d.hex[:2]), pytest.raises(BackendUnavailable, match="refuses"):
        await sftp.put(chunks_of(data))
    assert files_under(root, "tmp") == []
    assert (await sftp.put(chunks_of(data))).created


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


async def test_a_read_only_file_system_is_unavailable_not_full(
    running: SshdServer, tiny_fs: Path
) -> None:
    """EROFS arrives as a plain SFTP "failure", as ENOSPC does: the server's statvfs says
    which. Read-only is a 503 (the store cannot take writes now), not a 507."""
    backend = make_backend(running, tiny_fs)
    await backend.start()
    kept = os.urandom(10_000)
    d = (await backend.put(chunks_of(kept))).info.digest
    backend._info.clear()
    remount(tiny_fs, "ro")
    try:
        with pytest.raises(BackendUnavailable, match="read-only"):
            await backend.put(chunks_of(os.urandom(10_000)))
        with pytest.raises(BackendUnavailable, match="read-only"):
            await backend.ready()
        assert await read_all(backend, d) == kept  # reads go on
    finally:
        remount(tiny_fs, "rw")
    try:
        await backend.ready()
        assert (await backend.put(chunks_of(os.urandom(10_000)))).created
    finally:
        await backend.close()


async def test_ready_says_when_the_disk_is_full(running: SshdServer, tiny_fs: Path) -> None:
    backend = make_backend(running, tiny_fs)
    await backend.start()
    try:
        await backend.ready()
        filler = tiny_fs / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(os.urandom(64 * 1024))
        with pytest.raises(StorageFull, match="disk is full"):
            await backend.ready()
        filler.unlink()
        await backend.ready()
        assert files_under(tiny_fs, "tmp") == []
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        ("Failure", BackendUnavailable),  # OpenSSH's only words for EDQUOT, EIO, EFBIG ...
        ("No space left on device", StorageFull),  # servers that send strerror (ProFTPD)
        ("Disk quota exceeded", StorageFull),
        ("Read-only file system", BackendUnavailable),
    ],
)
async def test_a_failure_the_server_does_not_explain_is_not_taken_for_a_full_disk(
    sftp: SftpBackend, message: str, answer: type[Exception]
) -> None:
    """A plain "failure" while the server's file system has room and is writable is a 503
    that says what the server answered; 507 only where the server says the disk is full or
    a quota is reached, or its statvfs shows it full."""
    refusal = await sftp._run(lambda remote: sftp._refusal(remote, asyncssh.SFTPFailure(message)))
    assert type(refusal) is answer
    if message == "Failure":
        assert "has room and is writable" in str(refusal)


class _Connection:
    """Stands in for an SSH connection: all a ``Channel``'s deadlines do with it is close it."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed


async def test_a_request_is_timed_from_when_the_server_could_start_on_it() -> None:
    """A server works through a connection's requests in turn: only the oldest unanswered one
    is judged, from its predecessor's answer. Fifty requests sent at once behind a long one
    (a large fsync, with a deadline of its own), all answered in turn, take far longer than
    one request's deadline, and nothing is taken for stuck."""
    conn = _Connection()
    channel = Channel(cast(Any, conn), cast(Any, None))
    remote = Remote(channel, 0.1)
    turn = asyncio.Lock()  # first come, first served: the server's one worker

    async def served(seconds: float) -> float:
        async with turn:
            await asyncio.sleep(seconds)
        return seconds

    t0 = time.monotonic()
    answers = await asyncio.gather(
        remote.ask(served(0.3), "fsync", "a large blob", within=1.0),
        *(remote.ask(served(0.02), "read", i) for i in range(50)),
    )
    assert time.monotonic() - t0 > 1.0
    assert answers == [0.3] + [0.02] * 50
    assert channel.alive
    assert not conn.closed


async def test_an_unanswered_request_gives_the_connection_up_and_fails_all_on_it() -> None:
    """The oldest request gets no answer within its deadline: the connection is closed and
    every request still waiting on it raises Stalled; an answer out of turn to a later request
    does not reset the oldest one's clock; a request cancelled by its caller stays cancelled."""
    conn = _Connection()
    channel = Channel(cast(Any, conn), cast(Any, None))
    remote = Remote(channel, 0.2)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    abandoned = asyncio.create_task(remote.ask(asyncio.sleep(10), "read", "abandoned"))
    await asyncio.sleep(0)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    t0 = time.monotonic()
    answers = await asyncio.gather(
        remote.ask(never, "open", "stuck"),
        remote.ask(asyncio.sleep(0.05, "out of turn"), "stat", "quick"),
        remote.ask(asyncio.sleep(5, "too late"), "stat", "behind"),
        return_exceptions=True,
    )
    assert 0.2 <= time.monotonic() - t0 < 0.5
    assert isinstance(answers[0], Stalled)
    assert "no answer in 0.2 s to open stuck" in str(answers[0])
    assert answers[1] == "out of turn"
    assert isinstance(answers[2], Stalled)
    assert conn.closed
    assert not channel.alive
