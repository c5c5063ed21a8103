"""The list side's web pages: RFC 8058 one-click unsubscribe.

`GET /unsubscribe/TOKEN` shows what would happen and a button; it never unsubscribes
(link scanners and previews fetch URLs). `POST` to the same URL unsubscribes: that is what
a mail client sends for `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and what the
button sends. The token is the member's own (HMAC-signed id), so it unsubscribes only them.
"""

from __future__ import annotations

import re
from html import escape

from sqlalchemy.orm import Session

from lists import subscriptions
from lists.models import MailingList, Member
from lists.site import ListSite
from mailer.db import Database
from mailer.web import Request, Response, Route, page


def _member(session: Session, site: ListSite, token: str) -> tuple[Member, MailingList] | None:
    ident = site.unsubscribe_tokens.verify(token)
    member = session.get(Member, ident) if ident is not None else None
    if member is None or member.role != "member":
        return None
    mailing_list = session.get(MailingList, member.list_id)
    assert mailing_list is not None
    return member, mailing_list


def routes(site: ListSite, db: Database) -> tuple[Route, ...]:
    async def show(request: Request, match: re.Match[str]) -> Response:
        token = match["token"]
        found = await db.read(lambda s: _describe(s, site, token))
        if found is None:
            return page(404, "Unknown link", "This unsubscribe link is not valid, or you "
                        "have already left the list.")
        address, display = found
        body = (f"<!doctype html><html><head><meta charset='utf-8'><title>Unsubscribe"
                f"</title></head><body><h1>Leave {escape(display)}?</h1><p>"
                f"{escape(address)} will no longer receive mail from this list.</p>"
                f"<form method='post'><input type='hidden' name='List-Unsubscribe' "
                f"value='One-Click'><button type='submit'>Unsubscribe</button></form>"
                f"</body></html>")
        return Response(200, body.encode())

    async def unsubscribe(request: Request, match: re.Match[str]) -> Response:
        token = match["token"]
        done = await db.write(lambda s: _leave(s, site, token))
        if done is None:
            return page(404, "Unknown link", "This unsubscribe link is not valid, or you "
                        "have already left the list.")
        return page(200, "Unsubscribed", f"{done[0]} has left {done[1]}.")

    pattern = re.compile(r"/unsubscribe/(?P<token>[0-9]{1,18}-[a-z2-7]{26})")
    return (Route(("GET", "HEAD"), pattern, show), Route(("POST",), pattern, unsubscribe))


def _describe(session: Session, site: ListSite, token: str) -> tuple[str, str] | None:
    found = _member(session, site, token)
    return None if found is None else (found[0].address, found[1].display_name)


def _leave(session: Session, site: ListSite, token: str) -> tuple[str, str] | None:
    found = _member(session, site, token)
    if found is None:
        return None
    member, mailing_list = found
    subscriptions.leave(session, site, mailing_list, member.address)
    return member.address, mailing_list.display_name
