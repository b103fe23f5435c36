"""The application factory: wiring of config, store, tokens, middleware and routes."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from blobstore import DiskBackend

from . import blob_routes
from .appkeys import CONFIG, STORE, TOKENS
from .config import Config
from .problems import Problem, from_http_exception
from .tokens import TokenStore

log = logging.getLogger(__name__)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        problem = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = from_http_exception(exc)
    except ConnectionError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        problem = Problem(500, "internal", "Internal server error", "the server log has details")
    response = problem.response()
    if not await _drain_body(request, request.app[CONFIG].drain_limit):
        response.force_close()
    return response


async def _drain_body(request: web.Request, limit: int) -> bool:
    """Read and discard what is left of a rejected request's body, up to ``limit`` bytes.

    Godot's HTTPClient sends the whole body before it reads a response and reports a closed
    connection as a failure, so an error is only visible to it once the body has been taken.
    Returns False when the body was not read to its end (the connection must then close).
    """
    content = request.content
    if not request.body_exists or content.at_eof():
        return True
    if request.content_length is not None and request.content_length > limit:
        return False
    read = 0
    try:
        while chunk := await content.readany():
            read += len(chunk)
            if read > limit:
                return False
    except Exception:
        return False
    return content.at_eof()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(config: Config) -> web.Application:
    # POST /blobs/missing is the only JSON body we read; blob bodies stream and bypass this.
    json_limit = max(1 << 20, config.max_missing_batch * 80)
    app = web.Application(middlewares=[problem_middleware], client_max_size=json_limit)
    app[CONFIG] = config
    disk = DiskBackend(config.data_dir, chunk_size=config.chunk_size, direct_io=config.direct_io)
    app[STORE] = disk
    app[TOKENS] = TokenStore(config.data_dir / "tokens.json", config.admin_token)

    async def start_store(app: web.Application) -> None:
        swept = await disk.start()
        log.info("data in %s (%d stale temp files swept)", config.data_dir, swept)

    app.on_startup.append(start_store)
    app.router.add_get("/healthz", healthz)
    blob_routes.add_routes(app)
    return app
