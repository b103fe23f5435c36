"""The blob rows of the HTTP contract: PUT, POST, GET/HEAD, the SHA-256 alias and ``missing``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import blake3
from aiohttp import web

from blobstore import (
    DEFAULT_CONTENT_TYPE,
    NEVER_STORED,
    BackendUnavailable,
    BlobBackend,
    BlobInfo,
    BlobNotFound,
    BlobStoreError,
    BlobTooLarge,
    Digest,
    DigestError,
    DigestMismatch,
    Expectation,
    Hashes,
    PutResult,
    StorageFull,
    is_sha256_hex,
    update_off_loop,
)

from . import problems
from .appkeys import CATALOG, CONFIG, STORE, TIERS
from .auth import require
from .digest_fields import DigestFieldError, format_sha256, parse_sha256
from .etags import if_range_allows, none_match
from .expect import expecting
from .gltf import read_facts
from .json_body import MAX_JSON_BODY, read_json
from .problems import Problem
from .ranges import ByteRange, RangeNotSatisfiable, parse_range
from .recommend_routes import note_blob_download
from .sendfile import SendfileResponse

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
# Up to this a body is read into memory and sent with the headers in one write; above it,
# sendfile avoids copying the bytes through Python at all.
_SENDFILE_MIN = 64 * 1024
# What an upload keeps of its body for the glTF facts: a GLB's headers and a JSON chunk of
# this size, or enough of a .gltf document to sniff it.
_HEAD = 64 * 1024
# The Range forms nginx applies to a file as ranges.py reads them: one range, no spaces or
# leading zeros, at most 18 digits. Under X-Accel-Redirect nginx applies the client's header
# itself, so a request with any other form is answered here (nginx had its HTML 416 for
# "1-2," and a 206 without Accept-Ranges for others).
_NGINX_READS_AS_WE_DO = re.compile(
    r"bytes=(?:(?:0|[1-9][0-9]{0,17})-(?:0|[1-9][0-9]{0,17})?|-[1-9][0-9]{0,17})"
)
# A PUT of a larger body asks the store whether it has the blob before reading the body.
_ASK_FIRST_ABOVE = 1 << 20
# RFC 6838 4.2: type and subtype names of at most 127 characters, RFC 9110 token characters.
_MEDIA_TYPE = re.compile(r"(?a)[!#$%&'*+.^_`|~\w-]{1,127}/[!#$%&'*+.^_`|~\w-]{1,127}")
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _digest_param(request: web.Request) -> Digest:
    try:
        return Digest(request.match_info["digest"])
    except DigestError as exc:
        raise problems.bad_request("bad-digest", str(exc)) from None


def _blob_headers(info: BlobInfo) -> dict[str, str]:
    return {
        "ETag": f'"{info.digest}"',
        "Cache-Control": IMMUTABLE,
        "Accept-Ranges": "bytes",
        "Content-Type": info.content_type,
        "Repr-Digest": format_sha256(info.sha256),
    }


# -- X-Accel-Redirect -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Accel:
    """X-Accel-Redirect as this app does it, decided once when the routes are added."""

    prefix: str  # nginx's internal location, without its final "/"
    # The durable store when it is the local disk: a blob file there is complete the moment
    # its name exists (it is renamed into place) and stays, so a GET neither walks the tier
    # chain nor checks the file in a thread. None with a remote durable store, whose local
    # disk is an LRU cache that may evict a file at any moment: then the file is checked.
    disk: BlobBackend | None


_ACCEL: web.AppKey[_Accel | None] = web.AppKey("blob_accel")


def _accel_plan(app: web.Application) -> _Accel | None:
    prefix = app[CONFIG].accel_redirect
    if prefix is None:
        return None
    tiers = app[TIERS]
    final = tiers.local_cache is None and tiers.durable.local_path(NEVER_STORED) is not None
    return _Accel(prefix.rstrip("/"), tiers.durable if final else None)


@lru_cache(maxsize=65_536)
def _accel_headers(prefix: str, digest: str, sha256: bytes, content_type: str) -> Mapping[str, str]:
    """The whole header set of an X-Accel-Redirect answer, built once per blob (a blob's
    headers never change). nginx sends the file and computes Content-Length, Content-Range and
    Accept-Ranges itself (a copy of ours would be a second one). Read-only: aiohttp copies it
    into each response."""
    return MappingProxyType(
        {
            "ETag": f'"{digest}"',
            "Cache-Control": IMMUTABLE,
            "Content-Type": content_type,
            "Repr-Digest": format_sha256(sha256),
            # The file's place below the blob directory: ab/cd/<digest>.
            "X-Accel-Redirect": f"{prefix}/{digest[0:2]}/{digest[2:4]}/{digest}",
        }
    )


# -- reads ------------------------------------------------------------------------------------


async def get_blob(request: web.Request) -> web.StreamResponse:
    digest = _digest_param(request)
    accel = request.app[_ACCEL]
    store = request.app[STORE]
    # With X-Accel on the plain disk store, the disk answers first: one cached stat, no walk.
    info = await accel.disk.stat(digest) if accel is not None and accel.disk is not None else None
    if info is None:
        info = await store.stat(digest)
    if info is None:
        raise problems.not_found(f"no blob {digest}")
    # Anonymous reads (the CDN's hot path) pay for this one lookup only.
    authorization = request.headers.get("Authorization")
    if authorization is not None and request.method == "GET":
        note_blob_download(request, authorization, digest.hex)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and none_match(if_none_match, digest.hex):
        return web.Response(status=304, headers=_blob_headers(info))
    byte_range = _requested_range(request, info)  # a 416 is ours, also in X-Accel mode
    if (
        accel is not None
        and request.method == "GET"
        and info.size > _SENDFILE_MIN
        and (byte_range is None or _NGINX_READS_AS_WE_DO.fullmatch(request.headers["Range"]))
        and (accel.disk is not None or await _is_local_file(store, digest))
    ):
        # nginx sends the file and applies the client's Range itself.
        return web.Response(
            headers=_accel_headers(accel.prefix, digest.hex, info.sha256, info.content_type)
        )
    headers = _blob_headers(info)
    if byte_range is None:
        status, start, count = 200, 0, info.size
    else:
        status, start, count = 206, byte_range.start, byte_range.length
        headers["Content-Range"] = byte_range.content_range()
    headers["Content-Length"] = str(count)
    if request.method == "HEAD":
        return web.Response(status=status, headers=headers)
    if count > _SENDFILE_MIN and (path := store.local_path(digest)) is not None:
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            pass  # not (or no longer) a local file: the store streams it from another tier
        else:
            return SendfileResponse(file, start, count, status=status, headers=headers)
    return await _from_store(request, digest, status, headers, start, count)


async def _is_local_file(store: BlobBackend, digest: Digest) -> bool:
    """Whether the blob is a file on this node now: with a remote durable store the local
    disk is an LRU cache, which may not hold it (or evict it at any moment)."""
    path = store.local_path(digest)
    return path is not None and await asyncio.to_thread(path.is_file)


def _requested_range(request: web.Request, info: BlobInfo) -> ByteRange | None:
    header = request.headers.get("Range")
    if header is None or request.method != "GET":  # RFC 9110 defines Range for GET only
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and not if_range_allows(if_range, info.digest.hex):
        return None
    try:
        return parse_range(header, info.size)
    except RangeNotSatisfiable as exc:
        raise Problem(
            416,
            "range-not-satisfiable",
            "Range not satisfiable",
            str(exc),
            headers={"Content-Range": f"bytes */{exc.size}"},
        ) from None


async def _from_store(
    request: web.Request,
    digest: Digest,
    status: int,
    headers: dict[str, str],
    start: int,
    count: int,
) -> web.StreamResponse:
    """The bytes as the store yields them: one write when they come in one chunk. The store's
    iterator is closed however the response ends (a client that leaves must not leave a cache
    fill waiting on it), and a body that comes up short of ``count`` fails, which drops the
    connection (``app.request_middleware``): the client sees a failed download rather than
    waiting for the rest."""
    async with contextlib.aclosing(request.app[STORE].open(digest, start, start + count)) as chunks:
        try:
            first = await anext(chunks, b"")
        except BlobNotFound:
            raise problems.not_found(f"no blob {digest}") from None
        if len(first) == count:
            return web.Response(status=status, headers=headers, body=first)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await response.write(first)
        sent = len(first)
        async for chunk in chunks:
            await response.write(chunk)
            sent += len(chunk)
        if sent != count:
            # The middleware drops the connection of a response that fails once begun.
            raise RuntimeError(f"blob {digest}: the store gave {sent} of {count} bytes")
        await response.write_eof()
        return response


async def sha256_alias(request: web.Request) -> web.Response:
    text = request.match_info["sha256"]
    if not is_sha256_hex(text):
        raise problems.bad_request(
            "bad-digest", f"not a SHA-256 digest (64 lowercase hex characters): {text!r}"
        )
    digest = await request.app[STORE].resolve_sha256(bytes.fromhex(text))
    if digest is None:
        raise problems.not_found(f"no blob has SHA-256 {text}")
    # The mapping from SHA-256 to BLAKE3 never changes, so the redirect is as cacheable as a blob.
    return web.Response(
        status=308, headers={"Location": f"/blobs/{digest}", "Cache-Control": IMMUTABLE}
    )


async def missing(request: web.Request) -> web.Response:
    limit = request.app[CONFIG].max_missing_batch
    doc = await read_json(request, max(MAX_JSON_BODY, limit * 80))
    if not isinstance(doc, dict) or not isinstance(doc.get("digests"), list):
        raise problems.bad_request("bad-json", 'expected {"digests": ["<blake3 hex>", ...]}')
    texts: list[Any] = doc["digests"]
    if len(texts) > limit:
        raise problems.bad_request("batch-too-large", f"at most {limit} digests per request")
    invalid = [t for t in texts if not isinstance(t, str) or not is_sha256_hex(t)]
    if invalid:
        raise problems.bad_request(
            "bad-digest", f"{len(invalid)} entries are not digests", invalid=invalid[:100]
        )
    digests = [Digest(t) for t in dict.fromkeys(texts)]
    # The durable store decides what exists. Through the tiers, each small blob found only there
    # would also be read whole into the memory tier: a bulk uploader's re-run, asking about
    # thousands of blobs, downloaded every small one of them from SFTP.
    store = request.app[TIERS].durable
    try:
        found = await asyncio.gather(*(store.exists(d) for d in digests))
    except BackendUnavailable as exc:  # a query: its 503 must not say nothing was stored
        raise problems.store_unavailable(exc, writing=False) from None
    return web.json_response(
        {"missing": [str(d) for d, there in zip(digests, found, strict=True) if not there]}
    )


# -- writes -----------------------------------------------------------------------------------


def _expectation(request: web.Request, blake3: Digest | None) -> Expectation:
    """What the client declared about the body; checked before a byte of it is read."""
    limit = request.app[CONFIG].max_blob_size
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise Problem(
            415,
            "unsupported-encoding",
            "Unsupported content coding",
            f"upload the bytes as they are: Content-Encoding {encoding!r} is not accepted",
        )
    if request.content_length is not None and request.content_length > limit:
        raise problems.too_large(limit)
    sha256: bytes | None = None
    for name in ("Repr-Digest", "Content-Digest"):
        value = request.headers.get(name)
        if value is None:
            continue
        try:
            declared = parse_sha256(value)
        except DigestFieldError as exc:
            raise problems.bad_request("bad-digest-field", f"{name}: {exc}") from None
        if declared is not None and sha256 is not None and declared != sha256:
            raise problems.bad_request(
                "bad-digest-field", "Repr-Digest and Content-Digest declare different SHA-256"
            )
        sha256 = declared or sha256
    return Expectation(blake3=blake3, sha256=sha256, max_size=limit)


def _stored(result: PutResult) -> web.Response:
    info = result.info
    return web.json_response(
        {
            "digest": str(info.digest),
            "size": info.size,
            "sha256": info.sha256.hex(),
            "content_type": info.content_type,
        },
        status=201 if result.created else 200,
        headers={"Location": f"/blobs/{info.digest}"},
    )


def _content_type(request: web.Request) -> str:
    """The media type to serve the blob with. HTTP libraries label a raw body with form types
    by default (curl, urllib); those describe the request, not a 3D asset, so they are dropped.

    The header must be a media type (RFC 9110 8.3.1; parameters are not kept): aiohttp turns
    "foo" into application/octet-stream and keeps "a/" or non-ASCII as written, which every
    later GET would then send back (and the Redis tier can hold only latin-1)."""
    raw = request.headers.get("Content-Type", "")
    if raw.strip() and _MEDIA_TYPE.fullmatch(raw.partition(";")[0].strip()) is None:
        raise problems.bad_request(
            "bad-content-type", f"Content-Type must be a media type such as model/gltf-binary, "
            f"not {raw[:200]!r}"
        )  # fmt: skip
    declared = request.content_type
    return DEFAULT_CONTENT_TYPE if declared in _FORM_TYPES else declared


async def _store_body(request: web.Request, expected: Expectation) -> PutResult:
    """Store, then record in the catalog; the answer waits for both."""
    head = bytearray()
    result = await _put(request, expected, head)
    await _record(request, result.info, bytes(head), new=result.created)
    return result


async def _record(
    request: web.Request, info: BlobInfo, head: bytes = b"", *, new: bool = False
) -> None:
    """Make sure the catalog has the blob's row.

    Idempotent: a blob stored by an upload whose catalog write failed is recorded by the next
    upload of the same bytes (or healed by POST /assets). ``new``: the store has just created
    the blob, so the row is almost surely absent and is inserted without asking first (the
    insert ignores a row that is there).
    """
    catalog = request.app[CATALOG]
    if new or await catalog.blob(info.digest.hex) is None:
        # From the durable store directly: these reads should neither fill nor count as
        # cache traffic.
        facts = await blob_facts(request.app[TIERS].durable, info, head)
        await catalog.record_blob(info, facts)


async def blob_facts(
    store: BlobBackend, info: BlobInfo, head: bytes = b""
) -> dict[str, Any] | None:
    """glTF facts of a stored blob (reading only what they need), None for other blobs.

    ``head``: the blob's first bytes where the caller has them (an upload keeps what it
    streamed); reads within it cost no request to the store (on SFTP, six round trips).
    """

    async def read(start: int, end: int) -> bytes:
        if end <= len(head):
            return head[start:end]
        return b"".join([c async for c in store.open(info.digest, start, end)])

    try:
        facts = await read_facts(read, info.size)
    except BlobStoreError as exc:
        log.warning("no glTF facts for %s: %s", info.digest, exc)
        return None
    return None if facts is None else facts.to_json()


async def _put(request: web.Request, expected: Expectation, head: bytearray) -> PutResult:
    """``head`` receives the body's first ``_HEAD`` bytes (the store verifies them with the
    rest, so after a successful put they are the blob's)."""
    with _upload_problems():
        return await request.app[STORE].put(
            _keeping_head(_body(request), head), expected, _content_type(request)
        )


