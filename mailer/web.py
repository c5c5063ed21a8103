"""Web pages as the domain packages write them: requests, responses, pages and the store.

The HTTP listener (mailer.http_server, Starlette on uvicorn) matches a request to a `Page`
and awaits its handler; a handler reads and writes the database through the `Store` it was
given. Every page is a template (`templates/<language>/pages/<name>.html`) rendered by the
one strict environment, whose autoescape makes the values in the context safe: no HTML is
written in Python.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs

import jinja2

from mailer.templates import accepted_language, language_of

T = TypeVar("T")

# The problems a page may report (the template `error` words them), and their status.
ERRORS = {"bad_request": 400, "not_found": 404, "method_not_allowed": 405,
          "temporary_problem": 500, "too_large": 413, "timeout": 408, "no_archive": 404,
          "no_post": 404, "no_calendar": 404}


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
    peer: str = ""       # the client's IP address, as the listener's socket sees it
    raw_query: str = ""  # the query string as it came (to send a visitor back to it)

    def form(self) -> dict[str, list[str]]:
        """The body as an HTML form (application/x-www-form-urlencoded)."""
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    def language(self) -> str | None:
        """The language we have that the visitor's Accept-Language prefers, if any."""
        return accepted_language(self.headers.get("accept-language"))


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


def render_page(env: jinja2.Environment, name: str, language: str | None, status: int = 200,
                **context: Any) -> Response:
    """Page template `name` in `language` (else English), as a response that says its language.

    The context holds plain values; the environment escapes them.
    """
    language = language_of(language)
    body = env.get_template(f"{language}/pages/{name}.html").render(context, language=language)
    return Response(status, body.encode(), headers=(("content-language", language),))


def render_error(env: jinja2.Environment, problem: str, language: str | None) -> Response:
    """The error page for `problem` (one of ERRORS), with its status."""
    return render_page(env, "error", language, ERRORS[problem], problem=problem)
