"""Confirmation pages: joining or leaving a list by the link in the confirmation mail.

The mail that asks to confirm a subscription or an unsubscription (`subscriptions._ask`)
carries `/confirm/LIST/TOKEN` beside its reply address. `GET` shows what would happen and
one button; it changes nothing, since link scanners and previews fetch every URL in a mail.
The button POSTs, which confirms exactly as a reply to the mail does
(`subscriptions.confirm`). The token is the pending action's own (`<id>-<130 random
bits>`), mailed to the address concerned only; owners' approvals and bounce re-enables
keep their mail replies and open no page here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import subscriptions
from lists.list_site import ListSite
from lists.models import MailingList, Pending
from mailer.templates import language_of
from mailer.web import Page, Request, Response, Store, render_page

ACTIONS = ("subscribe", "unsubscribe")
PATH = re.compile(r"/confirm/(?P<name>[a-z0-9._-]{1,64})/(?P<token>[0-9]{1,18}-[a-z2-7]{26})")


@dataclass(frozen=True)
class Confirming:
    """A pending action as its pages show it (and, once confirmed, what it did)."""

    action: str
    address: str
    list_name: str
    language: str           # the one the request was made in ("" when unknown)
    list_language: str
    outcome: str = ""

    @classmethod
    def of(cls, pending: Pending, mailing_list: MailingList, outcome: str = "") -> Confirming:
        return cls(pending.action, pending.address, mailing_list.display_name,
                   pending.language, mailing_list.language, outcome)

    def page_language(self, request: Request) -> str:
        """The request's own language, else the visitor's, else the list's."""
        return language_of(self.language, request.language(), self.list_language)


def pages(site: ListSite, db: Store) -> tuple[Page, ...]:
    """GET shows the action and one button; POST confirms it."""
    env = site.templates

    def unknown(request: Request) -> Response:
        return render_page(env, "unknown_link", request.language(), 404, link="confirm")

    async def show(request: Request, match: re.Match[str]) -> Response:
        found = await db.read(lambda s: _describe(s, site, match["name"], match["token"]))
        if found is None:
            return unknown(request)
        return render_page(env, "confirm", found.page_language(request), action=found.action,
                           address=found.address, list_name=found.list_name)

    async def confirm(request: Request, match: re.Match[str]) -> Response:
        done = await db.write(lambda s: _confirm(s, site, match["name"], match["token"]))
        if done is None:
            return unknown(request)
        return render_page(env, "confirmed", done.page_language(request), outcome=done.outcome,
                           address=done.address, list_name=done.list_name)

    return (Page(("GET", "HEAD"), PATH, show), Page(("POST",), PATH, confirm))


def _pending(session: Session, site: ListSite, name: str,
             token: str) -> tuple[Pending, MailingList] | None:
    """The live subscribe or unsubscribe the token names, and its list; read only (an
    expired one is closed by the scheduler's job, not by a visit)."""
    mailing_list = session.scalar(select(MailingList).where(MailingList.name == name))
    if mailing_list is None:
        return None
    pending = subscriptions.pending_of(session, mailing_list, token)
    if pending is None or pending.state != "pending" or pending.action not in ACTIONS \
            or pending.expires_at < site.clock():
        return None
    return pending, mailing_list


def _describe(session: Session, site: ListSite, name: str, token: str) -> Confirming | None:
    found = _pending(session, site, name, token)
    if found is None:
        return None
    return Confirming.of(*found)


def _confirm(session: Session, site: ListSite, name: str, token: str) -> Confirming | None:
    found = _pending(session, site, name, token)
    if found is None:
        return None
    pending, mailing_list = found
    outcome = subscriptions.confirm(session, site, mailing_list, pending)
    return Confirming.of(pending, mailing_list, outcome.code)
