"""The invitee's answer pages: Accept, Tentative, Decline or send a substitute, on the web.

Every REQUEST carries four links, `/rsvp/TOKEN/accept|tentative|decline|substitute`, the
token signed for this purpose alone (`MeetingSite.answer_links`). A GET shows the meeting
as it stands, the invitee's answer so far and one button; it changes nothing, since link
scanners and previews fetch every URL in a mail. The button POSTs the choice, an optional
comment (and the substitute's address and name), and the meeting's SEQUENCE as the page
showed it; `rsvp.answer_on_web` applies it under the rules of a REPLY by mail and sends the
invitee's calendar the REQUEST again with their answer in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mailer.templates import language_of
from mailer.web import Page, Request, Response, Store, render_error, render_page
from meetings import coordination, itip, letters, rsvp
from meetings.meeting_site import ANSWER_CHOICES, MeetingSite
from meetings.models import Invitation, Meeting

PARTSTATS = {"accept": "ACCEPTED", "tentative": "TENTATIVE", "decline": "DECLINED",
             "substitute": rsvp.DELEGATED}
PATH = re.compile(r"/rsvp/(?P<token>[0-9]{1,18}-[a-z2-7]{26})/"
                  rf"(?P<choice>{'|'.join(ANSWER_CHOICES)})")


@dataclass(frozen=True)
class Shown:
    """A page to render: its template, status, language and context."""

    name: str
    status: int
    language: str
    context: dict[str, Any]


def pages(site: MeetingSite, db: Store) -> tuple[Page, ...]:
    """The answer pages: GET shows, POST answers."""
    env = site.templates

    def render(request: Request, shown: Shown | None) -> Response:
        if shown is None:
            return render_page(env, "unknown_link", request.language(), 404, link="answer")
        return render_page(env, shown.name, shown.language, shown.status, **shown.context)

    async def show(request: Request, match: re.Match[str]) -> Response:
        return render(request, await db.read(
            lambda s: _show(s, site, match["token"], match["choice"], request.language())))

    async def answer(request: Request, match: re.Match[str]) -> Response:
        form = {key: values[-1] for key, values in request.form().items()}
        sequence = form.get("sequence", "")
        if not sequence.isdigit() or len(sequence) > 9:
            return render_error(env, "bad_request", request.language())
        return render(request, await db.write(
            lambda s: _answer(s, site, match["token"], match["choice"], form,
                              request.language())))

    return (Page(("GET", "HEAD"), PATH, show), Page(("POST",), PATH, answer))


def _found(session: Session, site: MeetingSite,
           token: str) -> tuple[Invitation, Meeting] | None:
    ident = site.answer_tokens.verify(token)
    invitation = session.get(Invitation, ident) if ident is not None else None
    if invitation is None:
        return None
    meeting = session.get(Meeting, invitation.meeting_id)
    assert meeting is not None, "an invitation has its meeting"
    return invitation, meeting


def _context(session: Session, site: MeetingSite, invitation: Invitation, meeting: Meeting,
             language: str, choice: str) -> dict[str, Any]:
    """What every answer page shows: the meeting in the page's language, the invitee, their
    answer so far, the choice, and whether the page may still answer (`closed` names why
    not: cancelled, removed, delegated)."""
    closed = ("cancelled" if meeting.status == rsvp.CANCELLED
              else "removed" if invitation.state == "removed"
              else "delegated" if invitation.partstat == rsvp.DELEGATED else "")
    return {"meeting": letters.in_language(letters.meeting_view(session, meeting), language),
            "invitee": {"name": invitation.name or invitation.address,
                        "address": invitation.address},
            "current": {"partstat": invitation.partstat, "comment": invitation.comment,
                        "delegated_to": invitation.delegated_to},
            "choice": choice, "sequence": meeting.sequence, "closed": closed,
            "coordination": site.address(coordination.LOCAL)}


def _show(session: Session, site: MeetingSite, token: str, choice: str,
          visitor: str | None) -> Shown | None:
    found = _found(session, site, token)
    if found is None:
        return None
    invitation, meeting = found
    language = language_of(invitation.language, visitor)
    context = _context(session, site, invitation, meeting, language, choice)
    return Shown("answer", 200, language, {**context, "problem": ""})


def _answer(session: Session, site: MeetingSite, token: str, choice: str,
            form: dict[str, str], visitor: str | None) -> Shown | None:
    found = _found(session, site, token)
    if found is None:
        return None
    invitation, meeting = found
    language = language_of(invitation.language, visitor)
    substitute = form.get("substitute", "").strip()[:320]
    if choice == "substitute" and not substitute:
        context = _context(session, site, invitation, meeting, language, choice)
        return Shown("answer", 400, language, {**context, "problem": "no_substitute"})
    answer = rsvp.WebAnswer(PARTSTATS[choice], " ".join(form.get("comment", "").split())
                            [:itip.MAX_TEXT], int(form["sequence"]), substitute,
                            " ".join(form.get("name", "").split())[:200])
    outcome = rsvp.answer_on_web(session, site, invitation, answer)
    context = _context(session, site, invitation, meeting, language, choice)
    problem = refusal(meeting, invitation, outcome, answer.sequence)
    if problem == "changed":
        return Shown("answer", 409, language, {**context, "problem": problem})
    if problem:
        return Shown("answer_refused", 409, language,
                     {**context, "problem": problem, "detail": outcome.reason})
    return Shown("answered", 200, language, context)


def refusal(meeting: Meeting, invitation: Invitation, outcome: rsvp.RsvpOutcome,
            sequence: int) -> str:
    """Why the rules of `rsvp.reply` refused a web answer, as the page words it, or "".

    The rules decided; this only names the state that made them refuse: a cancelled
    meeting, a removed invitee, a page shown before a change of time (the stale rule), a
    seat given to a substitute, or a substitute the charter refuses (`detail`).
    """
    if outcome.action in ("applied", "delegated"):
        return ""
    if meeting.status == rsvp.CANCELLED:
        return "cancelled"
    if invitation.state == "removed":
        return "removed"
    if outcome.action == "unchanged":
        return "changed" if sequence < invitation.reset_sequence else ""
    if invitation.partstat == rsvp.DELEGATED:
        return "delegated"
    return "substitute"
