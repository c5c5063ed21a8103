"""A delegate's own data on the meetings side: what they may see, and what erasure does.

GDPR art. 15 and 17, for the meetings side: the delegate record (name, language, party),
seats, and every invitation with the answers and comments given. A seat is the party's
decision and the charter's record, so erasure does not unseat: while seated, it says so
and changes nothing here (the coordinators unseat, then erasure completes). Once unseated,
the delegate record goes and past invitations keep only the answer, with no name, address
or comment. Each function takes a session and leaves committing to the caller.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailer import dates
from meetings.models import Body, Delegate, Invitation, Meeting, Party, RsvpEvent, Seat


def _delegate(session: Session, address: str) -> Delegate | None:
    return session.scalar(select(Delegate).where(
        func.lower(Delegate.address) == address.lower()))


def export(session: Session, address: str) -> dict[str, Any]:
    """Everything the meetings side keeps about the address, as JSON-ready data."""
    delegate = _delegate(session, address)
    seats = [] if delegate is None else [
        {"body": body, "party": party, "role": seat.role, "since": dates.iso(seat.created_at)}
        for seat, body, party in session.execute(
            select(Seat, Body.name, Party.name).join(Body, Body.id == Seat.body_id)
            .join(Party, Party.id == Seat.party_id).where(Seat.delegate_id == delegate.id))]
    invitations = session.execute(
        select(Invitation, Meeting.title, Meeting.start_local, Meeting.tz)
        .join(Meeting, Meeting.id == Invitation.meeting_id)
        .where(func.lower(Invitation.address) == address.lower())
        .order_by(Meeting.starts_at)).all()
    events: dict[int, list[dict[str, Any]]] = {i.id: [] for i, *_ in invitations}
    if events:
        for event in session.scalars(select(RsvpEvent).where(
                RsvpEvent.invitation_id.in_(events)).order_by(RsvpEvent.id)):
            events[event.invitation_id].append(
                {"kind": event.kind, "answer": event.partstat, "detail": event.detail,
                 "at": dates.iso(event.at)})
    return {
        "delegate": None if delegate is None else {
            "name": delegate.name, "language": delegate.language,
            "party": session.scalar(select(Party.name).where(
                Party.id == delegate.party_id)),
            "since": dates.iso(delegate.created_at)},
        "seats": seats,
        "invitations": [{"meeting": title, "start": f"{start} {tz}", "name": i.name,
                         "answer": i.partstat, "comment": i.comment,
                         "answered_at": dates.iso(i.replied_at),
                         "substitute": i.delegated_to, "events": events[i.id]}
                        for i, title, start, tz in invitations],
    }


def erase(session: Session, address: str) -> list[str]:
    """What erasure does here, in words for the page: "seated:BODY" (nothing changed
    while seated), else "delegate" and "invitations:N" for what was removed."""
    delegate = _delegate(session, address)
    if delegate is not None:
        bodies = list(session.scalars(select(Body.slug).join(Seat, Seat.body_id == Body.id)
                                      .where(Seat.delegate_id == delegate.id)))
        if bodies:
            return [f"seated:{slug}" for slug in sorted(bodies)]
    done: list[str] = []
    rows = list(session.scalars(select(Invitation).where(
        func.lower(Invitation.address) == address.lower())))
    for invitation in rows:
        invitation.address = f"erased-{invitation.id}@invalid"
        invitation.name, invitation.comment, invitation.delegated_to = "", "", ""
        invitation.state = "removed"
        invitation.delegate_id = None
    if rows:
        session.execute(update(RsvpEvent).where(
            RsvpEvent.invitation_id.in_([i.id for i in rows])).values(detail=""))
        done.append(f"invitations:{len(rows)}")
    if delegate is not None:
        session.delete(delegate)
        done.append("delegate")
    return done