@contextlib.contextmanager
def _upload_problems() -> Iterator[None]:
    try:
        yield
    except DigestMismatch as exc:
        raise Problem(
            422,
            "digest-mismatch",
            "Digest mismatch",
            f"nothing was stored: {exc}",
            extra={"algorithm": exc.algorithm, "expected": exc.expected, "actual": exc.actual},
        ) from None
    except BlobTooLarge as exc:
        raise problems.too_large(exc.limit) from None
    except StorageFull as exc:
        raise Problem(507, "storage-full", "Insufficient storage", str(exc)) from None


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """Each chunk as aiohttp received it: ``iter_any()`` joins whatever is buffered, one more
    copy of every byte of a large upload."""
    content = request.content
    while True:
        chunk, _ = await content.readchunk()
        if chunk:
            yield chunk
        elif content.at_eof():
            # Not iter_chunks(): on aiohttp's shared empty reader it never ends once any empty
            # body has been read (aio-libs/aiohttp#11397).
            return
        # else the empty marker of an HTTP chunk's end


async def _check_drained(request: web.Request, expected: Expectation, info: BlobInfo) -> None:
    """Read the body of a PUT whose blob is already stored and check it like any other body;
    nothing is written. BLAKE3 only: bytes that match the digest are the stored blob, whose
    SHA-256 is known."""
    hasher = blake3.blake3()
    size = 0
    with _upload_problems():
        async for chunk in _body(request):
            size += len(chunk)
            if expected.max_size is not None and size > expected.max_size:
                raise BlobTooLarge(expected.max_size)
            await update_off_loop(hasher.update, chunk)
        expected.check(Hashes(Digest(hasher.hexdigest()), info.sha256, size))


