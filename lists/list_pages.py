"""The list side's web pages: RFC 8058 one-click unsubscribe, and the public archive.

`GET /unsubscribe/TOKEN` shows what would happen and a button; it never unsubscribes
(link scanners and previews fetch URLs). `POST` to the same URL unsubscribes: that is what
a mail client sends for `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and what the
button sends. The token is the member's own (HMAC-signed id), so it unsubscribes only them.
"""

from __future__ import annotations

import re
import time
from html import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import subscriptions
from lists.list_site import ListSite
from lists.models import Archived, MailingList, Member
from mailer.addresses import named_addresses
from mailer.inbound import parse
from mailer.web import Page, Request, Response, Store, document, page


def _member(session: Session, site: ListSite, token: str) -> tuple[Member, MailingList] | None:
    ident = site.unsubscribe_tokens.verify(token)
    member = session.get(Member, ident) if ident is not None else None
    if member is None or member.role != "member":
        return None
    mailing_list = session.get(MailingList, member.list_id)
    assert mailing_list is not None
    return member, mailing_list


def pages(site: ListSite, db: Store) -> tuple[Page, ...]:
    async def show(request: Request, match: re.Match[str]) -> Response:
        token = match["token"]
        found = await db.read(lambda s: _describe(s, site, token))
        if found is None:
            return _unknown_link()
        address, display = found
        body = document("Unsubscribe", (
            f"<h1>Leave {escape(display)}?</h1><p>"
            f"{escape(address)} will no longer receive mail from this list.</p>"
            f"<form method='post'><input type='hidden' name='List-Unsubscribe' "
            f"value='One-Click'><button type='submit'>Unsubscribe</button></form>"))
        return Response(200, body.encode())

    async def unsubscribe(request: Request, match: re.Match[str]) -> Response:
        token = match["token"]
        done = await db.write(lambda s: _leave(s, site, token))
        if done is None:
            return _unknown_link()
        return page(200, "Unsubscribed", f"{done[0]} has left {done[1]}.")

    async def index(request: Request, match: re.Match[str]) -> Response:
        found = await db.read(lambda s: _archive_index(s, match["name"]))
        if found is None:
            return page(404, "No public archive", "This list has no public archive.")
        return Response(200, found.encode())

    async def post(request: Request, match: re.Match[str]) -> Response:
        found = await db.read(lambda s: _archived_post(s, match["name"], int(match["id"])))
        if found is None:
            return page(404, "Not found", "There is no such post in a public archive.")
        return Response(200, found.encode())

    pattern = re.compile(r"/unsubscribe/(?P<token>[0-9]{1,18}-[a-z2-7]{26})")
    return (Page(("GET", "HEAD"), pattern, show), Page(("POST",), pattern, unsubscribe),
            Page(("GET", "HEAD"), re.compile(r"/lists/(?P<name>[a-z0-9._-]{1,64})/"), index),
            Page(("GET", "HEAD"), re.compile(r"/lists/(?P<name>[a-z0-9._-]{1,64})/"
                                              r"(?P<id>[0-9]{1,12})"), post))


def _unknown_link() -> Response:
    return page(404, "Unknown link", "This unsubscribe link is not valid, or you have "
                "already left the list.")


def public(mailing_list: MailingList | None) -> bool:
    return mailing_list is not None and mailing_list.public_archive


def _archive_index(session: Session, name: str) -> str | None:
    mailing_list = session.scalar(select(MailingList).where(MailingList.name == name))
    if not public(mailing_list):
        return None
    assert mailing_list is not None
    rows = session.execute(select(Archived.id, Archived.archived_at, Archived.subject)
                           .where(Archived.list_id == mailing_list.id)
                           .order_by(Archived.id.desc()).limit(500))
    items = "".join(f"<li>{time.strftime('%Y-%m-%d', time.gmtime(at))} "
                    f"<a href='{ident}'>{escape(subject or '(no subject)')}</a></li>"
                    for ident, at, subject in rows)
    title = escape(mailing_list.display_name)
    return document(title, f"<h1>{title}</h1><ul>{items}</ul>")


def _archived_post(session: Session, name: str, ident: int) -> str | None:
    mailing_list = session.scalar(select(MailingList).where(MailingList.name == name))
    archived = session.get(Archived, ident)
    if not public(mailing_list) or archived is None or mailing_list is None \
            or archived.list_id != mailing_list.id:
        return None
    message = parse(archived.data)
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else "(no plain-text part)"
    sender = ", ".join(name or "(no name)" for name, _ in
                       named_addresses(message))
    subject = escape(archived.subject)
    return document(subject, (
        f"<h1>{subject}</h1><p>{escape(sender)}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(archived.archived_at))}</p>"
        f"<pre>{escape(str(text))}</pre>"))


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
