"""The dashboard's queue page, for the site admin: the delivery queue (counts by state, how
long the oldest delivery has waited, the deferred deliveries with their last error) and the
quarantine (inbound work that failed too often, with its error), each item to replay.

The page shows what `alliance queue` and `alliance quarantine list` print (queues.state,
router.quarantined); replay is `alliance quarantine replay`'s call (router.replay), logged
with who made it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jinja2
from sqlalchemy.orm import Session

from mailer import dashboard, dates, queues, router
from mailer.templates import language_of
from mailer.web import Page, Request, Response, render_page
from mailer.webauth import Access, SiteUser, Visitor, audit

PAGE = "/dashboard/queue"
ERROR_CHARS = 500        # of an error shown


def admin(person: SiteUser, match: re.Match[str]) -> bool:
    return person.has("admin")


def queue_page(session: Session, language: str, now: float) -> dict[str, Any]:
    """What the page shows: the queues now, times in the page's language."""
    found = queues.state(session)
    return {"deliveries": found.deliveries, "work": found.work,
            "next_attempt": _when(found.next_attempt, language),
            "waited": _minutes(now - found.oldest_waiting)
            if found.oldest_waiting is not None else None,
            "deferred": [{"recipient": d.recipient, "attempts": d.attempts,
                          "due": _when(d.due_at, language), "code": d.code or "",
                          "error": d.error[:ERROR_CHARS]} for d in found.deferred],
            "failures": [{"recipient": f.recipient, "code": f.code or "",
                          "error": f.error[:ERROR_CHARS]} for f in found.recent_failures],
            "quarantine": [{"id": w.id, "recipient": w.recipient, "attempts": w.attempts,
                            "error": (w.error or "")[:ERROR_CHARS]}
                           for w in router.quarantined(session)[:queues.SHOWN * 5]]}


def _when(stamp: float | None, language: str) -> str:
    return dates.stamp(stamp, language) if stamp is not None else ""


def _minutes(seconds: float) -> int:
    return max(0, int(seconds // 60))


def pages(access: Access, env: jinja2.Environment, clock: Callable[[], float],
          wake: Callable[[], None]) -> tuple[Page, ...]:
    """/dashboard/queue, and the replay of a quarantined item; `wake` tells the router
    that work is due (another daemon's router finds it at its next look)."""

    async def show(request: Request, visitor: Visitor, person: SiteUser,
                   problem: str = "") -> Response:
        language = language_of(dashboard.language(request, person))
        now = clock()
        shown = await access.store.read(lambda s: queue_page(s, language, now))
        return render_page(env, "staff_queue", language, 400 if problem else 200,
                           **dashboard.frame(visitor, person), **shown,
                           notice=dashboard.notice(request), problem=problem)

    async def look(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        return await show(request, visitor, person)

    async def replay(request: Request, match: re.Match[str], visitor: Visitor,
                     person: SiteUser) -> Response:
        work_id = int(match["id"])
        if not await access.store.write(lambda s: router.replay(s, work_id)):
            return await show(request, visitor, person,
                              f"no quarantined work with id {work_id}")
        wake()
        audit(person, "quarantine.replay", work=work_id)
        return dashboard.done(PAGE, "replayed", work_id)

    return (access.page(("GET",), PAGE + "/?", look, admin),
            access.page(("POST",), PAGE + "/replay/(?P<id>[0-9]{1,12})", replay, admin))