async def _keeping_head(chunks: AsyncIterator[bytes], head: bytearray) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if len(head) < _HEAD:
            head += chunk[: _HEAD - len(head)]
        yield chunk


async def put_blob(request: web.Request) -> web.Response:
    digest = _digest_param(request)
    await require(request, "write")
    expected = _expectation(request, digest)
    length = request.content_length
    if length is not None and length <= _ASK_FIRST_ABOVE:
        # The store finds an existing blob at its commit and keeps it; for a body this small
        # that costs less than asking first for every new one (on SFTP, two requests).
        return _stored(await _store_body(request, expected))
    info = await request.app[STORE].stat(digest)
    if info is not None:
        # Already stored: the client is sending the body anyway (no Expect). It is checked but
        # not written, and the connection is kept.
        await _check_drained(request, expected, info)
        await _record(request, info)
        return _stored(PutResult(info, created=False))
    return _stored(await _store_body(request, expected))


async def post_blob(request: web.Request) -> web.Response:
    await require(request, "write")
    return _stored(await _store_body(request, _expectation(request, None)))


async def _answer_upload_early(request: web.Request) -> web.StreamResponse | None:
    """Auth, size and (for PUT) presence are known from the headers, so a client that asked
    first does not send gigabytes to hear 401, 413 or "already stored"."""
    digest = _digest_param(request) if "digest" in request.match_info else None
    await require(request, "write")
    _expectation(request, digest)
    info = None if digest is None else await request.app[STORE].stat(digest)
    return None if info is None else _stored(PutResult(info, created=False))


def add_routes(app: web.Application) -> None:
    app[_ACCEL] = _accel_plan(app)
    router = app.router
    router.add_get("/blobs/sha256/{sha256:[^/]+}", sha256_alias)
    router.add_get("/blobs/{digest:[^/]+}", get_blob)
    upload = expecting(_answer_upload_early)
    router.add_put("/blobs/{digest:[^/]+}", put_blob, expect_handler=upload)
    router.add_post("/blobs/missing", missing, expect_handler=expecting())
    router.add_post("/blobs", post_blob, expect_handler=upload)
