"""The coordinator's meeting pages: the meetings and the year's cadence, a new meeting,
one meeting (change it, send, reschedule, cancel, delete), the preview of its invitations
and its attendance.

Every change is the call `alliance meeting ...` makes (schedule.create, invitations.invite,
invitations.update, coordinating.reschedule, coordinating.cancel, invitations.delete,
invitations.answer_by_hand), in one transaction, logged with who made it (desk.change).
The preview is `meeting invite --dry-run`'s: every invitation written in full, then rolled
back. Times are shown in words in the page's language, in the meeting's zone and in UTC.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer import dates
from mailer.dashboard import frame
from mailer.web import Page, Request, Response, render_page
from mailer.webauth import Access, SiteUser, Visitor
from meetings import (
    cadence,
    coordinating,
    invitations,
    letters,
    organisation,
    reports,
    schedule,
)
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
from meetings.models import BY_HAND, Invitation, Meeting, Party

# The zones offered first in the form; any other IANA place name may be typed instead.
COMMON_ZONES = ("UTC", "Europe/London", "Europe/Brussels", "Europe/Paris", "Europe/Berlin",
                "Europe/Stockholm", "Europe/Athens", "Europe/Istanbul", "Africa/Dakar",
                "Africa/Lagos", "Africa/Cairo", "Africa/Nairobi", "Africa/Johannesburg",
                "Asia/Beirut", "Asia/Jerusalem", "Asia/Amman", "Asia/Tehran", "Asia/Kolkata",
                "Asia/Kathmandu", "Asia/Manila", "Asia/Tokyo", "America/Mexico_City",
                "America/Bogota", "America/Santiago", "America/Sao_Paulo",
                "America/Buenos_Aires", "America/New_York", "America/Toronto")
MEETING = r"/dashboard/meetings/(?P<id>[0-9]{1,9})"
ACTIONS = ("update", "reschedule", "invite", "cancel", "delete")
Handler = Callable[[Request, re.Match[str], Visitor, SiteUser], Awaitable[Response]]


def _words(stamp: float | None, language: str) -> str:
    return dates.stamp(stamp, language) if stamp is not None else ""


def _local(stamp: float | None, tz: str) -> str:
    """A moment as the wall time of a zone, as a form's datetime-local field holds it."""
    if stamp is None:
        return ""
    return datetime.fromtimestamp(stamp, ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M")


def _instant(iso: str) -> float | None:
    """An ISO 8601 UTC time as reports.stamp writes it, as seconds (None for "")."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def _sent_counts(session: Session, ids: list[int]) -> dict[int, int]:
    """How many invitees of each meeting have had their invitation (sent or queued)."""
    return {meeting_id: count for meeting_id, count in session.execute(
        select(Invitation.meeting_id, func.count()).where(
            Invitation.meeting_id.in_(ids), Invitation.sent_sequence.is_not(None),
            Invitation.state != "removed").group_by(Invitation.meeting_id))}


def _row(session: Session, meeting: Meeting, sent: int, language: str) -> dict[str, Any]:
    view = letters.in_language(letters.meeting_view(session, meeting), language)
    return {"id": meeting.id, "title": meeting.title, "body": view["body"],
            "when": view["when"], "zone": meeting.tz, "location": meeting.location,
            "state": schedule.state(meeting, sent > 0), "sent": sent,
            "send_at": _words(meeting.send_at, language)}


def listing(session: Session, language: str, now: float) -> dict[str, Any]:
    """The meetings to come (soonest first) and past (latest first), and the cadence of
    the year (`alliance cadence`)."""
    found = list(session.scalars(select(Meeting).order_by(Meeting.starts_at)))
    sent = _sent_counts(session, [m.id for m in found])
    rows = [(m, _row(session, m, sent.get(m.id, 0), language)) for m in found]
    year = time.gmtime(now).tm_year
    names = {b.slug: (b.names or {}).get(language) or b.name
             for b in organisation.bodies(session)}
    return {"upcoming": [row for m, row in rows if m.ends_at > now],
            "past": [row for m, row in reversed(rows) if m.ends_at <= now],
            "year": year, "cadence": [
                {"body": names.get(s.body, s.name), "required": s.required, "held": s.held,
                 "planned": s.planned, "drafts": s.drafts, "short": s.short}
                for s in cadence.report(session, year, now)]}


def choices(session: Session, language: str) -> dict[str, Any]:
    """What the meeting form offers: the bodies (named in the language), the parties
    that may host, the common zones."""
    return {"bodies": {b.slug: (b.names or {}).get(language) or b.name
                       for b in organisation.bodies(session)},
            "parties": [p.name for p in organisation.parties(session)],
            "zones": COMMON_ZONES}


NEW = {"body": "", "title": "", "start": "", "end": "", "zone": "Europe/Brussels",
       "zone_other": "", "location": "", "host": "", "alongside": "", "agenda_url": "",
       "description": "", "send_at": ""}


def plan_of(entered: dict[str, str]) -> schedule.Plan:
    """The form's meeting, as `alliance meeting create` is given it; a zone typed in the
    free field wins over the list's."""
    given = {key: entered.get(key, "") for key in NEW}
    return schedule.Plan(body=given["body"], title=given["title"], start=given["start"],
                         end=given["end"], tz=given["zone_other"].strip() or given["zone"],
                         location=given["location"], host=given["host"],
                         alongside=given["alongside"], description=given["description"],
                         agenda_url=given["agenda_url"], send_at=given["send_at"])


def _meeting_view(session: Session, meeting: Meeting, language: str) -> dict[str, Any]:
    view = letters.in_language(letters.meeting_view(session, meeting), language)
    sent = invitations.was_sent(session, meeting)
    return {**view, "tz": meeting.tz, "state": schedule.state(meeting, sent), "sent": sent,
            "send_at": _words(meeting.send_at, language),
            "start_local": meeting.start_local[:16], "end_local": meeting.end_local[:16]}


def _people(session: Session, meeting: Meeting, sent: bool) -> dict[str, Any]:
    """How many are invited and how they answered (sent), or how many will be, by
    language (a draft): counts, so that a body of a thousand makes a short page."""
    if sent:
        counts = dict.fromkeys((p for _, p in reports.ANSWERS), 0)
        counts |= {partstat: count for partstat, count in session.execute(
            select(Invitation.partstat, func.count()).where(
                Invitation.meeting_id == meeting.id, Invitation.state != "removed")
            .group_by(Invitation.partstat))}
        return {"count": sum(counts.values()), "counts": counts}
    languages: dict[str, int] = {}
    for delegate in invitations.invitees(session, meeting):
        languages[delegate.language] = languages.get(delegate.language, 0) + 1
    return {"count": sum(languages.values()), "counts": dict(sorted(languages.items()))}


def one_meeting(session: Session, meeting_id: int, language: str,
                failed: Failed | None) -> dict[str, Any]:
    """One meeting: its details, its invitees counted (answers, once sent), and its forms
    with their values (as entered, for the one that was refused)."""
    meeting = schedule.find(session, meeting_id)
    view = _meeting_view(session, meeting, language)
    details = {key: str(getattr(meeting, key)) for key in (
        "title", "location", "alongside", "agenda_url", "description", "status")}
    return {"meeting": view, "people": _people(session, meeting, view["sent"]),
            "statuses": schedule.STATUSES, "problem": problem_of(failed),
            "parties": [p.name for p in organisation.parties(session)], "forms": {
                "update": form_values({**details, "host": view["host"],
                                       "send_at": _local(meeting.send_at, meeting.tz)},
                                      "update", failed),
                "reschedule": form_values({"start": view["start_local"],
                                           "end": view["end_local"], "zone": meeting.tz},
                                          "reschedule", failed),
                "cancel": form_values({"reason": ""}, "cancel", failed)}}


def letters_of(session: Session, site: MeetingSite, meeting_id: int) -> dict[str, Any]:
    """What `meeting invite` would send now: each recipient's subject, and one letter of
    each language in full (text part, and the HTML part as its words and its source)."""
    meeting = schedule.find(session, meeting_id)
    previews = invitations.preview(session, site, meeting)
    languages = {letter.language: letter for letter in previews if letter.text}
    return {"recipients": [{"name": p.name, "address": p.address, "language": p.language,
                            "subject": p.subject} for p in previews],
            "letters": [{"language": p.language, "address": p.address, "subject": p.subject,
                         "text": p.text.replace("\r\n", "\n"), "html": p.html,
                         "html_text": html_text(p.html)} for p in languages.values()]}


class _Words(HTMLParser):
    """The text a reader of an HTML part sees: its words, a line per block, a link's
    address in brackets after its words."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "table", "ul"})
    CELLS = frozenset({"td", "th"})
    UNSEEN = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in self.UNSEEN
        if tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag in self.CELLS:
            self.parts.append(" ")
        if tag == "a":
            self.links.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self.UNSEEN and self.hidden > 0
        if tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "a" and self.links:
            href = self.links.pop()
            self.parts.append(f" [{href}]" if href else "")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_text(html: str) -> str:
    """What the HTML part of a letter says, as plain text (links in brackets): the page
    shows it as text, so that no markup of the letter runs in the dashboard."""
    reader = _Words()
    reader.feed(html)
    reader.close()
    lines = [" ".join(line.split()) if line.strip() else "" for line in
             "".join(reader.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {partstat: sum(1 for r in rows if r["partstat"] == partstat)
            for _, partstat in reports.ANSWERS}


def _grouped(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    names = sorted({row[key] for row in rows})
    return [{"name": name, "counts": _counts([r for r in rows if r[key] == name])}
            for name in names]


PAGE_ROWS = 100     # invitees on one page of the attendance; the CSV has them all


def attendance_of(session: Session, meeting_id: int, language: str, failed: Failed | None,
                  page: int = 1) -> dict[str, Any]:
    """The meeting's attendance (`alliance meeting attendance`): the totals, per party and
    per region, one page of the invitees, and the form to record an answer by hand."""
    meeting = schedule.find(session, meeting_id)
    rows = reports.attendance(session, meeting)
    regions = {name: region for name, region in
               session.execute(select(Party.name, Party.region))}
    for row in rows:
        row["region"] = regions.get(row["party"], "")
    pages = max(1, -(-len(rows) // PAGE_ROWS))
    page = min(max(page, 1), pages)
    shown = rows[(page - 1) * PAGE_ROWS:page * PAGE_ROWS]
    for row in shown:
        row["replied"] = _words(_instant(row["replied_at"]), language)
    return {"meeting": _meeting_view(session, meeting, language), "rows": shown,
            "count": len(rows), "page": page, "pages": pages,
            "totals": _counts(rows), "by_party": _grouped(rows, "party"),
            "by_region": _grouped(rows, "region"),
            "answers": [p.lower() for p in BY_HAND], "problem": problem_of(failed),
            "entered": form_values({"address": "", "answer": "accepted", "comment": ""},
                                   "answer", failed)}


def page_number(request: Request) -> int:
    """The `page` of a request's query: a small positive number, else 1."""
    given = (request.query.get("page") or ["1"])[0]
    return int(given) if given.isdigit() and 0 < len(given) < 6 else 1


def pages(site: MeetingSite, access: Access) -> tuple[Page, ...]:
    """The meeting pages of the dashboard, for the site admin and coordinators."""
    return (access.page(("GET",), "/dashboard/meetings", _list_page(site, access), staff),
            access.page(("GET", "POST"), "/dashboard/meetings/new", _new_page(site, access),
                        staff),
            access.page(("GET",), MEETING, _meeting_page(site, access), staff),
            access.page(("POST",), MEETING + f"/(?P<action>{'|'.join(ACTIONS)})",
                        _action_page(site, access), staff),
            access.page(("GET",), MEETING + "/preview", _preview_page(site, access), staff),
            access.page(("GET",), MEETING + "/attendance", _attendance_page(site, access),
                        staff),
            access.page(("GET",), MEETING + "/attendance.csv", _csv_page(access), staff),
            access.page(("POST",), MEETING + "/answer", _answer_page(site, access), staff))


def _frame(request: Request, visitor: Visitor, person: SiteUser) -> dict[str, Any]:
    return {**frame(visitor, person), "notice": notice(request)}


def _list_page(site: MeetingSite, access: Access) -> Handler:
    async def show(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        language = page_language(request, person)
        shown = await access.store.read(lambda s: listing(s, language, site.clock()))
        return render_page(site.templates, "staff_meetings", language,
                           **_frame(request, visitor, person), **shown)
    return show


def _new_page(site: MeetingSite, access: Access) -> Handler:
    async def new(request: Request, match: re.Match[str], visitor: Visitor,
                  person: SiteUser) -> Response:
        language = page_language(request, person)

        async def again(failed: Failed | None, status: int = 400) -> Response:
            offered = await access.store.read(lambda s: choices(s, language))
            return render_page(site.templates, "staff_meeting_new", language, status,
                               **_frame(request, visitor, person), **offered,
                               problem=problem_of(failed),
                               entered=form_values(NEW, "create", failed))

        if request.method == "GET":
            return await again(None, 200)
        entered = values(request)

        def create(session: Session) -> Done:
            made = schedule.create(session, site, plan_of(entered))
            return Done("created", target=f"/dashboard/meetings/{made.id}",
                        detail={"meeting_id": made.id, "title": made.title})

        return await change(access.store, person, "meeting.create", "/dashboard/meetings",
                            create, again, "create", entered)
    return new


def _meeting_page(site: MeetingSite, access: Access) -> Handler:
    async def show(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        return await _show_meeting(site, access, request, visitor, person, int(match["id"]))
    return show


async def _show_meeting(site: MeetingSite, access: Access, request: Request,
                        visitor: Visitor, person: SiteUser, meeting_id: int,
                        failed: Failed | None = None) -> Response:
    language = page_language(request, person)
    try:
        shown = await access.store.read(lambda s: one_meeting(s, meeting_id, language, failed))
    except organisation.MeetingError:
        return render_page(site.templates, "error", language, 404, problem="not_found")
    return render_page(site.templates, "staff_meeting", language, 400 if failed else 200,
                       **_frame(request, visitor, person), **shown)


def meeting_change(site: MeetingSite, meeting_id: int, action: str,
                   entered: dict[str, str]) -> Callable[[Session], Done]:
    """The change a meeting page's form asks for, as the command line makes it."""
    def make(session: Session) -> Done:
        meeting = schedule.find(session, meeting_id)
        if action == "update":
            count = invitations.update(session, site, meeting, schedule.Changes(**{
                key: entered.get(key) for key in (
                    "title", "description", "location", "agenda_url", "alongside",
                    "status", "host", "send_at")}))
            return Done("updated", count)
        if action == "reschedule":
            moved = coordinating.reschedule(session, site, meeting, entered.get("start", ""),
                                            entered.get("end", ""), entered.get("zone", ""))
            return Done("same_times") if moved is None else Done("rescheduled", moved)
        if action == "invite":
            return Done("invited", invitations.invite(session, site, meeting))
        if action == "cancel":
            return Done("cancelled", coordinating.cancel(session, site, meeting,
                                                         entered.get("reason", "")))
        title = invitations.delete(session, meeting)
        return Done("deleted", target="/dashboard/meetings", detail={"title": title})
    return make


def _action_page(site: MeetingSite, access: Access) -> Handler:
    async def act(request: Request, match: re.Match[str], visitor: Visitor,
                  person: SiteUser) -> Response:
        meeting_id, action, entered = int(match["id"]), match["action"], values(request)

        async def again(failed: Failed) -> Response:
            return await _show_meeting(site, access, request, visitor, person, meeting_id,
                                       failed)

        return await change(access.store, person, f"meeting.{action}",
                            f"/dashboard/meetings/{meeting_id}",
                            meeting_change(site, meeting_id, action, entered), again,
                            action, entered, meeting_id=meeting_id)
    return act


def _preview_page(site: MeetingSite, access: Access) -> Handler:
    async def show(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        language, meeting_id = page_language(request, person), int(match["id"])

        def read(session: Session) -> dict[str, Any]:
            meeting = schedule.find(session, meeting_id)
            shown: dict[str, Any] = {"meeting": _meeting_view(session, meeting, language)}
            try:
                shown |= letters_of(session, site, meeting_id)
            except organisation.MeetingError as error:
                shown |= {"recipients": [], "letters": [], "problem": str(error)}
            return {"problem": "", **shown}

        try:
            # A write: the letters are written in full, then rolled back (a savepoint).
            shown = await access.store.write(read)
        except organisation.MeetingError:
            return render_page(site.templates, "error", language, 404, problem="not_found")
        return render_page(site.templates, "staff_meeting_preview", language,
                           **_frame(request, visitor, person), **shown)
    return show


def _attendance_page(site: MeetingSite, access: Access) -> Handler:
    async def show(request: Request, match: re.Match[str], visitor: Visitor,
                   person: SiteUser) -> Response:
        return await _show_attendance(site, access, request, visitor, person,
                                      int(match["id"]))
    return show


async def _show_attendance(site: MeetingSite, access: Access, request: Request,
                           visitor: Visitor, person: SiteUser, meeting_id: int,
                           failed: Failed | None = None) -> Response:
    language = page_language(request, person)
    try:
        shown = await access.store.read(lambda s: attendance_of(
            s, meeting_id, language, failed, page_number(request)))
    except organisation.MeetingError:
        return render_page(site.templates, "error", language, 404, problem="not_found")
    return render_page(site.templates, "staff_meeting_attendance", language,
                       400 if failed else 200,
                       **_frame(request, visitor, person), **shown)


def _csv_page(access: Access) -> Handler:
    async def download(request: Request, match: re.Match[str], visitor: Visitor,
                       person: SiteUser) -> Response:
        meeting_id = int(match["id"])

        def read(session: Session) -> str | None:
            meeting = session.get(Meeting, meeting_id)
            return None if meeting is None else reports.attendance_csv(
                reports.attendance(session, meeting))

        text = await access.store.read(read)
        if text is None:
            return render_page(access.env, "error", page_language(request, person), 404,
                               problem="not_found")
        name = f"meeting-{meeting_id}-attendance.csv"
        return Response(200, text.encode(), "text/csv; charset=utf-8",
                        (("content-disposition", f'attachment; filename="{name}"'),))
    return download


def _answer_page(site: MeetingSite, access: Access) -> Handler:
    async def record(request: Request, match: re.Match[str], visitor: Visitor,
                     person: SiteUser) -> Response:
        meeting_id, entered = int(match["id"]), values(request)

        async def again(failed: Failed) -> Response:
            return await _show_attendance(site, access, request, visitor, person,
                                          meeting_id, failed)

        def make(session: Session) -> Done:
            meeting = schedule.find(session, meeting_id)
            invitee = invitations.answer_by_hand(
                session, site, meeting, entered.get("address", ""),
                entered.get("answer", "").upper(), entered.get("comment", ""))
            return Done("answered", target=f"/dashboard/meetings/{meeting_id}/attendance",
                        detail={"invitee": invitee.address, "partstat": invitee.partstat})

        return await change(access.store, person, "meeting.answer",
                            f"/dashboard/meetings/{meeting_id}/attendance", make, again,
                            "answer", entered, meeting_id=meeting_id)
    return record
