"""The dashboard's list pages: the lists a visitor may manage, and one list's members
(searched, a page at a time), its settings, members added and removed.

Who may do what is the visitor's roles now: the site admin and coordinators see every list,
owners and moderators theirs; members are added and removed by owners, coordinators and
the admin; settings are changed by owners and the admin. Every change is the call
`alliance list add|remove|set` makes (service.add_members, service.remove_member,
settings.change) in one transaction, logged with who made it; a refusal is shown on the
page in one line and nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from lists import service, settings
from lists.list_site import ListSite
from lists.models import Held, MailingList, Member
from lists.service import ListError
from mailer import dashboard
from mailer.templates import language_of
from mailer.web import Page, Request, Response, render_page
from mailer.webauth import Access, SiteUser, Visitor, audit

BASE = "/dashboard/lists"
NAME = r"(?P<name>[a-z0-9][a-z0-9._-]{0,63})"
PAGE_SIZE = 50          # members shown a page
MAX_ADDED = 5000        # addresses one form may add (more: `alliance list import`)
MAX_QUERY = 100         # characters of a search


def sees(person: SiteUser, name: str) -> bool:
    """Whether the person may see the list's pages: staff, or its owner or moderator."""
    return bool(dashboard.STAFF & person.roles) or name in person.lists("owner", "moderator")


def manages(person: SiteUser, name: str) -> bool:
    """Whether the person may add and remove members: the list's owner, or staff."""
    return bool(dashboard.STAFF & person.roles) or name in person.lists("owner")


def sets(person: SiteUser, name: str) -> bool:
    """Whether the person may change the list's settings: its owner, or the site admin."""
    return person.has("admin") or name in person.lists("owner")


def _counts(session: Session, column: Any, where: Any, ids: list[int]) -> dict[int, int]:
    return {int(key): int(count) for key, count in session.execute(
        select(column, func.count()).where(column.in_(ids), where).group_by(column)).all()}


def overview(session: Session, person: SiteUser) -> list[dict[str, Any]]:
    """The lists the person may manage, with their member and held-post counts."""
    query = select(MailingList).order_by(MailingList.name)
    if not dashboard.STAFF & person.roles:
        query = query.where(MailingList.name.in_(person.lists("owner", "moderator")))
    found = list(session.scalars(query))
    ids = [m.id for m in found]
    members = _counts(session, Member.list_id, Member.role == "member", ids)
    held = _counts(session, Held.list_id, Held.state == "held", ids)
    return [{"name": m.name, "display_name": m.display_name, "members": members.get(m.id, 0),
             "held": held.get(m.id, 0)} for m in found]


def _like(text: str) -> str:
    """A LIKE pattern finding `text` anywhere, its wildcards taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(session: Session, list_id: int, query: str, after: str,
           limit: int = PAGE_SIZE) -> tuple[list[Member], str]:
    """Members whose address or name holds `query`, in address order after `after`
    (keyset: the list's (list_id, address, role) index is walked, never the whole list
    loaded); returns the page and the address to continue after ("" at the end)."""
    where = [Member.list_id == list_id, Member.role == "member", Member.address > after]
    if query:
        pattern = _like(query)
        where.append(or_(Member.address.like(pattern, escape="\\"),
                         func.lower(Member.display_name).like(pattern, escape="\\")))
    found = list(session.scalars(select(Member).where(*where)
                                 .order_by(Member.address).limit(limit + 1)))
    more = len(found) > limit
    return found[:limit], found[limit - 1].address if more else ""


@dataclass(frozen=True)
class FormRefused:
    """A change refused: which form, the problem in one line, the values entered."""

    form: str
    text: str
    entered: dict[str, str]


def list_page(session: Session, name: str, query: str, after: str,
              person: SiteUser) -> dict[str, Any] | None:
    """What a list's page shows, or None if there is no such list."""
    try:
        mailing_list = service.find(session, name)
    except ListError:
        return None
    members, following = search(session, mailing_list.id, query, after)
    counts = counts_of(session, mailing_list)
    return {"list": {"name": mailing_list.name, "display_name": mailing_list.display_name,
                     **counts},
            "members": [{"address": m.address, "name": m.display_name,
                         "delivery": m.delivery, "enabled": m.enabled} for m in members],
            "query": query, "after": after, "following": following,
            "settings": [{"key": s.key, "value": _shown(getattr(mailing_list, s.key)),
                          "choices": ("yes", "no") if s.kind is bool else s.choices,
                          "help": s.help} for s in settings.SETTINGS],
            "manages": manages(person, name), "sets": sets(person, name)}


