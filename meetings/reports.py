"""What the coordinators read: the attendance of a meeting, and one daily RSVP summary.

The summary gathers the RSVP events (replies, counters, delegations, bounces) not yet
reported into one mail to the coordinators, sent when the oldest of them is a day old:
so at most one a day, and none on a day without news.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import dates
from mailer.jobs import Job
from meetings import coordination, invitations, letters, schedule
from meetings.invitations import MAX_CHAIN
from meetings.letters import DAY
from meetings.meeting_site import MeetingSite
from meetings.models import Delegate, Invitation, Meeting, Party, RsvpEvent
from meetings.reachability import delivery_note

COLUMNS = ["name", "party", "address", "partstat", "answered", "comment", "replied_at",
           "delivery"]


def stamp(value: float | None) -> str:
    """A time as ISO 8601 UTC, or "" for none."""
    return dates.iso(value)


def _holder(invitation: Invitation, by_id: dict[int, Invitation]) -> Invitation | None:
    """The first invitation of the delegation chain the invitation belongs to."""
    current = invitation
    for _ in range(MAX_CHAIN):
        if current.delegated_from_id is None:
            return current
        parent = by_id.get(current.delegated_from_id)
        if parent is None:
            return None
        current = parent
    return None


def _parties(session: Session, meeting: Meeting,
             invitations: list[Invitation]) -> dict[int, str]:
    """Party name by invitation id; a substitute speaks for their delegator's party,
    whatever party they belong to themselves (DESIGN §1)."""
    by_id = {i.id: i for i in invitations}
    holders = {i.id: _holder(i, by_id) for i in invitations}
    # The holders are invitations of the meeting: their delegates are found by a join,
    # not by a list of a thousand ids.
    rows = session.execute(select(Delegate.id, Party.name).distinct()
                           .join(Party, Delegate.party_id == Party.id)
                           .join(Invitation, Invitation.delegate_id == Delegate.id)
                           .where(Invitation.meeting_id == meeting.id))
    by_delegate = {delegate_id: name for delegate_id, name in rows}
    return {i: by_delegate.get(h.delegate_id or 0, "") if h else ""
            for i, h in holders.items()}


def attendance(session: Session, meeting: Meeting) -> list[dict[str, Any]]:
    """Each invitee: name, party, address, PARTSTAT, how it was given (by mail, on the web,
    or by hand by a coordinator), comment, reply time (UTC), and any problem delivering mail
    to them, beside the answer, which a failed message never replaces."""
    invitations = list(session.scalars(select(Invitation).where(
        Invitation.meeting_id == meeting.id, Invitation.state != "removed")
        .order_by(Invitation.id)))
    parties = _parties(session, meeting, invitations)
    web = on_the_web(session, meeting.id)
    rows = [{"name": i.name, "party": parties[i.id], "address": i.address,
             "partstat": i.partstat, "answered": answered(i, i.id in web),
             "comment": i.comment,
             "replied_at": stamp(i.replied_at), "delivery": delivery_note(i)}
            for i in invitations]
    return sorted(rows, key=lambda row: (row["party"], row["address"]))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula.

    Invitees write the comments: a cell starting with = + - @ tab or CR gets a leading
    single quote (OWASP "CSV Injection"; RFC 4180 itself knows no formulas).

    >>> print(spreadsheet_cell("=HYPERLINK(0)"))
    '=HYPERLINK(0)
    >>> spreadsheet_cell("Avec plaisir")
    'Avec plaisir'
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def attendance_csv(rows: list[dict[str, Any]]) -> str:
    """Attendance rows as CSV (RFC 4180, a header line first), safe in a spreadsheet:
    `alliance meeting attendance --csv` and the dashboard's download."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: spreadsheet_cell(v) for k, v in row.items()} for row in rows])
    return out.getvalue()


ANSWERS = (("accepted", "ACCEPTED"), ("tentative", "TENTATIVE"), ("declined", "DECLINED"),
           ("no answer", "NEEDS-ACTION"), ("delegated", "DELEGATED"))


def totals(rows: list[dict[str, Any]]) -> str:
    """The answers of attendance rows counted, as the table's last line says them.

    >>> totals([{"partstat": "ACCEPTED"}, {"partstat": "NEEDS-ACTION"}])
    'accepted 1, tentative 0, declined 0, no answer 1'
    """
    counts = [(label, sum(1 for r in rows if r["partstat"] == partstat))
              for label, partstat in ANSWERS]
    return ", ".join(f"{label} {count}" for label, count in counts
                     if count or label != "delegated")


