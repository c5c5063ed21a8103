"""The one HTTP listener: one-click unsubscribe now, confirmation pages and feeds later.

HTTP/1.1 parsing is h11's (a small, well-kept sans-I/O library), so that we only write the
routing. One request per connection; bodies are capped; a handler's fault is a 500 page
with no detail. Routes are data: (method, path pattern, handler).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, list[str]]:
        """The body as an HTML form (application/x-www-form-urlencoded)."""
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request, re.Match[str]], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    pattern: re.Pattern[str]
    handler: Handler


def document(title: str, body: str) -> str:
    """An HTML page around `body`; both arguments are HTML, escaped by the caller."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"</head><body>{body}</body></html>")


def page(status: int, title: str, text: str) -> Response:
    """A minimal page, for errors and for the answers of our own pages."""
    from html import escape
    return Response(status, document(escape(title), f"<h1>{escape(title)}</h1>"
                                                    f"<p>{escape(text)}</p>").encode())


class WebServer:
    """Serves the routes over plain HTTP/1.1 on an asyncio server."""

    def __init__(self, routes: Sequence[Route], timeout: float = 30.0) -> None:
        self.routes = tuple(routes)
        self.timeout = timeout

    async def dispatch(self, request: Request) -> Response:
        allowed = False
        for route in self.routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            if request.method not in route.methods:
                allowed = True
                continue
            return await route.handler(request, match)
        if allowed:
            return page(405, "Method not allowed", "This page does not take that method.")
        return page(404, "Not found", "There is no such page here.")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            request = await asyncio.wait_for(self._read(connection, reader), self.timeout)
            if request is None:
                response = page(400, "Bad request", "The request could not be read.")
            else:
                try:
                    response = await self.dispatch(request)
                except Exception:
                    log.exception("HTTP handler failed for %s", request.path)
                    response = page(500, "Temporary problem", "Please try again later.")
            self._write(connection, writer, response)
            await writer.drain()
        except (TimeoutError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    async def _read(self, connection: h11.Connection,
                    reader: asyncio.StreamReader) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError:
                return None
            if event is h11.NEED_DATA:
                data = await reader.read(16 * 1024)
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    return None
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                target = urlsplit(head.target.decode("ascii", "replace"))
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode(), target.path,
                               parse_qs(target.query), headers, bytes(body))
            else:
                return None

    @staticmethod
    def _write(connection: h11.Connection, writer: asyncio.StreamWriter,
               response: Response) -> None:
        headers = [("content-type", response.content_type),
                   ("content-length", str(len(response.body))),
                   ("connection", "close"), ("cache-control", "no-store"),
                   ("x-content-type-options", "nosniff"), *response.headers]
        writer.write(connection.send(h11.Response(status_code=response.status,
                                                  headers=headers)))
        writer.write(connection.send(h11.Data(data=response.body)))
        writer.write(connection.send(h11.EndOfMessage()))
