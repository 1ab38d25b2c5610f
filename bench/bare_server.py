"""The baseline for the receiver benchmark: an aiohttp HTTPS server that reads the body and
answers 200, with no auth and no store. Run: python bench/bare_server.py CERT PORT LOOP"""

from __future__ import annotations

import asyncio
import ssl
import sys

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok\n")


async def main(cert: str, port: int) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert)
    app = web.Application()
    app.router.add_post("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    cert_file, port_text, loop_name = sys.argv[1], sys.argv[2], sys.argv[3]
    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(cert_file, int(port_text)))