def details(session: Session, meeting: Meeting) -> dict[str, Any]:
    """Everything about a meeting, for `alliance meeting show`: its fields, times local and
    UTC, its state, and who will be invited (unsent) or was, with their answers."""
    sent = invitations.was_sent(session, meeting)
    view = letters.meeting_view(session, meeting)
    invitees = attendance(session, meeting) if sent else [
        {"name": d.name, "party": party, "address": d.address, "language": d.language}
        for d, party in _with_parties(session, invitations.invitees(session, meeting))]
    return {"id": meeting.id, "title": meeting.title, "body": view["body"],
            "state": schedule.state(meeting, sent), "status": meeting.status,
            "sequence": meeting.sequence, "uid": meeting.uid, "tz": meeting.tz,
            "start": f"{view['start']} {meeting.tz}", "end": f"{view['end']} {meeting.tz}",
            "start_utc": _utc(meeting.starts_at), "end_utc": _utc(meeting.ends_at),
            "send_at": _utc(meeting.send_at), "location": meeting.location,
            "host": view["host"], "alongside": meeting.alongside,
            "agenda_url": meeting.agenda_url, "description": meeting.description,
            "invited" if sent else "will_be_invited": invitees}


def _utc(value: float | None) -> str:
    return "" if value is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


def _with_parties(session: Session, delegates: list[Delegate]) -> list[tuple[Delegate, str]]:
    names = dict(session.execute(select(Party.id, Party.name).where(
        Party.id.in_({d.party_id for d in delegates}))).all())
    return sorted(((d, names.get(d.party_id, "")) for d in delegates),
                  key=lambda pair: (pair[1], pair[0].address))


def answered(invitation: Invitation, web: bool = False) -> str:
    """How the answer came: "by mail" or "on the web" (`web`, see `on_the_web`) from the
    invitee, "by hand" from a coordinator."""
    if invitation.partstat == "NEEDS-ACTION":
        return ""
    if invitation.by_hand:
        return "by hand"
    if invitation.replied_at is None:
        return ""
    return "on the web" if web else "by mail"


# The RsvpEvents that record an answer, and those of answers given on the web.
ANSWER_KINDS = ("reply", "delegated", "by-hand", "reply-web", "delegated-web")
WEB_KINDS = ("reply-web", "delegated-web")


def on_the_web(session: Session, meeting_id: int) -> set[int]:
    """The invitations of a meeting whose last answer was given on the web."""
    last: dict[int, str] = {}
    for invitation_id, kind in session.execute(
            select(RsvpEvent.invitation_id, RsvpEvent.kind)
            .where(RsvpEvent.meeting_id == meeting_id, RsvpEvent.kind.in_(ANSWER_KINDS))
            .order_by(RsvpEvent.id)):
        last[invitation_id] = kind
    return {ident for ident, kind in last.items() if kind in WEB_KINDS}


def summary_rows(session: Session, events: list[RsvpEvent]) -> list[dict[str, Any]]:
    """The events as the summary template shows them, by meeting then time; each meeting's
    date in the coordinators' language."""
    meetings = {m.id: m for m in session.scalars(select(Meeting).where(
        Meeting.id.in_({e.meeting_id for e in events})))}
    invitations = {i.id: i for i in session.scalars(select(Invitation).where(
        Invitation.id.in_({e.invitation_id for e in events})))}
    language = coordination.language(session)
    rows = []
    for event in events:
        meeting, invitation = meetings[event.meeting_id], invitations[event.invitation_id]
        rows.append({"meeting": meeting.title, "date": letters.span_of(meeting).date(language),
                     "meeting_id": meeting.id, "name": invitation.name or invitation.address,
                     "address": invitation.address, "kind": event.kind,
                     "partstat": event.partstat, "detail": event.detail,
                     "at": stamp(event.at)})
    return sorted(rows, key=lambda row: (row["meeting_id"], row["at"]))


def summarise(session: Session, site: MeetingSite, now: float) -> int:
    """One summary mail of unreported RSVP events, once the oldest is a day old."""
    events = list(session.scalars(select(RsvpEvent).where(RsvpEvent.reported.is_(False))
                                  .order_by(RsvpEvent.id)))
    if not events or min(e.at for e in events) > now - DAY:
        return 0
    if not coordination.contacts(session) or not coordination.notify(
            session, site, "rsvp_summary",
            {"site_name": site.name, "count": len(events),
             "events": summary_rows(session, events)}, kind="summary"):
        return 0
    for event in events:
        event.reported = True
    return 1


def summary_job(site: MeetingSite, every: float = 3600.0) -> Job:
    """The scheduler's daily RSVP summary to the coordinators."""
    return Job("rsvp-summary", every, lambda session, now: summarise(session, site, now))
