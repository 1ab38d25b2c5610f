"""A target whose answer never seems to end: for the relay and the sender, which must read
only the start of an answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

HUGE = 50 * 1024 * 1024  # bytes offered after the first line: far more than a client reads
CHUNK = b"x" * 65536


@dataclass
class Streaming:
    """Answers `status` with `first`, then HUGE bytes chunked (no Content-Length), made as they
    go out: aiohttp's writer waits for the client, so nothing large is held here either.
    `sent` gets, for each answer that stopped (finished, or cut off by the client), how many
    bytes went out after `first`."""

    status: int = 200
    first: bytes = b"too much\n"
    sent: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=self.status)
        sent = 0
        try:
            await response.prepare(request)
            await response.write(self.first)
            while sent < HUGE:
                await response.write(CHUNK)
                sent += len(CHUNK)
            await response.write_eof()
        except ConnectionError:  # the client hung up: what this is for
            pass
        finally:
            self.sent.append(sent)
        return response

    async def stopped(self, answers: int, within: float = 20) -> list[int]:
        """Bytes sent after `first` by each answer, once `answers` of them have stopped."""
        async with asyncio.timeout(within):
            while len(self.sent) < answers:
                await asyncio.sleep(0.02)
        return self.sent
