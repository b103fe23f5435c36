"""The requests a worker is handling, so that a graceful stop waits for them.

aiohttp's own graceful stop (``AppRunner.cleanup``) first marks every connection closing, and a
closing connection drops the bytes that still arrive (aiohttp ``RequestHandler.data_received``):
an upload under way at SIGTERM then waits for a body that never comes until the shutdown
timeout cancels it, and is lost. So the worker stops listening, waits here until the requests
under way are done (their bodies read, their answers handed over), and only then cleans up.
"""

from __future__ import annotations

import asyncio


class InFlight:
    def __init__(self) -> None:
        self.count = 0
        # While draining, answers close their connection: a keep-alive client reconnects to
        # another worker (or the next server) instead of sending more here.
        self.draining = False
        self._idle: asyncio.Event | None = None  # only once draining: nothing on the hot path

    def begin(self) -> None:
        self.count += 1

    def end(self) -> None:
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Return once no request is being handled; the caller bounds the wait."""
        self.draining = True
        if self.count:
            self._idle = asyncio.Event()
            await self._idle.wait()
