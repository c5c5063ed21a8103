"""Members help themselves on the web: `/me`, reached by the mailed sign-in link.

A signed-in visitor sees each list they belong to and may switch how they get it (every
message, digests, nothing for a while) and its language, or leave; they may download all
the site keeps about their address (GDPR art. 15) and have it erased (art. 17). Each change
is the same call a mail command makes (`set digest`, `set language`, `unsubscribe`:
lists.subscriptions), each is logged with who made it, and every form carries the session's
CSRF token (mailer.webauth). What the meetings side keeps comes in through `Personal`,
which the composition root gives, so that this package names no other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import personal, subscriptions
from lists.list_site import ListSite
from lists.models import DELIVERY_MODES, LANGUAGES, MailingList, Member
from mailer.dashboard import language
from mailer.web import Page, Request, Response, Store, render_page
from mailer.webauth import Access, SiteUser, Visitor, audit, redirect

# Notices the page shows after a change (`?done=`), by key.
DONE = ("saved", "left", "unchanged")


@dataclass(frozen=True)
class Personal:
    """What the other side of the site keeps about an address, and its erasure."""

    export: Callable[[Session, str], dict[str, Any]]
    erase: Callable[[Session, str], list[str]]


def _memberships(session: Session, address: str) -> list[dict[str, Any]]:
    rows = session.execute(select(MailingList, Member)
                           .join(Member, Member.list_id == MailingList.id)
                           .where(func.lower(Member.address) == address.lower(),
                                  Member.role == "member")
                           .order_by(MailingList.display_name)).all()
    return [{"list": m.name, "name": m.display_name or m.name, "delivery": member.delivery,
             "language": member.language or m.language, "enabled": member.enabled}
            for m, member in rows]


def _own(session: Session, address: str, name: str) -> tuple[MailingList, Member] | None:
    row = session.execute(select(MailingList, Member)
                          .join(Member, Member.list_id == MailingList.id)
                          .where(MailingList.name == name, Member.role == "member",
                                 func.lower(Member.address) == address.lower())).first()
    return None if row is None else (row[0], row[1])


def _change(session: Session, site: ListSite, address: str, name: str,
            form: dict[str, list[str]]) -> str:
    """Set the delivery mode and language of one membership, as `set` by mail does."""
    found = _own(session, address, name)
    if found is None:
        return "unchanged"
    mailing_list, member = found
    delivery = (form.get("delivery") or [""])[0]
    language = (form.get("language") or [""])[0]
    changed = False
    if delivery in DELIVERY_MODES and delivery != member.delivery:
        option, value = (("digest", member.digest_format) if delivery == "digest"
                         else (delivery, ""))
        subscriptions.set_option(session, site, mailing_list, member, option, value)
        changed = True
    if language in LANGUAGES and language != member.language:
        subscriptions.set_option(session, site, mailing_list, member, "language", language)
        changed = True
    return "saved" if changed else "unchanged"


def _leave(session: Session, site: ListSite, address: str, name: str) -> str:
    found = _own(session, address, name)
    if found is None:
        return "unchanged"
    subscriptions.leave(session, site, found[0], found[1].address)
    return "left"


def pages(site: ListSite, store: Store, access: Access, other: Personal) -> tuple[Page, ...]:
    env = site.templates

    async def me(request: Request, match: re.Match[str], visitor: Visitor,
                 user: SiteUser) -> Response:
        lists = await store.read(lambda s: _memberships(s, visitor.address))
        done = (request.query.get("done") or [""])[0]
        return render_page(env, "me", language(request, user), address=visitor.address,
                           csrf=visitor.csrf, lists=lists, staff=user.staff,
                           done=done if done in DONE else "", languages=list(LANGUAGES),
                           mode_order=list(DELIVERY_MODES))

    async def options(request: Request, match: re.Match[str], visitor: Visitor,
                      user: SiteUser) -> Response:
        name, form = match["name"], request.form()
        outcome = await store.write(lambda s: _change(s, site, visitor.address, name, form))
        if outcome == "saved":
            audit(visitor, "set list options", list=name,
                  delivery=(form.get("delivery") or [""])[0],
                  language=(form.get("language") or [""])[0])
        return redirect(f"/me?done={outcome}")

    async def leave(request: Request, match: re.Match[str], visitor: Visitor,
                    user: SiteUser) -> Response:
        name = match["name"]
        outcome = await store.write(lambda s: _leave(s, site, visitor.address, name))
        if outcome == "left":
            audit(visitor, "left list", list=name)
        return redirect(f"/me?done={outcome}")

    async def download(request: Request, match: re.Match[str], visitor: Visitor,
                       user: SiteUser) -> Response:
        def read(session: Session) -> dict[str, Any]:
            return {"address": visitor.address,
                    "lists": personal.export(session, site, visitor.address),
                    "meetings": other.export(session, visitor.address)}

        data = await store.read(read)
        audit(visitor, "downloaded own data")
        filename = f"alliance-data-{quote(visitor.address, safe='@.')}.json"
        return Response(200, json.dumps(data, indent=2, ensure_ascii=False).encode(),
                        "application/json; charset=utf-8",
                        (("content-disposition", f'attachment; filename="{filename}"'),))

    async def erase(request: Request, match: re.Match[str], visitor: Visitor,
                    user: SiteUser) -> Response:
        if request.method == "GET":
            return render_page(env, "me_erase", language(request, user),
                               address=visitor.address, csrf=visitor.csrf)

        def wipe(session: Session) -> list[str]:
            return (personal.erase(session, site, visitor.address)
                    + other.erase(session, visitor.address))

        done = await store.write(wipe)
        audit(visitor, "erased own data", done=",".join(done))
        seated = [item.split(":", 1)[1] for item in done if item.startswith("seated:")]
        page = render_page(env, "me_erased", language(request, user),
                           address=visitor.address, seated=seated)
        # Signed out with it: the address is no one to the site any more.
        return replace(page, headers=(*page.headers, ("set-cookie", access.auth.clear())))

    def anyone(user: SiteUser, match: re.Match[str]) -> bool:
        return True        # anyone the site knows: a member, a delegate, staff

    name = r"(?P<name>[a-z0-9][a-z0-9._-]{0,63})"
    return (access.page(("GET",), "/me", me, anyone),
            access.page(("POST",), f"/me/lists/{name}", options, anyone),
            access.page(("POST",), f"/me/lists/{name}/leave", leave, anyone),
            access.page(("GET",), "/me/data.json", download, anyone),
            access.page(("GET", "POST"), "/me/erase", erase, anyone))
