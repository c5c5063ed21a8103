"""The dashboard's held posts: each post a list keeps for a moderator, with its sender,
subject, reason and the start of its text, to approve, reject (the poster is told why) or
discard.

A decision is moderation.decide, the call a moderator's reply to the hold notice and
`alliance list moderate` make, in one transaction, logged with who made it. The list's
owners and moderators, coordinators and the site admin may decide.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import moderation, service
from lists.list_site import ListSite
from lists.models import Held
from lists.roster_pages import BASE, NAME, sees
from lists.service import ListError
from lists.threads import text_of
from mailer import dashboard, dates
from mailer.inbound import parse
from mailer.models import Message
from mailer.templates import language_of
from mailer.web import Page, Request, Response, render_page
from mailer.webauth import Access, SiteUser, Visitor, audit

SHOWN = 50               # held posts a page shows, oldest first
PREVIEW_BYTES = 64_000   # of a post's stored bytes read for its preview
PREVIEW_CHARS = 1_000    # of its text shown
MAX_REASON = 1_000       # characters of a rejection's reason
NOTICES = {"approve": "approved", "reject": "rejected", "discard": "discarded"}


def preview(raw: bytes) -> tuple[str, bool]:
    """The start of a post's plain text, and whether it was cut, from its first bytes.

    >>> preview(b"Subject: x\\r\\n\\r\\nHello,\\r\\nlist.\\r\\n")
    ('Hello,\\nlist.\\n', False)
    """
    text = text_of(parse(raw[:PREVIEW_BYTES]))
    cut = len(text) > PREVIEW_CHARS or len(raw) > PREVIEW_BYTES
    return text[:PREVIEW_CHARS], cut


def held_posts(session: Session, name: str, language: str) -> dict[str, Any] | None:
    """The list's held posts, oldest first, with their previews; None if no such list."""
    try:
        mailing_list = service.find(session, name)
    except ListError:
        return None
    waiting = (Held.list_id == mailing_list.id, Held.state == "held")
    rows = session.execute(
        select(Held, func.substr(Message.raw, 1, PREVIEW_BYTES), Message.size)
        .join(Message, Message.id == Held.message_id)
        .where(*waiting).order_by(Held.id).limit(SHOWN)).all()
    posts = []
    for held, start, size in rows:
        text, cut = preview(bytes(start or b""))
        posts.append({"id": held.id, "sender": held.sender, "subject": held.subject,
                      "reason": held.reason, "held_at": dates.stamp(held.held_at, language),
                      "text": text, "cut": cut or size > PREVIEW_BYTES})
    total = session.scalar(select(func.count()).select_from(Held).where(*waiting)) or 0
    return {"list": {"name": mailing_list.name, "display_name": mailing_list.display_name},
            "posts": posts, "total": int(total)}


def decide(site: ListSite, name: str, held_id: int, action: str, reason: str,
           actor: str) -> Any:
    """moderation.decide on the list's held post `held_id`, as `list moderate` calls it."""

    def make(session: Session) -> None:
        mailing_list = service.find(session, name)
        held = session.get(Held, held_id)
        if held is None or held.list_id != mailing_list.id:
            raise ListError(f"no held post {held_id} on {name}")
        moderation.decide(session, site, mailing_list, held, action, reason=reason,
                          actor=actor)

    return make


def pages(site: ListSite, access: Access) -> tuple[Page, ...]:
    """/dashboard/lists/NAME/held, and the decision on each post."""
    env, store = site.templates, access.store
    back = BASE + "/{}/held"

    async def show(request: Request, visitor: Visitor, person: SiteUser, name: str,
                   problem: dict[str, Any] | None = None) -> Response:
        language = language_of(dashboard.language(request, person))
        shown = await store.read(lambda s: held_posts(s, name, language))
        if shown is None:
            return render_page(env, "error", language, 404, problem="not_found")
        return render_page(env, "staff_list_held", language, 400 if problem else 200,
                           **dashboard.frame(visitor, person), **shown,
                           notice=dashboard.notice(request),
                           problem=problem or {"id": 0, "text": ""})

    async def look(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        return await show(request, visitor, person, match["name"])

    async def act(request: Request, match: re.Match[str], visitor: Visitor,
                  person: SiteUser) -> Response:
        name, held_id, entered = match["name"], int(match["id"]), dashboard.fields(request)
        action = entered.get("action", "")
        reason = " ".join(entered.get("reason", "").split())[:MAX_REASON]
        try:
            await store.write(decide(site, name, held_id, action, reason, person.address))
        except ListError as error:
            return await show(request, visitor, person, name,
                              {"id": held_id, "text": str(error)})
        audit(person, f"list.{action}", list=name, held=held_id,
              **({"reason": reason} if reason else {}))
        return dashboard.done(back.format(name), NOTICES[action])

    def allowed(person: SiteUser, match: re.Match[str]) -> bool:
        return sees(person, match["name"])

    return (access.page(("GET",), f"{BASE}/{NAME}/held/?", look, allowed),
            access.page(("POST",), f"{BASE}/{NAME}/held/(?P<id>[0-9]{{1,12}})", act,
                        allowed))
