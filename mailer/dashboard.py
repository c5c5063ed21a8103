"""The coordinator's dashboard: its home page, and the frame its other pages share.

The pages themselves belong to the domain packages (meetings: meetings, attendance,
cadence, parties and seats; lists: members, held posts); the delivery queue is the
engine's. Each is a `webauth.Access.page`, so that it is reached only signed in, by the
roles it names, and every POST carries the session's CSRF token. The home page links to
the sections the visitor's roles open (`SECTIONS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jinja2

from mailer.web import Page, Request, Response, render_page
from mailer.webauth import Access, SiteUser, Visitor, redirect


@dataclass(frozen=True)
class Section:
    """A part of the dashboard: its path, its name's key in the templates, who sees it."""

    path: str
    key: str
    roles: frozenset[str]        # any of these; "owner"/"moderator" mean of any list

    def open_to(self, person: SiteUser) -> bool:
        if self.roles & person.roles:
            return True
        kinds = {role for role in self.roles if role in ("owner", "moderator")}
        return bool(kinds and person.lists(*kinds))


STAFF = frozenset({"admin", "coordinator"})
SECTIONS = (
    Section("/dashboard/meetings", "meetings", STAFF),
    Section("/dashboard/organisation", "organisation", STAFF),
    Section("/dashboard/lists", "lists", STAFF | {"owner", "moderator"}),
    Section("/dashboard/queue", "queue", frozenset({"admin"})),
)


def frame(visitor: Visitor, person: SiteUser) -> dict[str, Any]:
    """What every dashboard page's layout shows: who is signed in, the sections they may
    open, and the CSRF token their forms carry."""
    return {"visitor": visitor.address, "csrf": visitor.csrf,
            "sections": [s.key for s in SECTIONS if s.open_to(person)]}


def language(request: Request, person: SiteUser) -> str | None:
    """A dashboard page's language: the visitor's browser's, else the person's own."""
    return request.language() or person.language or None


def fields(request: Request) -> dict[str, str]:
    """A POSTed form's fields, the last value of each, without the CSRF token."""
    return {key: given[-1] for key, given in request.form().items() if key != "csrf"}


def notice(request: Request) -> dict[str, Any]:
    """The notice a page shows after a change (`?notice=KEY&count=N`), else an empty one."""
    key = (request.query.get("notice") or [""])[0]
    count = (request.query.get("count") or ["0"])[0]
    return {"key": key if re.fullmatch(r"[a-z_]{1,30}", key) else "",
            "count": int(count) if count.isdigit() and len(count) < 7 else 0}


def done(back: str, key: str, count: int = 0) -> Response:
    """After a change: 303 to the page `back`, which shows the notice `key`."""
    return redirect(f"{back}?{urlencode({'notice': key, 'count': count})}")


def pages(access: Access, env: jinja2.Environment) -> tuple[Page, ...]:
    async def home(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        return render_page(env, "dashboard", language(request, person),
                           **frame(visitor, person), roles=sorted(person.roles))

    return (access.page(("GET",), "/dashboard/?", home),)
