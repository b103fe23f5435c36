"""A request that fails once its answer has begun, and a client that leaves mid-request."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from blobstore import BackendUnavailable
from origin import Config
from origin.app import request_middleware
from origin.appkeys import CONFIG, IN_FLIGHT
from origin.inflight import InFlight

from .conftest import LiveOrigin
from .test_live_server import auth, b3, connect, http, request_head


async def test_a_failure_after_the_answer_began_drops_the_connection(config: Config) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10 << 20)})
        await response.prepare(request)
        for _ in range(16):
            await response.write(b"x" * 65536)
        raise BackendUnavailable("the durable store went away mid-body")

    app = web.Application(middlewares=[request_middleware])
    app[CONFIG] = config
    app[IN_FLIGHT] = InFlight()
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
        # The connection ends (EOF) within the timeout, after the first bytes. Before, a 503
        # problem response was written inside the body, and the client then waited for the
        # rest of the Content-Length.
        received = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"x" * (1 << 20)


@pytest.mark.parametrize("stored_before", [False, True])
def test_a_client_that_leaves_mid_upload_is_no_traceback(
    live_origin: LiveOrigin, stored_before: bool
) -> None:
    data = os.urandom(2 << 20)  # past the size where a PUT asks the store first
    digest = b3(data)
    if stored_before:
        assert http(live_origin, "PUT", f"/blobs/{digest}", data, auth(live_origin))[0] == 201
    for _ in range(3):
        with connect(live_origin) as sock:
            headers = {**auth(live_origin), "Content-Length": str(len(data))}
            sock.sendall(request_head("PUT", f"/blobs/{digest}", headers) + data[:100_000])
            time.sleep(0.2)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert http(live_origin, "HEAD", f"/blobs/{digest}")[0] == (200 if stored_before else 404)
    # Before, aiohttp logged a traceback for each (the middleware re-raised the lost connection).
    assert not [line for line in live_origin.output if "Traceback" in line or " ERROR " in line]
