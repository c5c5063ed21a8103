"""What the coordinator's pages (meeting_pages, organisation_pages) share.

A form's values; a change made in one transaction by the service call the command line
makes, and logged with who made it; and what follows: a 303 to the page with a notice
("meeting created"), or the page again with the problem in one line and the values as
they were entered. The pages are for the site admin and the coordination contacts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from lists.service import ListError
from mailer import dashboard
from mailer.templates import language_of
from mailer.web import Request, Response, Store
from mailer.webauth import SiteUser, Visitor, audit, redirect
from meetings.organisation import MeetingError

T = TypeVar("T")

# The refusals a change may end in: shown on the form, never a 500.
MISTAKES = (MeetingError, ListError)


def staff(person: SiteUser, match: re.Match[str]) -> bool:
    """Whether the person may use the meetings and organisation pages."""
    return bool(dashboard.STAFF & person.roles)


def page_language(request: Request, person: SiteUser) -> str:
    """The page's language (the browser's, else the person's), always one we have."""
    return language_of(dashboard.language(request, person))


def values(request: Request) -> dict[str, str]:
    """A POSTed form's fields, the last value of each, without the CSRF token."""
    return {key: given[-1] for key, given in request.form().items() if key != "csrf"}


def notice(request: Request) -> dict[str, Any]:
    """The notice a page shows after a change (`?notice=KEY&count=N`), or an empty one."""
    key = (request.query.get("notice") or [""])[0]
    count = (request.query.get("count") or ["0"])[0]
    return {"key": key if re.fullmatch(r"[a-z_]{1,30}", key) else "",
            "count": int(count) if count.isdigit() and len(count) < 7 else 0}


@dataclass(frozen=True)
class Done:
    """A change made: the notice to show, a count it names, where to go (default: the
    page the form came from) and what the audit line adds."""

    notice: str
    count: int = 0
    target: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """A change refused: which form, the problem in one line, the values entered."""

    form: str
    problem: str
    entered: dict[str, str]


async def change(store: Store, person: SiteUser | Visitor, action: str, back: str,
                 make: Callable[[Session], Done],
                 again: Callable[[Failed], Awaitable[Response]], form: str,
                 entered: dict[str, str], **detail: Any) -> Response:
    """Make a change in one transaction; log it with who made it and go back to `back`
    with its notice, or show the page again with the refusal (nothing changed)."""
    try:
        done = await store.write(make)
    except MISTAKES as error:
        return await again(Failed(form, str(error), entered))
    audit(person, action, **{**detail, **done.detail})
    query = urlencode({"notice": done.notice, "count": done.count})
    target = done.target or back
    return redirect(f"{target}{'&' if '?' in target else '?'}{query}")


def form_values(defaults: dict[str, str], form: str, failed: Failed | None) -> dict[str, str]:
    """A form's values: as entered when this form was refused, else the defaults."""
    if failed is None or failed.form != form:
        return dict(defaults)
    return {key: failed.entered.get(key, value) for key, value in defaults.items()}


def problem_of(failed: Failed | None) -> dict[str, str]:
    """The refusal as the templates show it: {"form": ..., "text": ...}, or empty."""
    return {"form": failed.form, "text": failed.problem} if failed else {"form": "", "text": ""}


def in_session(fn: Callable[..., T], *args: Any) -> Callable[[Session], T]:
    """fn(session, *args), for the store."""
    return lambda session: fn(session, *args)
