"""``Expect: 100-continue`` on every route that takes a body, with refusals as problem+json.

aiohttp runs a route's expect handler before the middleware: its default answers any other
expectation with a text/plain 417, and whatever a handler of ours raises there would be a
text/plain 500. ``expecting`` answers both as the middleware does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .problems import Problem, for_exception

# Answers the request from its headers alone (401, 413, "already stored"), or None to go on.
Check = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


def expecting(check: Check | None = None) -> Check:
    """An expect handler: other expectations get 417, then ``check`` may answer before the
    body is sent; otherwise the client hears 100 Continue."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        try:
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise Problem(417, "expectation-failed", "Expectation failed", "only 100-continue")
            answer = None if check is None else await check(request)
        except Exception as exc:
            answer = for_exception(exc, request).response()
        if answer is not None:
            answer.force_close()  # the body, if the client sends it anyway, is not read
            return answer
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    return handle
