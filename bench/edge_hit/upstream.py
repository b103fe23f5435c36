"""A 1 MiB answer whose ``X-Pad`` header is as long as the URL's last segment says.

The padding moves where nginx's proxy_cache file puts the body (after its own header, the
key and the upstream's raw response headers), so one run can compare a page-aligned body
with unaligned ones; see alignment.sh.
"""

import sys

from aiohttp import web

BODY = bytes(range(256)) * 4096


async def answer(request: web.Request) -> web.Response:
    pad = int(request.match_info["pad"])
    return web.Response(
        body=BODY,
        headers={"X-Pad": "p" * pad, "Cache-Control": "max-age=3600"},
        content_type="application/octet-stream",
    )


app = web.Application()
app.router.add_get("/f/{name}/{pad}", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
