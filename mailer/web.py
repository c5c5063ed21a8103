"""Web pages as the domain packages write them: requests, responses, pages and the store.

The HTTP listener (mailer.http_server) matches a request to a `Page` and awaits its handler;
a handler reads and writes the database through the `Store` it was given.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs

T = TypeVar("T")


class Store(Protocol):
    """The database as a page sees it: a function of a session, run in a transaction."""

    async def read(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def write(self, fn: Callable[..., T], *args: Any) -> T: ...


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
class Page:
    """A page: the methods it takes, its path (a regular expression) and its handler."""

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
