"""The list side's web pages: RFC 8058 one-click unsubscribe (the archive: lists/archive_pages.py).

`GET /unsubscribe/TOKEN` shows what would happen and a button; it never unsubscribes
(link scanners and previews fetch URLs). `POST` to the same URL unsubscribes: that is what
a mail client sends for `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and what the
button sends. The token is the member's own (HMAC-signed id), so it unsubscribes only them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from email.parser import BytesParser
from email.policy import default

from sqlalchemy.orm import Session

from lists import subscriptions
from lists.list_site import ListSite
from lists.models import MailingList, Member
from mailer.templates import language_of
from mailer.web import Page, Request, Response, Store, render_page


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

    pattern = re.compile(r"/unsubscribe/(?P<token>[0-9]{1,18}-[a-z2-7]{26})")
    return (Page(("GET", "HEAD"), pattern, show), Page(("POST",), pattern, unsubscribe))


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
