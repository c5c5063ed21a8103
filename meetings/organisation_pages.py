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
from typing import Any

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
from meetings.models import REGIONS

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


def organisation_of(session: Session, language: str, failed: Failed | None) -> dict[str, Any]:
    """The parties, each body's seats, the bodies' names, and the forms' values."""
    bodies = organisation.bodies(session)
    seats = organisation.seats(session)
    held: dict[int, int] = {}
    for *_, party in seats:
        held[party.id] = held.get(party.id, 0) + 1
    return {
        "parties": [{"name": p.name, "country": p.country, "region": p.region,
                     "seats": held.get(p.id, 0)} for p in organisation.parties(session)],
        "bodies": [{"slug": b.slug, "name": b.name, "here": (b.names or {}).get(language, ""),
                    "names": dict(sorted((b.names or {}).items())), "seats": [
                        {"address": d.address, "name": d.name, "party": p.name,
                         "role": s.role, "language": d.language}
                        for s, d, p in seats if s.body_id == b.id]} for b in bodies],
        "names_of_bodies": {b.slug: (b.names or {}).get(language) or b.name for b in bodies},
        "regions": REGIONS, "languages": LANGUAGES, "problem": problem_of(failed),
        "forms": {name: form_values(fields, name, failed) for name, fields in FORMS.items()}}


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
            return Done("seated", seated.invited, detail={
                "body": seated.body, "party": given["party"], "seat": seated.seat.role})
        if form == "unseat":
            taken = coordinating.take_seat(session, site, given["body"], given["address"])
            return Done("unseated", taken.cancelled, detail={"body": taken.body})
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
        shown = await access.store.read(lambda s: organisation_of(s, language, failed))
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
