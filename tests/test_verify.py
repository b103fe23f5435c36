"""``origin verify`` against a disk store and a catalog on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blobstore import DiskBackend
from origin.catalog import Catalog, upgrade
from origin.verify import verify

from .conftest import chunks_of


@pytest.fixture
async def catalog(catalog_url: str) -> AsyncIterator[Catalog]:
    catalog = Catalog.connect(catalog_url)
    await upgrade(catalog.engine)
    yield catalog
    await catalog.close()


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
