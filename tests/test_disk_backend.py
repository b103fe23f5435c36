"""DiskBackend on its own: layout, atomic commit, sweeping, delete, listing, a full disk."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blobstore import (
    BlobBackend,
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    DiskBackend,
    Expectation,
    StorageFull,
)

from .conftest import (
    bytes_in_new_shards,
    chunks_of,
    digest_of,
    limit_inodes,
    refusals_until_it_fits,
)


@pytest.fixture
async def disk(tmp_path: Path) -> DiskBackend:
    backend = DiskBackend(tmp_path / "store", chunk_size=256 * 1024)
    await backend.start()
    return backend


def leftovers(backend: DiskBackend) -> list[str]:
    return sorted(p.name for p in (backend.root / "tmp").iterdir())


async def test_is_a_blob_backend(disk: DiskBackend) -> None:
    assert isinstance(disk, BlobBackend)


async def test_put_stat_open_and_layout(disk: DiskBackend) -> None:
    data = os.urandom(1_000_000)
    d = digest_of(data)
    result = await disk.put(chunks_of(data), Expectation(blake3=d), "model/gltf-binary")
    assert result.created
    assert result.info.size == len(data)
    assert result.info.sha256 == hashlib.sha256(data).digest()
    path = disk.root / "blobs" / d.hex[:2] / d.hex[2:4] / d.hex
    assert disk.local_path(d) == path
    assert path.read_bytes() == data
    fresh = DiskBackend(disk.root)  # no cached info: read back from the metadata file
    assert await fresh.exists(d)
    assert not await fresh.exists(digest_of(b"never stored"))
    info = await fresh.stat(d)
    assert info is not None
    assert info.content_type == "model/gltf-binary"
    assert info.sha256 == result.info.sha256
    assert b"".join([c async for c in fresh.open(d)]) == data
    assert b"".join([c async for c in fresh.open(d, 10, 20)]) == data[10:20]
    assert b"".join([c async for c in fresh.open(d, 999_990)]) == data[999_990:]
    assert leftovers(disk) == []


async def test_mismatch_and_oversize_leave_nothing(disk: DiskBackend) -> None:
    data = os.urandom(600_000)
    with pytest.raises(DigestMismatch):
        await disk.put(chunks_of(data), Expectation(blake3=digest_of(b"other")))
    with pytest.raises(DigestMismatch):
        await disk.put(chunks_of(data), Expectation(sha256=hashlib.sha256(b"x").digest()))
    with pytest.raises(BlobTooLarge):
        await disk.put(chunks_of(data), Expectation(max_size=len(data) - 1))
    assert await disk.stat(digest_of(data)) is None
    assert leftovers(disk) == []
    assert [d async for d in disk.iter_digests()] == []


async def test_failing_stream_leaves_nothing(disk: DiskBackend) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(1 << 20)
        yield os.urandom(1 << 20)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await disk.put(broken())
    assert leftovers(disk) == []


async def test_sha256_resolution_delete_and_listing(disk: DiskBackend) -> None:
    blobs = [os.urandom(n) for n in (0, 1, 5000)]
    for data in blobs:
        await disk.put(chunks_of(data))
    listed = sorted([d.hex async for d in disk.iter_digests()])
    assert listed == sorted(digest_of(b).hex for b in blobs)
    target = blobs[2]
    assert await disk.resolve_sha256(hashlib.sha256(target).digest()) == digest_of(target)
    assert await disk.delete(digest_of(target))
    assert not await disk.delete(digest_of(target))
    assert await disk.stat(digest_of(target)) is None
    assert await disk.resolve_sha256(hashlib.sha256(target).digest()) is None
    with pytest.raises(BlobNotFound):
        [c async for c in disk.open(digest_of(target))]


def exited_pid() -> int:
    proc = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


async def test_start_sweeps_only_dead_writers_temp_files(disk: DiskBackend) -> None:
    tmp = disk.root / "tmp"
    (tmp / f"{exited_pid()}-abc.part").write_bytes(b"partial")
    (tmp / "garbage").write_bytes(b"?")
    (tmp / f"{os.getpid()}-live.part").write_bytes(b"in flight")
    assert await disk.start() == 2
    assert leftovers(disk) == [f"{os.getpid()}-live.part"]


async def test_missing_metadata_is_rebuilt(disk: DiskBackend) -> None:
    data = os.urandom(10_000)
    d = digest_of(data)
    await disk.put(chunks_of(data))
    meta = disk.root / "meta" / d.hex[:2] / d.hex[2:4] / f"{d.hex}.json"
    meta.unlink()
    info = await DiskBackend(disk.root).stat(d)
    assert info is not None
    assert info.sha256 == hashlib.sha256(data).digest()
    assert meta.exists()


async def test_metadata_that_cannot_be_saved_still_answers_the_read(tiny_fs: Path) -> None:
    disk = DiskBackend(tiny_fs)
    await disk.start()
    data = os.urandom(10_000)
    d = (await disk.put(chunks_of(data))).info.digest
    meta = tiny_fs / "meta" / d.hex[:2] / d.hex[2:4]
    shutil.rmtree(meta)
    limit_inodes(tiny_fs, 0)  # not even its directory
    info = await DiskBackend(tiny_fs).stat(d)
    assert info is not None
    assert info.sha256 == hashlib.sha256(data).digest()
    assert not meta.exists()
    assert leftovers(disk) == []


async def test_full_disk_is_storage_full_and_leaves_nothing(tiny_fs: Path) -> None:
    disk = DiskBackend(tiny_fs, chunk_size=64 * 1024)
    await disk.start()
    small = os.urandom(100_000)
    await disk.put(chunks_of(small))
    big = os.urandom(3 << 20)
    with pytest.raises(StorageFull):
        await disk.put(chunks_of(big))
    assert leftovers(disk) == []
    assert await disk.stat(digest_of(big)) is None
    assert [d async for d in disk.iter_digests()] == [digest_of(small)]
    # The space came back: the next upload that fits succeeds.
    another = os.urandom(500_000)
    assert (await disk.put(chunks_of(another))).created


async def test_a_commit_out_of_inodes_is_storage_full_and_leaves_nothing(
    tiny_fs: Path,
) -> None:
    """The bytes fit, but a shard directory, the metadata or the SHA-256 link does not: each
    step of the commit is hit, one more inode at a time, until the upload fits."""
    disk = DiskBackend(tiny_fs)
    await disk.start()
    first = os.urandom(1000)
    await disk.put(chunks_of(first))
    data = bytes_in_new_shards(first)
    refused = await refusals_until_it_fits(disk, tiny_fs, data, lambda: leftovers(disk))
    # One inode short for the temp, the metadata's temp, then each directory and the link.
    assert refused >= 4
    assert await disk.stat(digest_of(data)) is not None
