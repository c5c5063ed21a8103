"""The one HTTP listener: serves the pages the domain packages hand it (mailer.web).

HTTP/1.1 parsing is h11's (a small, well-kept sans-I/O library), so that we only write the
dispatch. One request per connection; bodies are capped; a handler's fault is a 500 page
with no detail. Pages are data: (methods, path pattern, handler). The listener's own error
pages come from the one template environment, in the visitor's language.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

import h11
import jinja2

from mailer.web import Page, Request, Response, render_error

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


class WebServer:
    """Serves the pages over plain HTTP/1.1 on an asyncio server."""

    def __init__(self, pages: Sequence[Page], *, templates: jinja2.Environment,
                 timeout: float = 30.0) -> None:
        self.pages = tuple(pages)
        self.templates = templates
        self.timeout = timeout

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

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            peername = writer.get_extra_info("peername")
            peer = str(peername[0]) if isinstance(peername, tuple) else ""
            request = await asyncio.wait_for(self._read(connection, reader, peer),
                                             self.timeout)
            if request is None:
                response = render_error(self.templates, "bad_request", None)
            else:
                try:
                    response = await self.dispatch(request)
                except Exception:
                    log.exception("HTTP handler failed for %s", request.path)
                    response = render_error(self.templates, "temporary_problem",
                                            request.language())
            self._write(connection, writer, response)
            await writer.drain()
        except (TimeoutError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    async def _read(self, connection: h11.Connection, reader: asyncio.StreamReader,
                    peer: str) -> Request | None:
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
                               parse_qs(target.query), headers, bytes(body), peer)
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
