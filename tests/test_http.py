"""The HTTP listener (Starlette on uvicorn, in the daemon's loop): the rules every page
holds — security headers, bounded bodies and time, no detail on a fault — over real
sockets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from mailer import templates
from mailer.http_server import Listening, WebServer
from mailer.web import Page, Request, Response
from tests.helpers import http


async def hello(request: Request, match: re.Match[str]) -> Response:
    return Response(200, f"hello {len(request.body)}".encode(), "text/plain; charset=utf-8")


async def broken(request: Request, match: re.Match[str]) -> Response:
    raise RuntimeError("secret detail /etc/alliance")


@pytest.fixture
async def listening() -> AsyncIterator[Listening]:
    web = WebServer([Page(("GET", "POST"), re.compile("/hello"), hello),
                     Page(("GET",), re.compile("/broken"), broken)],
                    templates=templates.environment(), timeout=1.0, max_body=1024)
    server = await web.listen("127.0.0.1", 0)
    yield server
    server.close()
    await server.wait_closed()


def port_of(server: Listening) -> int:
    return int(server.sockets[0].getsockname()[1])


async def test_every_answer_carries_the_security_headers(listening: Listening) -> None:
    port = port_of(listening)
    for path in ("/hello", "/nothing-here", "/broken", "/static/alliance.css"):
        status, headers, _ = await http(port, "GET", path)
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "script-src" not in headers["content-security-policy"], "no script at all"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer", "tokens in URLs stay here"
        assert headers["x-content-type-options"] == "nosniff"
        assert "server" not in headers


async def test_a_fault_is_a_500_page_with_no_detail(listening: Listening) -> None:
    status, headers, body = await http(port_of(listening), "GET", "/broken")
    assert status == 500 and "Temporary problem" in body
    assert "secret detail" not in body and "Traceback" not in body
    assert headers["cache-control"] == "no-store"


async def test_a_body_over_the_cap_is_413_read_or_declared(listening: Listening) -> None:
    port = port_of(listening)
    assert (await http(port, "POST", "/hello", b"x" * 1024))[2] == "hello 1024"
    status, _, body = await http(port, "POST", "/hello", b"x" * 1025)
    assert status == 413 and "Request too large" in body
    # Declared too large: refused without waiting for a body that never comes.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
                 b"Connection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_a_request_that_dawdles_is_cut(listening: Listening) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(listening))
    writer.write(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                 b"Connection: close\r\n\r\nabc")            # 7 bytes never come
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"Request timeout" in answer


async def test_one_connection_serves_several_requests(listening: Listening) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(listening))
    for _ in range(2):
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 200 ")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"content-length: (\d+)", head.lower())[1])  # type: ignore[index]
        assert await reader.readexactly(length) == b"hello 0"
    writer.close()


async def test_the_style_sheet_is_served_and_nothing_else_from_disk(
        listening: Listening) -> None:
    port = port_of(listening)
    status, headers, css = await http(port, "GET", "/static/alliance.css")
    assert status == 200 and headers["content-type"] == "text/css; charset=utf-8"
    assert "max-width" in css and headers["cache-control"].startswith("public")
    for path in ("/static/../config.toml", "/static/%2e%2e%2fconfig.toml",
                 "/static/layout.html"):
        assert (await http(port, "GET", path))[0] == 404, path