def counts_of(session: Session, mailing_list: MailingList) -> dict[str, int]:
    """The list's member and held-post counts."""
    members = session.scalar(select(func.count()).select_from(Member).where(
        Member.list_id == mailing_list.id, Member.role == "member")) or 0
    held = session.scalar(select(func.count()).select_from(Held).where(
        Held.list_id == mailing_list.id, Held.state == "held")) or 0
    return {"members": int(members), "held": int(held)}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def addresses_in(text: str) -> list[str]:
    """The addresses of the form's text area: one a line, or separated by commas or spaces.

    >>> addresses_in("ana@x.test, bo@x.test\\n  kofi@x.test\\n\\n")
    ['ana@x.test', 'bo@x.test', 'kofi@x.test']
    """
    found = [word for word in re.split(r"[\s,;]+", text) if word]
    if not found:
        raise ListError("give at least one address")
    if len(found) > MAX_ADDED:
        raise ListError(f"at most {MAX_ADDED} addresses at once; "
                        "for more, use `alliance list import`")
    return found


Change = Callable[[Session], tuple[str, int, dict[str, Any]]]


def list_change(site: ListSite, name: str, form: str, entered: dict[str, str]) -> Change:
    """The change a form of the page asks for, as the command line makes it: the notice
    it ends with, a count, and what the audit line adds."""

    def make(session: Session) -> tuple[str, int, dict[str, Any]]:
        mailing_list = service.find(session, name)
        if form == "add":
            added, existing = service.add_members(
                session, mailing_list, addresses_in(entered.get("addresses", "")),
                own_domain=site.domain)
            return "added", len(added), {"added": len(added), "already": len(existing)}
        if form == "remove":
            gone = service.remove_member(session, mailing_list, entered.get("address", ""))
            return "removed", 1, {"member": gone.address}
        key = entered.get("key", "")
        try:
            value = settings.change(mailing_list, key, entered.get("value", ""))
        except settings.SettingError as error:
            raise ListError(str(error)) from None
        return "set", 0, {"key": key, "value": value}

    return make


FORMS = {"add": manages, "remove": manages, "settings": sets}


def pages(site: ListSite, access: Access) -> tuple[Page, ...]:
    """/dashboard/lists and /dashboard/lists/NAME, with the forms of the latter."""
    env, store = site.templates, access.store

    async def index(request: Request, match: re.Match[str], visitor: Visitor,
                    person: SiteUser) -> Response:
        found = await store.read(lambda s: overview(s, person))
        return render_page(env, "staff_lists", language_of(dashboard.language(request, person)),
                           **dashboard.frame(visitor, person), lists=found,
                           notice=dashboard.notice(request))

    async def show(request: Request, visitor: Visitor, person: SiteUser, name: str,
                   problem: FormRefused | None = None) -> Response:
        query = (request.query.get("q") or [""])[0].strip()[:MAX_QUERY]
        after = (request.query.get("after") or [""])[0][:320]
        shown = await store.read(lambda s: list_page(s, name, query, after, person))
        language = language_of(dashboard.language(request, person))
        if shown is None:
            return render_page(env, "error", language, 404, problem="not_found")
        return render_page(env, "staff_list", language, 400 if problem else 200,
                           **dashboard.frame(visitor, person), **shown,
                           notice=dashboard.notice(request),
                           problem={"form": problem.form, "text": problem.text}
                           if problem else {"form": "", "text": ""},
                           entered=problem.entered if problem else {})

    async def look(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        return await show(request, visitor, person, match["name"])

    async def act(request: Request, match: re.Match[str], visitor: Visitor,
                  person: SiteUser) -> Response:
        name, form, entered = match["name"], match["form"], dashboard.fields(request)
        try:
            key, count, detail = await store.write(list_change(site, name, form, entered))
        except ListError as error:
            refused = FormRefused(form, str(error), entered)
            return await show(request, visitor, person, name, refused)
        audit(person, f"list.{form}", list=name, **detail)
        return dashboard.done(f"{BASE}/{name}", key, count)

    def allowed(rule: Callable[[SiteUser, str], bool]) -> Callable[[SiteUser, re.Match[str]],
                                                                    bool]:
        return lambda person, match: rule(person, match["name"])

    def allowed_form(person: SiteUser, match: re.Match[str]) -> bool:
        return FORMS[match["form"]](person, match["name"])

    return (access.page(("GET",), BASE + "/?", index),
            access.page(("GET",), f"{BASE}/{NAME}/?", look, allowed(sees)),
            access.page(("POST",), f"{BASE}/{NAME}/(?P<form>{'|'.join(FORMS)})", act,
                        allowed_form))
