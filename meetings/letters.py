"""Writing and queueing invitation mail: one personalised iMIP message per invitee.

For a mailing (an invitation, an update, a cancel, a reminder) the calendar is
serialised once (`ical.Frame`) and the MIME shape once per language (`imip.Letterhead`);
each invitee then costs their own ORGANIZER and ATTENDEE lines, their text and HTML
bodies from the templates, and a few byte substitutions. The messages are queued in bulk,
in the caller's transaction, each with its invitee's `rsvp+TOKEN@` as envelope sender, so
that a bounce comes back to the token that names the invitation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mailer import dates, templates
from mailer.models import Delivery, Outgoing
from meetings import coordination, ical, imip, schedule
from meetings.meeting_site import MeetingSite
from meetings.models import Body, Invitation, Meeting, Party

DAY = 86_400.0


@dataclass(frozen=True)
class Mailing:
    """One kind of invitation mail: its template, its iTIP method, its queue kind."""

    template: str
    method: str
    whole: bool = True       # CANCEL: the whole meeting, or only this invitee
    kind: str = "invitation"


INVITATION = Mailing("invitation", "REQUEST")
UPDATE = Mailing("invitation_update", "REQUEST")
CANCEL = Mailing("invitation_cancel", "CANCEL")
UNINVITE = Mailing("invitation_cancel", "CANCEL", whole=False)
REMINDER = Mailing("reminder", "REQUEST", kind="reminder")
# An answer given on the web, back to the invitee's calendar (rsvp.answer_on_web).
ANSWERED = Mailing("invitation_answered", "REQUEST")

# What an update lists when it changed, in this order (keys of meeting_view).
NOTED = ("title", "when", "location", "host", "alongside", "agenda_url", "description")


@dataclass(frozen=True)
class Notes:
    """What a mailing says beyond the meeting as it stands: what changed, and why."""

    changes: tuple[tuple[str, Any, Any], ...] = ()   # (field, before, after)
    reason: str = ""

    def view(self, language: str) -> dict[str, Any]:
        """The notes as the templates of that language see them (times in its words)."""
        return {"changes": [{"field": field, "old": _said(old, language),
                             "new": _said(new, language)}
                            for field, old, new in self.changes],
                "reason": self.reason}


def _said(value: Any, language: str) -> str:
    return value.local(language) if isinstance(value, dates.Span) else str(value or "")


def changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[tuple[str, Any, Any], ...]:
    """The fields of two meeting views that differ, as (field, before, after).

    >>> changes({"title": "Board", "location": "Paris", "when": "x"},
    ...         {"title": "Board", "location": "Rome", "when": "x"})
    (('location', 'Paris', 'Rome'),)
    """
    return tuple((field, before.get(field) or "", after.get(field) or "")
                 for field in NOTED if before.get(field) != after.get(field))


def span_of(meeting: Meeting) -> dates.Span:
    """The meeting's time, to be written in a reader's language (mailer.dates)."""
    return dates.Span(meeting.tz, meeting.start_local, meeting.end_local)


def when(meeting: Meeting) -> dict[str, str]:
    """The meeting's local start and end as ISO wall times, for the command line."""
    start, end = schedule.start_of(meeting), schedule.end_of(meeting)
    return {"start": f"{start:%Y-%m-%d %H:%M}", "end": f"{end:%Y-%m-%d %H:%M}",
            "tz": meeting.tz}


def meeting_view(session: Session, meeting: Meeting) -> dict[str, Any]:
    """The meeting as templates see it, before it is put in a reader's language
    (`in_language`): its words, its time as a `dates.Span`, its body's names."""
    body = session.get(Body, meeting.body_id)
    host = session.get(Party, meeting.host_party_id) if meeting.host_party_id else None
    return {"id": meeting.id, "title": meeting.title, "body": body.name if body else "",
            "body_names": dict(body.names or {}) if body else {},
            "location": meeting.location, "description": meeting.description,
            "alongside": meeting.alongside, "agenda_url": meeting.agenda_url,
            "host": host.name if host else "", "status": meeting.status,
            "sequence": meeting.sequence, "when": span_of(meeting), **when(meeting)}


def in_language(view: dict[str, Any], language: str) -> dict[str, Any]:
    """The view in one language: the body's name in it, and the time with the weekday in
    the meeting's zone (`when`, then `zone`), in UTC (`utc`) and short for subjects
    (`date`)."""
    span: dates.Span = view["when"]
    return {**view, "body": view["body_names"].get(language) or view["body"],
            "when": span.time(language), "zone": span.zone(language),
            "utc": span.utc(language), "date": span.date(language)}


def attendees(invitation: Invitation, delegators: dict[int, Invitation],
              mailing: Mailing) -> list[ical.AttendeeLine]:
    """The ATTENDEE lines one invitee sees: themselves, and whom they stand in for.

    A substitute's REQUEST carries both changes of a delegation: the substitute with
    DELEGATED-FROM and the delegator with PARTSTAT=DELEGATED and DELEGATED-TO (RFC 5546
    §3.2.2.3, example §4.2.5). A delegator's own update says DELEGATED, RSVP=FALSE and
    DELEGATED-TO, so that their client keeps the event without asking them again.
    """
    partstat = invitation.partstat if mailing.method == "REQUEST" else "NEEDS-ACTION"
    delegator = delegators.get(invitation.delegated_from_id or 0)
    own = ical.AttendeeLine(invitation.address, invitation.name, partstat=partstat,
                        rsvp=mailing.method == "REQUEST" and partstat == "NEEDS-ACTION",
                        delegated_from=delegator.address if delegator else "",
                        delegated_to=invitation.delegated_to if partstat == "DELEGATED"
                        else "")
    if delegator is None:
        return [own]
    return [own, ical.AttendeeLine(delegator.address, delegator.name, partstat="DELEGATED",
                               rsvp=False, role="NON-PARTICIPANT",
                               delegated_to=invitation.address)]


