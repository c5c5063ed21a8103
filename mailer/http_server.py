"""The one HTTP listener: serves the pages the domain packages hand it (mailer.web).

An ASGI application on Starlette's requests and responses, served by uvicorn in the
daemon's own event loop (no thread, no second process): HTTP/1.1 parsing, keep-alive and
back-pressure are theirs, and we only write the dispatch. Pages are data: (methods, path
pattern, handler). Bodies are capped, a request that takes too long is cut, a handler's
fault is a 500 page with no detail, and every answer carries the security headers below.
The listener's own error pages come from the one template environment, in the visitor's
language.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import uvicorn
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.types import Receive, Scope, Send

from mailer.templates import TEMPLATES
from mailer.web import Page, Request, Response, render_error

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
STATIC = TEMPLATES / "pages" / "static"

# Sent with every answer: no script runs and nothing is framed (no page needs either), no
# token in a URL leaks to another site through Referer, and nothing is cached on the way.
SECURITY_HEADERS = (
    ("content-security-policy", "default-src 'none'; style-src 'self'; img-src 'self'; "
     "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
)


class TooLarge(Exception):
    """A request body over MAX_BODY."""


class WebServer:
    """The pages as an ASGI application, and the uvicorn server that serves them."""

    def __init__(self, pages: Sequence[Page], *, templates: jinja2.Environment,
                 timeout: float = 30.0, max_body: int = MAX_BODY) -> None:
        self.pages = tuple(pages) + (static_page(),)
        self.templates = templates
        self.timeout = timeout
        self.max_body = max_body

    async def dispatch(self, request: Request) -> Response:
        allowed = False
        for found in self.pages:
            match = found.pattern.fullmatch(request.path)
            if match is None:
                continue
            if request.method not in found.methods:
                allowed = True
                continue
            return await found.handler(request, match)
        problem = "method_not_allowed" if allowed else "not_found"
        return render_error(self.templates, problem, request.language())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":         # lifespan is off; no websockets
            return
        incoming = StarletteRequest(scope, receive)
        try:
            response = await asyncio.wait_for(self._answer(incoming), self.timeout)
        except TimeoutError:
            response = render_error(self.templates, "timeout", None)
        except ClientDisconnect:
            return
        await self._send(response, scope, receive, send)

    async def _answer(self, incoming: StarletteRequest) -> Response:
        headers = {key.lower(): value for key, value in incoming.headers.items()}
        try:
            body = await self._body(incoming)
        except TooLarge:
            return render_error(self.templates, "too_large", None)
        request = Request(incoming.method, incoming.url.path,
                          parse_qs(incoming.url.query), headers, body,
                          incoming.client.host if incoming.client else "",
                          incoming.url.query)
        try:
            return await self.dispatch(request)
        except Exception:
            log.exception("HTTP handler failed for %s", request.path)
            return render_error(self.templates, "temporary_problem", request.language())

    async def _body(self, incoming: StarletteRequest) -> bytes:
        declared = incoming.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise TooLarge
        body = bytearray()
        async for chunk in incoming.stream():
            body += chunk
            if len(body) > self.max_body:
                raise TooLarge
        return bytes(body)

    @staticmethod
    async def _send(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
        names = {name.lower() for name, _ in response.headers}
        headers = [*response.headers,
                   *((name, value) for name, value in SECURITY_HEADERS if name not in names)]
        answer = StarletteResponse(response.body, status_code=response.status,
                                   media_type=None)
        answer.headers["content-type"] = response.content_type
        for name, value in headers:
            answer.headers.append(name, value)
        await answer(scope, receive, send)

    async def listen(self, host: str, port: int) -> Listening:
        """Serve on host:port (0: any free port) in this event loop until closed."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        config = uvicorn.Config(
            self, lifespan="off", log_config=None, access_log=False, server_header=False,
            # The socket's peer is the client: a forwarded-for header is only a header
            # (/metrics trusts addresses; a reverse proxy is named in http.base_url).
            proxy_headers=False, timeout_keep_alive=5, timeout_graceful_shutdown=5,
            h11_max_incomplete_event_size=16 * 1024, limit_concurrency=512)
        server = InLoopServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        while not server.started and not task.done():
            await asyncio.sleep(0.005)
        if task.done():
            task.result()     # the error that stopped it
        return Listening(server, task, [sock])


class InLoopServer(uvicorn.Server):
    """uvicorn inside the daemon: the daemon owns SIGTERM and SIGINT, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Listening:
    """A running listener, shaped as the daemon keeps its SMTP ones (sockets, close)."""

    def __init__(self, server: InLoopServer, task: asyncio.Task[Any],
                 sockets: list[socket.socket]) -> None:
        self.server = server
        self.task = task
        self.sockets = sockets

    def close(self) -> None:
        self.server.should_exit = True

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def static_page() -> Page:
    """The style sheet (and whatever else templates/pages/static holds), from a fixed list:
    no path from a request reaches the file system."""
    files = {path.name: path.read_bytes() for path in sorted(STATIC.glob("*"))
             if path.is_file()} if STATIC.is_dir() else {}
    kinds = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

    async def serve(request: Request, match: re.Match[str]) -> Response:
        name = match["name"]
        data = files.get(name)
        if data is None:
            return Response(404, b"not found", "text/plain; charset=utf-8")
        kind = kinds.get(Path(name).suffix, "application/octet-stream")
        return Response(200, data, kind, (("cache-control", "public, max-age=86400"),))

    return Page(("GET", "HEAD"), re.compile(r"/static/(?P<name>[a-z0-9_.-]+)"), serve)
