"""The baseline for the /health benchmark: a bare aiohttp handler returning a constant body."""

from __future__ import annotations

import sys

from aiohttp import web

BODY = b'{"applicationHealthState": "Healthy"}' + b" " * 1000  # about the size of the agent's /health body


async def constant(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_get("/health", constant)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
