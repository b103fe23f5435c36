"""Byte ranges per RFC 9110 section 14: ``a-b``, ``a-`` and ``-n``; one range or the whole."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC = re.compile(r"([0-9]*)-([0-9]*)")  # ASCII digits: \d also takes other scripts' digits
# Positions past any representation; a longer number means the same, and Python will not
# convert one of 4,300 digits.
_BEYOND = 1 << 63


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) < 19 else _BEYOND


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The half-open interval ``[start, stop)`` of a representation of ``size`` bytes."""

    start: int
    stop: int
    size: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


class RangeNotSatisfiable(Exception):
    """Answered with 416 and ``Content-Range: bytes */size``."""

    def __init__(self, size: int, why: str) -> None:
        super().__init__(why)
        self.size = size


def parse_range(header: str, size: int) -> ByteRange | None:
    """The range to serve, or None for the whole representation.

    None for another range unit (which RFC 9110 says to ignore) and for several satisfiable
    ranges (we answer those with the whole 200 rather than multipart/byteranges).
    """
    unit, sep, range_set = header.partition("=")
    if unit.lower() != "bytes":
        return None
    if not sep:
        raise RangeNotSatisfiable(size, f"malformed Range header: {header!r}")
    satisfiable: list[ByteRange] = []
    specs = [s.strip(" \t") for s in range_set.split(",")]
    for spec in specs:
        if not spec:
            continue  # empty list elements are allowed by the list syntax
        m = _SPEC.fullmatch(spec)
        if m is None or (not m.group(1) and not m.group(2)):
            raise RangeNotSatisfiable(size, f"malformed byte range {spec!r}")
        first, last = m.group(1), m.group(2)
        if first:
            start = _position(first)
            if last and _position(last) < start:
                raise RangeNotSatisfiable(size, f"byte range {spec!r} ends before it starts")
            if start >= size:
                continue
            stop = min(_position(last) + 1, size) if last else size
            satisfiable.append(ByteRange(start, stop, size))
        else:
            suffix = _position(last)
            if suffix == 0 or size == 0:
                continue
            satisfiable.append(ByteRange(max(0, size - suffix), size, size))
    if not any(specs):
        raise RangeNotSatisfiable(size, f"malformed Range header: {header!r}")
    if not satisfiable:
        raise RangeNotSatisfiable(size, f"no range in {header!r} overlaps the {size} bytes")
    return satisfiable[0] if len(satisfiable) == 1 else None
