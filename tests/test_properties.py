"""Property tests: digests, hashing, ranges, entity tags and queries, alone and through HTTP."""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import re
import string
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import blake3
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobstore import BlobTooLarge, Digest, DigestError, StreamHasher
from blobstore.disk import _coalesce
from origin import Config
from origin.etags import none_match, parse_etag_list
from origin.problems import Problem
from origin.ranges import RangeNotSatisfiable, parse_range
from origin.recommend_routes import _limit_and_kind
from origin.recommendations import MAX_LIMIT
from origin.uploader import retry_after

from .conftest import AUTH, Client

HEX64 = re.compile(r"[0-9a-f]{64}")
http_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- digests and hashing ----------------------------------------------------------------------


@given(st.text(max_size=80) | st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=68))
def test_digest_accepts_exactly_64_lowercase_hex(text: str) -> None:
    if HEX64.fullmatch(text):
        assert str(Digest(text)) == text
    else:
        with pytest.raises(DigestError):
            Digest(text)


@given(st.binary(max_size=1 << 16), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_one_pass_hashing_matches_reference_for_any_chunking(data: bytes, cuts: list[int]) -> None:
    hasher = StreamHasher()
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(edges):
        hasher.update(data[a:b])
    result = hasher.result()
    assert str(result.blake3) == blake3.blake3(data).hexdigest()
    assert result.sha256 == hashlib.sha256(data).digest()
    assert result.size == len(data)


@given(
    st.lists(st.binary(max_size=3000), max_size=12),
    st.integers(1, 4096),
    st.none() | st.integers(0, 20_000),
)
async def test_body_blocks_are_the_body_in_order(
    chunks: list[bytes], size: int, limit: int | None
) -> None:
    """The blocks the backends write and hash: every byte once, in order; each block (but the
    last) at least ``size`` and grown by no more than its last chunk; a chunk that is a block
    on its own is not copied; a body over the limit is refused."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    total = sum(map(len, chunks))
    if limit is not None and total > limit:
        with pytest.raises(BlobTooLarge):
            [b async for b in _coalesce(body(), size, limit)]
        return
    # The model: chunks gathered in order until they reach the size, empty ones dropped.
    groups: list[list[bytes]] = [[]]
    for chunk in chunks:
        groups[-1].append(chunk)
        if sum(map(len, groups[-1])) >= size:
            groups.append([])
    groups = [g for g in groups if sum(map(len, g))]
    blocks = [b async for b in _coalesce(body(), size, limit)]
    assert blocks == [b"".join(g) for g in groups]
    assert all(len(b) >= size for b in blocks[:-1])
    for block, group in zip(blocks, groups, strict=True):
        if len([c for c in group if c]) == 1:
            assert any(block is c for c in group)  # passed through, not copied


# -- ranges: parse_range against a direct reading of RFC 9110 ---------------------------------


def model_range(first: int | None, last: int | None, size: int) -> tuple[int, int] | None:
    """The bytes [start, stop) one range-spec selects, None when unsatisfiable."""
    if first is None:
        assert last is not None
        return (max(0, size - last), size) if last > 0 and size > 0 else None
    if first >= size:
        return None
    return first, size if last is None else min(last + 1, size)


# Positions around the sizes, and some far past any file (a client may ask "0-" with a huge end).
positions = st.one_of(st.integers(0, 3000), st.integers(10**17, 10**40))
range_specs = st.one_of(
    st.tuples(positions, st.none()),
    st.tuples(st.none(), positions),
    st.tuples(positions, positions).filter(lambda t: t[1] >= t[0]),
)


def spec_text(first: int | None, last: int | None) -> str:
    return f"{'' if first is None else first}-{'' if last is None else last}"


@given(st.integers(0, 2000), range_specs)
def test_single_range_matches_model(size: int, spec: tuple[int | None, int | None]) -> None:
    expected = model_range(*spec, size)
    header = f"bytes={spec_text(*spec)}"
    if expected is None:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
    else:
        got = parse_range(header, size)
        assert got is not None
        assert (got.start, got.stop) == expected
        assert got.content_range() == f"bytes {expected[0]}-{expected[1] - 1}/{size}"


@given(st.integers(0, 2000), st.lists(range_specs, min_size=2, max_size=5))
def test_several_ranges_are_whole_or_416(
    size: int, specs: list[tuple[int | None, int | None]]
) -> None:
    header = "bytes=" + ", ".join(spec_text(*s) for s in specs)
    selected = [r for r in (model_range(*s, size) for s in specs) if r is not None]
    if not selected:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
    elif len(selected) == 1:
        got = parse_range(header, size)
        assert got is not None
        assert (got.start, got.stop) == selected[0]
    else:
        assert parse_range(header, size) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-" + "9" * 5000, (0, 100)),  # more digits than Python converts
        ("bytes=-" + "9" * 5000, (0, 100)),
        ("bytes=" + "0" * 5000 + "5-", (5, 100)),
        ("bytes=" + "0" * 5000 + "5-" + "0" * 4999 + "7", (5, 8)),
        ("bytes=" + "9" * 5000 + "-", None),
    ],
)
def test_numbers_of_any_length(header: str, expected: tuple[int, int] | None) -> None:
    if expected is None:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 100)
    else:
        got = parse_range(header, 100)
        assert got is not None
        assert (got.start, got.stop) == expected


@pytest.mark.parametrize("header", ["bytes=\u0663-\u0664", "bytes=\uff15-", "bytes=-\u00b2"])
def test_digits_of_other_scripts_are_malformed(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable, match="malformed"):
        parse_range(header, 100)


@given(st.text(alphabet=string.printable + "\u0663\uff15\u00b2", max_size=30), st.integers(0, 100))
def test_garbage_range_never_crashes(tail: str, size: int) -> None:
    try:
        result = parse_range("bytes=" + tail, size)
    except RangeNotSatisfiable:
        return
    assert result is None or 0 <= result.start < result.stop <= size


# -- entity tags ------------------------------------------------------------------------------

opaque = st.text(alphabet=st.characters(min_codepoint=0x23, max_codepoint=0x7E), max_size=20)


@given(st.lists(st.tuples(st.booleans(), opaque), min_size=1, max_size=5))
def test_etag_list_round_trips(tags: list[tuple[bool, str]]) -> None:
    header = ", ".join(f'{"W/" if weak else ""}"{tag}"' for weak, tag in tags)
    assert parse_etag_list(header) == tags
    assert none_match(header, "x" * 64) == any(tag == "x" * 64 for _, tag in tags)


# -- the recommendation endpoints' query --------------------------------------------------------

QUERY_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "%+&=-_. ", max_size=30)


@given(
    st.lists(
        st.tuples(st.sampled_from(["limit", "kind", "x", "lim%69t"]), QUERY_TEXT | st.integers()),
        max_size=4,
    )
)
def test_cached_query_parsing_reads_what_request_query_reads(
    pairs: list[tuple[str, str | int]],
) -> None:
    """The recommendation routes parse the raw query string once per distinct string; they
    must read it exactly as aiohttp's request.query does, and reject what it would reject."""
    raw = "&".join(f"{k}={v}" for k, v in pairs)
    request = make_mocked_request("GET", f"/users/u/recommendations?{raw}")
    query = request.query
    try:
        limit = int(query.get("limit", "10"))
    except ValueError:
        limit = None
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        with pytest.raises(Problem) as caught:
            _limit_and_kind(request)
        assert caught.value.status == 400
    else:
        assert _limit_and_kind(request) == (limit, query.get("kind") or None)


# -- Retry-After, as the uploader reads it ----------------------------------------------------


@given(st.integers(0, 10**12))
def test_retry_after_in_seconds_is_those_seconds(seconds: int) -> None:
    assert retry_after(str(seconds)) == seconds
    assert retry_after(f" {seconds} ") == seconds


@given(
    st.datetimes(datetime(1990, 1, 1), datetime(2200, 1, 1)).map(
        lambda d: d.replace(microsecond=0, tzinfo=UTC)
    ),
    st.datetimes(datetime(1990, 1, 1), datetime(2200, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
)
def test_retry_after_as_a_date_is_the_time_until_then(when: datetime, now: datetime) -> None:
    until = retry_after(email.utils.format_datetime(when, usegmt=True), now)
    assert until == max(0.0, (when - now).total_seconds())


@given(st.text(max_size=40))
def test_retry_after_is_a_wait_or_nothing_whatever_the_header(value: str) -> None:
    until = retry_after(value)
    assert until is None or until >= 0
    if until is not None and not value.strip().isdigit():
        assert email.utils.parsedate_to_datetime(value) is not None


# -- through HTTP -----------------------------------------------------------------------------


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@http_settings
@given(st.binary(max_size=300_000), st.sampled_from(["PUT", "POST"]))
async def test_any_body_round_trips(client: Client, data: bytes, method: str) -> None:
    digest = b3(data)
    if method == "PUT":
        resp = await client.put(f"/blobs/{digest}", data=data, headers=AUTH)
    else:
        resp = await client.post("/blobs", data=data, headers=AUTH)
    assert resp.status in (200, 201)
    assert (await resp.json())["digest"] == digest
    got = await client.get(f"/blobs/{digest}")
    assert got.status == 200
    assert await got.read() == data


@http_settings
@given(st.binary(min_size=0, max_size=200_000), range_specs)
async def test_any_range_over_http(
    client: Client, data: bytes, spec: tuple[int | None, int | None]
) -> None:
    digest = b3(data)
    await client.put(f"/blobs/{digest}", data=data, headers=AUTH)
    size = len(data)
    resp = await client.get(f"/blobs/{digest}", headers={"Range": f"bytes={spec_text(*spec)}"})
    expected = model_range(*spec, size)
    if expected is None:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{size}"
    else:
        start, stop = expected
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert await resp.read() == data[start:stop]


segments = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/?#%"),
    min_size=1,
    max_size=70,
).filter(lambda s: HEX64.fullmatch(s) is None and s not in (".", ".."))


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


@http_settings
@given(segments, st.sampled_from(["GET", "HEAD", "PUT"]))
async def test_bad_path_segment_is_400_and_touches_nothing(
    client: Client, config: Config, segment: str, method: str
) -> None:
    before = tree(config.data_dir)
    from urllib.parse import quote

    resp = await client.request(
        method, f"/blobs/{quote(segment, safe='')}", data=b"body", headers=AUTH
    )
    assert resp.status == 400
    assert tree(config.data_dir) == before
