"""The status page's web server: aiohttp on the call's own event loop, read-only.

Routes: `/` (the page), `/static/…` (its script, styles and uPlot, shipped in the package: the
Pi may be offline), `/api/status` (the snapshot as JSON), `/events` (server-sent events: a new
snapshot on every change), `/metrics` (Prometheus) and `/healthz` (200 or 503 with the reason).
Every handler only reads in-memory state that the board keeps, so a request never waits on the
call; a slow client is the socket's problem, not the loop's. With a token set, every route that
carries data wants `Authorization: Bearer TOKEN` or `?token=TOKEN` (the page's own HTML and
scripts hold none, and pass the token on from the page's address).
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_sse import sse_response

from payphone.log import get_logger
from payphone.status.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from payphone.status.page import StatusPage

log = get_logger("status")

STATIC_DIR = Path(__file__).resolve().parent / "static"
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux's value; named in Python 3.12+
KEEPALIVE_S = 15.0
SHUTDOWN_S = 1.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def split_address(address: str) -> tuple[str, int]:
    """`127.0.0.1:8080` / `[::1]:8080` -> (host, port); validated by `StatusSettings`."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for `host` (both families for `localhost`).

    IP_FREEBIND lets the private link's address be bound at boot before the link is up (the
    page answers there as soon as it is), instead of failing and never serving on it.
    """
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, where in found:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sys.platform == "linux":
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(where)
            sock.listen(64)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def token_guard(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        query = request.query.get("token")
        public = request.path == "/" or request.path.startswith("/static/")  # no data in them
        if (
            token
            and not public
            and not (
                hmac.compare_digest(given.encode(), expected)
                or (query is not None and hmac.compare_digest(query.encode(), token.encode()))
            )
        ):
            return web.Response(status=401, text="status page: token required\n")
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    return guard


class StatusServer:
    """Serves one `StatusPage` on its addresses; `start()`/`stop()` on the running loop."""

    def __init__(self, page: StatusPage, addresses: list[str], token: str = "") -> None:
        self.page = page
        self.addresses = addresses
        self.bound: list[str] = []
        self._closing = asyncio.Event()
        self._index = (STATIC_DIR / "index.html").read_bytes()
        self.app = web.Application(middlewares=[token_guard(token)])
        self.app.router.add_get("/", self.index)
        self.app.router.add_get("/api/status", self.status)
        self.app.router.add_get("/events", self.events)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_static("/static/", STATIC_DIR)
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S
        )

    async def start(self) -> None:
        """Bind every address; one that cannot be bound is logged, never fatal to the phone."""
        await self._runner.setup()
        for address in self.addresses:
            try:
                for sock in listening_sockets(*split_address(address)):
                    await web.SockSite(self._runner, sock).start()
            except OSError as exc:
                log.error("status_page_unavailable", address=address, error=str(exc))
                continue
            self.bound.append(address)
        if self.bound:
            log.info("status_page_serving", addresses=self.bound)

    async def stop(self) -> None:
        self._closing.set()
        self.page.board.wake()  # event streams see the flag now, not at their next keep-alive
        await self._runner.cleanup()

    # -- handlers -------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._index, content_type="text/html")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page.snapshot_json(), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.page.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        health = self.page.health
        return web.Response(status=200 if health.ok else 503, text=health.line + "\n")

    async def events(self, request: web.Request) -> web.StreamResponse:
        """A snapshot now, then an update per change (just the state when only it moved);
        waits are woken by the board, not polled."""
        board = self.page.board
        headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
        async with sse_response(request, headers=headers, ping_interval=KEEPALIVE_S) as stream:
            seen = seen_data = -1
            while stream.is_connected() and not self._closing.is_set():
                if board.data_version != seen_data:
                    seen, seen_data = board.version, board.data_version
                    await stream.send(self.page.snapshot_json())
                elif board.version != seen:
                    seen = board.version
                    await stream.send(self.page.now_json())
                await board.wait_change(seen, KEEPALIVE_S)
        return stream
