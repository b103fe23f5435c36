"""A write-only file for large sequential uploads, with O_DIRECT where the file system has it.

Why O_DIRECT: on the virtual disks we run on, buffered writes are throttled by dirty-page
writeback to about 300 MiB/s while the device takes 1-1.5 GB/s directly (see
docs/BENCHMARKS.md). Direct I/O needs the buffer address, the length and the file offset
aligned to the logical block size, so bytes are staged in a page-aligned ``mmap`` buffer and
written a whole buffer at a time; the unaligned tail is written after clearing O_DIRECT.
File systems without O_DIRECT (tmpfs on older kernels) get ordinary buffered writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os

ALIGN = 4096


class FileSink:
    def __init__(self, path: os.PathLike[str], *, direct: bool, stage_size: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._stage: mmap.mmap | None = None
        self._staged = 0
        self._taken = 0  # bytes given to write(), staged ones included
        if direct:
            try:
                self._fd = os.open(path, flags | os.O_DIRECT, 0o644)
            except OSError:  # EINVAL: this file system does not do direct I/O
                direct = False
            else:
                # mmap memory is page-aligned, which satisfies O_DIRECT's buffer alignment.
                self._stage = mmap.mmap(-1, max(ALIGN, stage_size - stage_size % ALIGN))
        if not direct:
            self._fd = os.open(path, flags, 0o644)

    @property
    def in_file(self) -> int:
        """Bytes a reader of the file sees now: all written but those still staged."""
        return self._taken - self._staged

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self._taken += len(view)
        if self._stage is None:
            _write_all(self._fd, view)
            return
        capacity = len(self._stage)
        while view:
            n = min(len(view), capacity - self._staged)
            self._stage[self._staged : self._staged + n] = view[:n]
            self._staged += n
            view = view[n:]
            if self._staged == capacity:
                with memoryview(self._stage) as stage:
                    _write_all(self._fd, stage)
                self._staged = 0

    def sync_and_close(self) -> None:
        """Write what is staged, fsync (O_DIRECT skips the cache, not the metadata), close."""
        try:
            if self._stage is not None and self._staged:
                aligned = self._staged - self._staged % ALIGN
                with memoryview(self._stage) as stage:
                    _write_all(self._fd, stage[:aligned])
                    if aligned < self._staged:
                        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                        _write_all(self._fd, stage[aligned : self._staged])
                self._staged = 0
            os.fsync(self._fd)
        finally:
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._stage is not None:
            with contextlib.suppress(BufferError):
                # After a failed write, the traceback may still hold a view of the buffer;
                # then the mapping is freed with the last reference instead.
                self._stage.close()
            self._stage = None


def _write_all(fd: int, data: memoryview) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])