def delegators(session: Session, invitations: Sequence[Invitation]) -> dict[int, Invitation]:
    """The invitations the given substitutes stand in for, by id."""
    ids = {i.delegated_from_id for i in invitations if i.delegated_from_id}
    if not ids:
        return {}
    return {i.id: i for i in session.scalars(select(Invitation).where(Invitation.id.in_(ids)))}


class Writer:
    """Writes one mailing's messages; templates and letterheads are made once per language."""

    def __init__(self, site: MeetingSite, mailing: Mailing, organizer: str,
                 view: dict[str, Any], days_left: int, notes: Notes = Notes()) -> None:
        self.site = site
        self.mailing = mailing
        self.organizer = organizer
        self.view = view
        self.notes = notes
        self.common = {"organizer": organizer, "site_name": site.name,
                       "whole": mailing.whole, "days_left": days_left}
        self._languages: dict[str, dict[str, Any]] = {}
        self._templates: dict[str, tuple[jinja2.Template, jinja2.Template]] = {}
        self._heads: dict[tuple[str, str], imip.Letterhead] = {}

    def _pair(self, language: str) -> tuple[jinja2.Template, jinja2.Template]:
        if language not in self._templates:
            env = self.site.templates
            self._templates[language] = (
                env.get_template(f"{language}/{self.mailing.template}.txt"),
                env.get_template(f"{language}/invitation.html"))
        return self._templates[language]

    def _common(self, language: str) -> dict[str, Any]:
        """What every invitee of that language sees alike, worked out once."""
        if language not in self._languages:
            self._languages[language] = {**self.common, **self.notes.view(language),
                                         "meeting": in_language(self.view, language)}
        return self._languages[language]

    def _head(self, language: str, subject: str) -> imip.Letterhead:
        key = (language, subject)
        if key not in self._heads:
            # The coordinating party via the site; before any handover, the site alone
            # (not "Progressive Alliance via Progressive Alliance").
            sender_name = (self.site.name if self.organizer == self.site.name
                           else f"{self.organizer} via {self.site.name}")
            self._heads[key] = imip.letterhead(method=self.mailing.method, subject=subject,
                                               sender_name=sender_name,
                                               domain=self.site.domain)
        return self._heads[key]

    def _links(self, invitation: Invitation) -> dict[str, str]:
        """The invitee's answer pages, in a REQUEST to one who may still answer."""
        if self.mailing.method != "REQUEST" or invitation.partstat == "DELEGATED":
            return {}
        return self.site.answer_links(invitation.id)

    def write(self, invitation: Invitation, sender: str, calendar: bytes,
              delegator: Invitation | None) -> bytes:
        """One invitee's message, in their language."""
        language = templates.language_of(invitation.language)
        plain_template, html_template = self._pair(language)
        context = {**self._common(language), "rsvp": sender,
                   "invitee": {"name": invitation.name or invitation.address,
                               "address": invitation.address},
                   "answer": {"partstat": invitation.partstat,
                              "delegated_to": invitation.delegated_to,
                              "comment": invitation.comment},
                   "links": self._links(invitation),
                   "delegated_from": (delegator.name or delegator.address) if delegator
                   else ""}
        module = plain_template.make_module(context)
        subject = imip.one_line(str(getattr(module, "subject", "")))
        html = html_template.render({**context, "mailing": self.mailing.template,
                                     "subject": subject})
        return self._head(language, subject).letter(imip.Letter(
            invitation.address, invitation.name, sender, str(module), html, calendar))


def send(session: Session, site: MeetingSite, meeting: Meeting,
         invitations: Sequence[Invitation], mailing: Mailing, notes: Notes = Notes()) -> int:
    """Queue the mailing to each invitation; their `sent_sequence` becomes the meeting's.
    `notes` (an update's changes, a cancel's reason) go into its text and HTML."""
    if not invitations:
        return 0
    now = site.clock()
    occasion = schedule.occasion(meeting, now)
    frame = (ical.request_frame(occasion) if mailing.method == "REQUEST"
             else ical.cancel_frame(occasion, whole=mailing.whole, comment=notes.reason))
    organizer = coordination.organizer_name(session, site)
    writer = Writer(site, mailing, organizer, meeting_view(session, meeting),
                    max(0, int((meeting.starts_at - now) // DAY)), notes)
    by_id = delegators(session, invitations)
    rows = []
    for invitation in invitations:
        sender = site.rsvp_address(invitation.id)
        calendar = frame.fill(ical.Person(sender, organizer),
                              attendees(invitation, by_id, mailing))
        data = writer.write(invitation, sender, calendar,
                            by_id.get(invitation.delegated_from_id or 0))
        rows.append((sender, invitation.address, data))
        invitation.sent_sequence = meeting.sequence
    enqueue_many(session, rows, mailing.kind)
    return len(rows)


def enqueue_many(session: Session, rows: Sequence[tuple[str, str, bytes]], kind: str) -> None:
    """Store (sender, recipient, data) messages and their deliveries with two statements."""
    if not rows:
        return
    now = time.time()
    ids = list(session.scalars(
        insert(Outgoing).returning(Outgoing.id, sort_by_parameter_order=True),
        [{"created_at": now, "kind": kind, "sender": sender, "source_id": None,
          "data": data} for sender, _, data in rows]))
    session.execute(insert(Delivery), [
        {"outgoing_id": outgoing_id, "recipient": recipient, "member_id": None,
         "state": "pending", "attempts": 0, "created_at": now, "due_at": now}
        for outgoing_id, (_, recipient, _) in zip(ids, rows, strict=True)])
