"""The coordinator's organisation page: member parties, delegates and their seats, and the
bodies' names in each language.

Every form is the call `alliance party|delegate|body ...` makes (organisation.add_party,
rename_party, remove_party, set_delegate, name_body; coordinating.give_seat and take_seat,
which invite or cancel as the command line does), with the same refusals shown on the
page in one line, the values entered kept; each change is logged with who made it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from lists.models import LANGUAGES
from mailer.dashboard import frame
from mailer.web import Page, Request, Response, render_page
from mailer.webauth import Access, SiteUser, Visitor
from meetings import coordinating, organisation
from meetings.desk import (
    Done,
    Failed,
    change,
    form_values,
    notice,
    page_language,
    problem_of,
    staff,
    values,
)
from meetings.meeting_site import MeetingSite
from meetings.models import REGIONS, Body, Delegate, Party, Seat

PAGE = "/dashboard/organisation"
# Each form: its fields, as the page first shows them.
FORMS: dict[str, dict[str, str]] = {
    "party-add": {"name": "", "country": "", "region": "europe"},
    "party-rename": {"old": "", "new": ""},
    "party-remove": {"name": ""},
    "seat": {"address": "", "name": "", "party": "", "body": "board", "language": "en",
             "substitute": ""},
    "unseat": {"body": "", "address": ""},
    "delegate": {"address": "", "name": "", "language": ""},
    "body-name": {"body": "board", "language": "fr", "name": ""},
}


SEATS_PAGE = 100     # seats on one page of a body's table


@dataclass(frozen=True)
class SeatView:
    """Which seats the page shows: one body's, those matching a search, one page."""

    body: str = ""
    query: str = ""
    page: int = 1


def seat_rows(session: Session, body: Body, view: SeatView) -> tuple[list[dict[str, Any]], int]:
    """One page of a body's seats matching the search (address, name or party, any
    case), by party then address; and how many match in all."""
    query = (select(Seat, Delegate, Party).join(Delegate, Seat.delegate_id == Delegate.id)
             .join(Party, Seat.party_id == Party.id).where(Seat.body_id == body.id))
    if view.query.strip():
        wanted = f"%{view.query.strip().lower()}%"
        query = query.where(or_(func.lower(Delegate.address).like(wanted),
                                func.lower(Delegate.name).like(wanted),
                                func.lower(Party.name).like(wanted)))
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    found = session.execute(query.order_by(Party.name_key, Delegate.address)
                            .limit(SEATS_PAGE).offset((view.page - 1) * SEATS_PAGE))
    return [{"address": d.address, "name": d.name, "party": p.name, "role": s.role,
             "language": d.language} for s, d, p in found], total


def organisation_of(session: Session, language: str, failed: Failed | None,
                    view: SeatView = SeatView()) -> dict[str, Any]:
    """The parties, one body's seats (a page of them), the bodies' names, and the
    forms' values."""
    bodies = organisation.bodies(session)
    chosen = next((b for b in bodies if b.slug == view.body), bodies[0])
    held = {party_id: count for party_id, count in session.execute(
        select(Seat.party_id, func.count()).group_by(Seat.party_id))}
    seats, total = seat_rows(session, chosen, view)
    names = {b.slug: (b.names or {}).get(language) or b.name for b in bodies}
    return {
        "parties": [{"name": p.name, "country": p.country, "region": p.region,
                     "seats": held.get(p.id, 0)} for p in organisation.parties(session)],
        "bodies": [{"slug": b.slug, "name": b.name, "names": dict(sorted(
            (b.names or {}).items()))} for b in bodies],
        "seats": {"body": chosen.slug, "name": names[chosen.slug], "rows": seats,
                  "count": total, "query": view.query, "page": view.page,
                  "pages": max(1, -(-total // SEATS_PAGE))},
        "names_of_bodies": names, "regions": REGIONS, "languages": LANGUAGES,
        "problem": problem_of(failed),
        "forms": {name: form_values(fields, name, failed) for name, fields in FORMS.items()}}


def seat_view(request: Request) -> SeatView:
    """The seats a request asks to see (`?body=SLUG&q=WORDS&page=N`)."""
    given = {key: (values or [""])[0] for key, values in request.query.items()}
    page = given.get("page", "1")
    return SeatView(given.get("body", "")[:40], given.get("q", "")[:100],
                    int(page) if page.isdigit() and 0 < len(page) < 6 else 1)


def organisation_change(site: MeetingSite, form: str,
                        entered: dict[str, str]) -> Callable[[Session], Done]:
    """The change a form of the page asks for, as the command line makes it."""
    given = {**FORMS[form], **{k: v for k, v in entered.items() if k in FORMS[form]}}

    def make(session: Session) -> Done:
        if form == "party-add":
            made = organisation.add_party(session, given["name"], country=given["country"],
                                          region=given["region"])
            return Done("party_added", detail={"party": made.name})
        if form == "party-rename":
            renamed = organisation.rename_party(session, given["old"], given["new"])
            return Done("party_renamed", detail={"party": given["old"],
                                                 "new_name": renamed.name})
        if form == "party-remove":
            return Done("party_removed", detail={
                "party": organisation.remove_party(session, given["name"])})
        if form == "seat":
            seated = coordinating.give_seat(
                session, site, given["body"], given["party"], address=given["address"],
                name=given["name"], language=given["language"],
                substitute=given["substitute"] == "yes")
            return Done("seated", seated.invited, f"{PAGE}?body={seated.body}", {
                "body": seated.body, "party": given["party"], "seat": seated.seat.role})
        if form == "unseat":
            taken = coordinating.take_seat(session, site, given["body"], given["address"])
            return Done("unseated", taken.cancelled, f"{PAGE}?body={taken.body}",
                        {"body": taken.body})
        if form == "delegate":
            found = organisation.set_delegate(session, given["address"], name=given["name"],
                                              language=given["language"])
            return Done("delegate_changed", detail={"delegate": found.address})
        said = organisation.name_body(session, given["body"], given["language"],
                                      given["name"])
        return Done("body_named", detail={"body": given["body"],
                                          "body_language": given["language"], "said": said})
    return make


def pages(site: MeetingSite, access: Access) -> tuple[Page, ...]:
    """The organisation page of the dashboard, for the site admin and coordinators."""
    env = site.templates

    async def show(request: Request, visitor: Visitor, person: SiteUser,
                   failed: Failed | None = None) -> Response:
        language = page_language(request, person)
        view = seat_view(request)
        shown = await access.store.read(lambda s: organisation_of(s, language, failed, view))
        return render_page(env, "staff_organisation", language, 400 if failed else 200,
                           **frame(visitor, person), notice=notice(request), **shown)

    async def look(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        return await show(request, visitor, person)

    async def act(request: Request, match: re.Match[str], visitor: Visitor,
                  person: SiteUser) -> Response:
        form, entered = match["form"], values(request)

        async def again(failed: Failed) -> Response:
            return await show(request, visitor, person, failed)

        address = entered.get("address", "")
        return await change(access.store, person, f"organisation.{form}", PAGE,
                            organisation_change(site, form, entered), again, form, entered,
                            **({"delegate": address} if address else {}))

    return (access.page(("GET",), PAGE, look, staff),
            access.page(("POST",), PAGE + f"/(?P<form>{'|'.join(FORMS)})", act, staff))
