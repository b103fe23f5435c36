"""Errors as ``application/problem+json`` (RFC 9457), each with a stable ``type``.

Handlers raise ``Problem``; the middleware in ``origin.app`` turns it into the response. The
``type`` URIs are relative references documented in README.md ("Errors").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from blobstore import BackendUnavailable

from .catalog import CatalogBusy, is_full

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


class Problem(Exception):
    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> web.Response:
        body = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        headers = {"Cache-Control": "no-store", **self.headers}
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type=PROBLEM_JSON,
            headers=headers,
        )


def bad_request(slug: str, detail: str, **extra: Any) -> Problem:
    return Problem(400, slug, "Bad request", detail, extra=extra)


def not_found(detail: str) -> Problem:
    return Problem(404, "not-found", "Not found", detail)


def unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="origin"'},
    )


def forbidden(scope: str) -> Problem:
    return Problem(
        403,
        "forbidden",
        "Insufficient scope",
        f"this request needs a token with the {scope!r} scope",
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="origin", error="insufficient_scope", scope="{scope}"'
            )
        },
    )


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "too-large",
        "Body too large",
        f"the body exceeds the limit of {limit} bytes",
        extra={"limit": limit},
    )


def from_http_exception(exc: web.HTTPException, request: web.BaseRequest) -> Problem:
    """aiohttp's own answers as problems: no route for the path, a method the route lacks, a
    body over ``client_max_size``. Their text only says the status again ("404: Not Found",
    which a client quoting the detail showed as "404: 404: Not Found"), so the two the router
    gives say what was asked."""
    slugs = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}
    details = {
        404: f"no route for {request.path}",
        405: f"{request.method} is not one of the methods of {request.path}",
    }
    return Problem(
        exc.status,
        slugs.get(exc.status, f"http-{exc.status}"),
        exc.reason,
        details.get(exc.status) or exc.text or exc.reason,
        headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow",)},
    )


def store_unavailable(exc: BackendUnavailable, *, writing: bool) -> Problem:
    """The 503 for a store that cannot serve now; ``writing`` says the request would have
    stored something (a query sent as a POST, ``/blobs/missing``, would not)."""
    return Problem(
        503, "store-unavailable", "Storage unavailable",
        f"nothing was stored: {exc}" if writing else str(exc), headers={"Retry-After": "5"},
    )  # fmt: skip


def for_exception(exc: Exception, request: web.BaseRequest) -> Problem:
    """What a request is answered when its handling raised ``exc``: our own problems as they
    are, a store or catalog that cannot serve now as 503, anything else as a logged 500."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, web.HTTPException):
        return from_http_exception(exc, request)
    if isinstance(exc, CatalogBusy):
        return Problem(503, "busy", "Try again", str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, BackendUnavailable):
        return store_unavailable(exc, writing=request.method not in ("GET", "HEAD"))
    if is_full(exc):
        # A blob already in the store is recorded by the next upload of it (blob_routes).
        return Problem(507, "storage-full", "Insufficient storage", "the catalog's disk is full")
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return Problem(500, "internal", "Internal server error", "the server log has details")
