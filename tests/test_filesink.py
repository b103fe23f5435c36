"""FileSink: any sequence of writes lands byte-exact, with and without O_DIRECT."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobstore.filesink import ALIGN, FileSink


def opened_with_o_direct(sink: FileSink) -> bool:
    flags = Path(f"/proc/self/fdinfo/{sink._fd}").read_text().split("flags:")[1].split()[0]
    return bool(int(flags, 8) & os.O_DIRECT)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.binary(min_size=0, max_size=3 * ALIGN + 17), max_size=12),
    st.sampled_from([ALIGN, 2 * ALIGN, 5 * ALIGN + 3]),
    st.booleans(),
)
def test_writes_land_byte_exact(
    tmp_path: Path, pieces: list[bytes], stage: int, direct: bool
) -> None:
    path = tmp_path / uuid.uuid4().hex
    sink = FileSink(path, direct=direct, stage_size=stage)
    for piece in pieces:
        sink.write(piece)
    sink.sync_and_close()
    assert path.read_bytes() == b"".join(pieces)


def test_direct_io_is_used_where_the_file_system_has_it(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "f", direct=True, stage_size=1 << 20)
    try:
        if not opened_with_o_direct(sink):
            pytest.skip("this file system refuses O_DIRECT; the buffered fallback was taken")
        sink.write(os.urandom((1 << 20) + 123))
    finally:
        sink.sync_and_close()
    assert (tmp_path / "f").stat().st_size == (1 << 20) + 123


def test_buffered_when_not_asked(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "f", direct=False, stage_size=1 << 20)
    assert not opened_with_o_direct(sink)
    sink.close()
