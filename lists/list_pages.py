"""The list side's web pages: RFC 8058 one-click unsubscribe, and the public archive.

`GET /unsubscribe/TOKEN` shows what would happen and a button; it never unsubscribes
(link scanners and previews fetch URLs). `POST` to the same URL unsubscribes: that is what
a mail client sends for `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and what the
button sends. The token is the member's own (HMAC-signed id), so it unsubscribes only them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import subscriptions
from lists.list_site import ListSite
from lists.models import Archived, MailingList, Member
from mailer import dates
from mailer.addresses import named_addresses
from mailer.inbound import parse
from mailer.templates import language_of
from mailer.web import Page, Request, Response, Store, render_error, render_page


@dataclass(frozen=True)
class Leaver:
    """The member an unsubscribe link names, as its pages show them."""

    address: str
    list_name: str
    language: str
    list_language: str

    @classmethod
    def of(cls, member: Member, mailing_list: MailingList) -> Leaver:
        return cls(member.address, mailing_list.display_name, member.language,
                   mailing_list.language)

    def page_language(self, request: Request) -> str:
        """The member's own language, else the visitor's, else the list's."""
        return language_of(self.language, request.language(), self.list_language)


def one_click(request: Request) -> bool:
    """Whether a POST says `List-Unsubscribe=One-Click` (RFC 8058 §3.1), in either form
    encoding a mail client may send: multipart/form-data (RFC 7578, which §3.1 prefers)
    or application/x-www-form-urlencoded (what the page's button sends)."""
    kind = request.headers.get("content-type", "")
    if kind.split(";")[0].strip().lower() != "multipart/form-data":
        return "One-Click" in request.form().get("List-Unsubscribe", [])
    form = BytesParser(policy=default).parsebytes(
        b"Content-Type: " + kind.encode("latin-1", "replace") + b"\r\n\r\n" + request.body)
    if not form.is_multipart():
        return False
    return any(part.get_param("name", header="content-disposition") == "List-Unsubscribe"
               and str(part.get_content()).strip() == "One-Click"
               for part in form.iter_parts())


def _member(session: Session, site: ListSite, token: str) -> tuple[Member, MailingList] | None:
    ident = site.unsubscribe_tokens.verify(token)
    member = session.get(Member, ident) if ident is not None else None
    if member is None or member.role != "member":
        return None
    mailing_list = session.get(MailingList, member.list_id)
    assert mailing_list is not None
    return member, mailing_list


def pages(site: ListSite, db: Store) -> tuple[Page, ...]:
    env = site.templates

    async def show(request: Request, match: re.Match[str]) -> Response:
        token = match["token"]
        found = await db.read(lambda s: _describe(s, site, token))
        if found is None:
            return render_page(env, "unknown_link", request.language(), 404,
                               link="unsubscribe")
        return render_page(env, "unsubscribe", found.page_language(request),
                           address=found.address, list_name=found.list_name)

    async def unsubscribe(request: Request, match: re.Match[str]) -> Response:
        if not one_click(request):
            # Nothing changes without RFC 8058's body: the page with its button, as a GET.
            shown = await show(request, match)
            return shown if shown.status == 404 else replace(shown, status=400)
        token = match["token"]
        done = await db.write(lambda s: _leave(s, site, token))
        if done is None:
            return render_page(env, "unknown_link", request.language(), 404,
                               link="unsubscribe")
        return render_page(env, "unsubscribed", done.page_language(request),
                           address=done.address, list_name=done.list_name)

    async def index(request: Request, match: re.Match[str]) -> Response:
        found = await db.read(lambda s: _archive_index(s, match["name"]))
        if found is None:
            return render_error(env, "no_archive", request.language())
        list_language, context = found
        language = language_of(request.language(), list_language)
        posts = [{**post, "date": dates.short_day(post["at"], language)}
                 for post in context["posts"]]
        return render_page(env, "archive_index", language, **{**context, "posts": posts})

    async def post(request: Request, match: re.Match[str]) -> Response:
        found = await db.read(lambda s: _archived_post(s, match["name"], int(match["id"])))
        if found is None:
            return render_error(env, "no_post", request.language())
        list_language, context = found
        language = language_of(request.language(), list_language)
        return render_page(env, "archived_post", language,
                           **context, date=dates.stamp(context.pop("at"), language))

    pattern = re.compile(r"/unsubscribe/(?P<token>[0-9]{1,18}-[a-z2-7]{26})")
    return (Page(("GET", "HEAD"), pattern, show), Page(("POST",), pattern, unsubscribe),
            Page(("GET", "HEAD"), re.compile(r"/lists/(?P<name>[a-z0-9._-]{1,64})/"), index),
            Page(("GET", "HEAD"), re.compile(r"/lists/(?P<name>[a-z0-9._-]{1,64})/"
                                              r"(?P<id>[0-9]{1,12})"), post))


def public(mailing_list: MailingList | None) -> bool:
    return mailing_list is not None and mailing_list.public_archive


def _archive_index(session: Session, name: str) -> tuple[str, dict[str, Any]] | None:
    """(the list's language, the index page's context) of a public archive, else None;
    the dates are written once the page's language is known."""
    mailing_list = session.scalar(select(MailingList).where(MailingList.name == name))
    if mailing_list is None or not public(mailing_list):
        return None
    rows = session.execute(select(Archived.id, Archived.archived_at, Archived.subject)
                           .where(Archived.list_id == mailing_list.id)
                           .order_by(Archived.id.desc()).limit(500))
    posts = [{"id": ident, "at": datetime.fromtimestamp(at, UTC), "subject": subject or ""}
             for ident, at, subject in rows]
    return mailing_list.language, {"list_name": mailing_list.display_name, "posts": posts}


def _archived_post(session: Session, name: str,
                   ident: int) -> tuple[str, dict[str, Any]] | None:
    """(the list's language, the post page's context) of a post in a public archive."""
    mailing_list = session.scalar(select(MailingList).where(MailingList.name == name))
    archived = session.get(Archived, ident)
    if not public(mailing_list) or archived is None or mailing_list is None \
            or archived.list_id != mailing_list.id:
        return None
    message = parse(archived.data)
    body = message.get_body(preferencelist=("plain",))
    return mailing_list.language, {
        "list_name": mailing_list.display_name, "subject": archived.subject,
        "senders": [name for name, _ in named_addresses(message)],
        "at": archived.archived_at,
        "text": str(body.get_content()) if body is not None else None}


def _describe(session: Session, site: ListSite, token: str) -> Leaver | None:
    found = _member(session, site, token)
    return None if found is None else Leaver.of(*found)


def _leave(session: Session, site: ListSite, token: str) -> Leaver | None:
    found = _member(session, site, token)
    if found is None:
        return None
    member, mailing_list = found
    leaver = Leaver.of(member, mailing_list)
    subscriptions.leave(session, site, mailing_list, member.address)
    return leaver
