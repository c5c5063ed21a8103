"""Invitations: who is sent what, and when (RFC 5546 §3.2.2, §3.2.5; reference/itip.md).

- The delegates seated in a body are the invitees of its meetings; each gets one
  REQUEST of their own at the meeting's send-at time (the scheduler) or at once
  (`alliance meeting invite`). `Invitation.sent_sequence` records what was sent, so that
  sending twice never invites twice.
- A change of time, location or status raises SEQUENCE, resets every answer to
  NEEDS-ACTION (`reset_sequence` = the new SEQUENCE) and sends an update; a fix of the
  title or description keeps SEQUENCE and answers (RFC 5546 §2.1.4).
- A cancel raises SEQUENCE and sends METHOD:CANCEL with STATUS:CANCELLED; a delegate who
  loses their seat gets a CANCEL naming only them, and so does their substitute.
- A delegate may send a substitute (`delegate`): the substitute gets their own REQUEST
  with DELEGATED-FROM and speaks for the delegator's party; no delegate of another party
  may stand in, so no party gets a second voice. When the seat goes back to the delegator
  (the substitute declined), the substitute is uninvited.
- Updates go to delegators too, their ATTENDEE line DELEGATED with DELEGATED-TO.
- An answer given another way (by phone, in words) is recorded by hand (`answer_by_hand`)
  and marked so; the invitee's own reply, later, replaces it.
- Mail goes to every active invitation: a failed message never stops it by itself; only
  repeated failures of the address make an invitation undeliverable (`reachability`).

Each function takes a session and the site and queues mail in the caller's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any

from sqlalchemy import delete as delete_rows
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from mailer.jobs import Job
from mailer.models import Delivery, Outgoing
from meetings import letters, organisation, schedule
from meetings.letters import DAY
from meetings.meeting_site import MeetingSite
from meetings.models import BY_HAND, Body, Delegate, Invitation, Meeting, RsvpEvent, Seat
from meetings.organisation import MeetingError

log = logging.getLogger(__name__)
REMINDER_DAYS = (14, 3)
MAX_CHAIN = 10


def passed_offsets(meeting: Meeting, now: float,
                   days: Sequence[int] = REMINDER_DAYS) -> str:
    """The reminder offsets whose moment has passed, as `Invitation.reminded` keeps them.

    An invitation sent ten days before a meeting needs no "14 days before" reminder.
    """
    return ",".join(str(d) for d in days if now >= meeting.starts_at - d * DAY)


def check_open(meeting: Meeting, now: float) -> None:
    """Refuse to mail about a cancelled meeting, or one that is over (itip.md G15)."""
    if meeting.status == "CANCELLED":
        raise MeetingError(f"meeting {meeting.id} is cancelled")
    if meeting.ends_at <= now:
        raise MeetingError(f"meeting {meeting.id} is over")


def _all(session: Session, meeting: Meeting) -> list[Invitation]:
    return list(session.scalars(select(Invitation).where(Invitation.meeting_id == meeting.id)
                                .order_by(Invitation.id)))


def sync(session: Session, meeting: Meeting, now: float,
         days: Sequence[int] = REMINDER_DAYS) -> list[Invitation]:
    """Give every delegate seated in the meeting's body an invitation row (not yet sent);
    the meeting's invitations, in order."""
    seated = session.execute(select(Delegate.id, Delegate.address, Delegate.name,
                                    Delegate.language)
                             .join(Seat, Seat.delegate_id == Delegate.id)
                             .where(Seat.body_id == meeting.body_id,
                                    Seat.role == "delegate")).all()
    rows = _all(session, meeting)
    known = {i.address: i for i in rows}
    reminded = passed_offsets(meeting, now, days)
    new = []
    for delegate_id, address, name, language in seated:
        found = known.get(address)
        if found is None:
            new.append({"meeting_id": meeting.id, "delegate_id": delegate_id,
                        "address": address, "name": name, "language": language,
                        "reset_sequence": meeting.sequence, "reminded": reminded})
        elif found.state == "removed":
            _reopen(found, meeting, reminded)
            found.delegate_id, found.delegated_from_id = delegate_id, None
    if not new:
        return rows
    session.execute(insert(Invitation), new)
    return _all(session, meeting)


def _reopen(invitation: Invitation, meeting: Meeting, reminded: str) -> None:
    """Make an old row a fresh, unsent, unanswered invitation."""
    invitation.state, invitation.partstat, invitation.comment = "active", "NEEDS-ACTION", ""
    invitation.by_hand = False
    invitation.replied_at = invitation.reply_sequence = invitation.reply_stamp = None
    invitation.sent_sequence, invitation.delegated_to = None, ""
    invitation.reset_sequence, invitation.reminded = meeting.sequence, reminded


def invite(session: Session, site: MeetingSite, meeting: Meeting) -> int:
    """Send the first REQUEST to every invitee who has had none; the number queued.
    A draft, or a meeting scheduled for later, is sent from now on."""
    return letters.send(session, site, meeting, _to_invite(session, site, meeting),
                        letters.INVITATION)


def _to_invite(session: Session, site: MeetingSite, meeting: Meeting) -> list[Invitation]:
    """The invitations `invite` sends: every active invitee who has had none."""
    now = site.clock()
    check_open(meeting, now)
    if meeting.send_at is None or meeting.send_at > now:
        meeting.send_at = now
    return [i for i in sync(session, meeting, now, site.reminder_days) if i.state == "active"
            and i.sent_sequence is None and i.partstat != "DELEGATED"]


def _sent(session: Session, meeting: Meeting, *, delegated: bool = False) -> list[Invitation]:
    """Active invitations that have had mail (with the delegators if `delegated`)."""
    return [i for i in _all(session, meeting) if i.state == "active"
            and i.sent_sequence is not None and (delegated or i.partstat != "DELEGATED")]


def _reset(session: Session, meeting: Meeting, now: float,
           days: Sequence[int] = REMINDER_DAYS) -> None:
    """A major change: every answer back to NEEDS-ACTION (RFC 5546 §2.1.4; itip.md §1.3).

    A delegator keeps DELEGATED, but a reply of theirs to the old version is stale too.
    """
    reminded = passed_offsets(meeting, now, days)
    for invitation in _all(session, meeting):
        if invitation.state != "active":
            continue
        invitation.reset_sequence = meeting.sequence
        if invitation.partstat != "DELEGATED":
            invitation.partstat, invitation.by_hand = "NEEDS-ACTION", False
            invitation.reminded = reminded


def reschedule(session: Session, site: MeetingSite, meeting: Meeting,
               when: schedule.Times) -> int:
    """New times: SEQUENCE+1, answers reset, "Updated:" to everyone already invited.

    The same zone, start and end change nothing and send nothing (RFC 5546 §2.1.4: only
    a change raises SEQUENCE).
    """
    now = site.clock()
    check_open(meeting, now)
    if not schedule.moved(meeting, when):
        return 0
    before = letters.meeting_view(session, meeting)
    meeting.tz, meeting.start_local, meeting.end_local = when.tz, when.start_local, \
        when.end_local
    meeting.starts_at, meeting.ends_at = when.starts_at, when.ends_at
    meeting.sequence += 1
    meeting.updated_at = now
    _reset(session, meeting, now, site.reminder_days)
    return letters.send(session, site, meeting, _sent(session, meeting, delegated=True),
                        letters.UPDATE, _noted(session, meeting, before))


def _noted(session: Session, meeting: Meeting, before: dict[str, Any]) -> letters.Notes:
    """What an update says changed: the meeting's view before, against now."""
    return letters.Notes(letters.changes(before, letters.meeting_view(session, meeting)))


def update(session: Session, site: MeetingSite, meeting: Meeting,
           changes: schedule.Changes) -> int:
    """Other changes: location and status are major (as a reschedule), the rest minor
    (a new host among them); a new send time only before anything is sent.

    A minor change is sent at the same SEQUENCE, each invitee's answer kept in their
    ATTENDEE line, so that clients update the event without asking again (itip.md G4).
    Delegators get it too, as DELEGATED (RFC 5546 §3.2.2.3).
    """
    now = site.clock()
    check_open(meeting, now)
    if changes.status == "CANCELLED":
        raise MeetingError("use `alliance meeting cancel` to cancel a meeting")
    before = letters.meeting_view(session, meeting)
    replanned = schedule.replan(session, meeting, changes, now, was_sent(session, meeting))
    changed, major = schedule.revise(meeting, changes, now)
    if not changed and not replanned:
        return 0
    if major:
        _reset(session, meeting, now, site.reminder_days)
    return letters.send(session, site, meeting, _sent(session, meeting, delegated=True),
                        letters.UPDATE, _noted(session, meeting, before))


def cancel(session: Session, site: MeetingSite, meeting: Meeting, reason: str = "") -> int:
    """METHOD:CANCEL, STATUS:CANCELLED, SEQUENCE+1 to every invitee (RFC 5546 §3.2.5),
    with the reason, if given, in the text and as the calendar's COMMENT."""
    now = site.clock()
    check_open(meeting, now)
    meeting.status = "CANCELLED"
    meeting.sequence += 1
    meeting.updated_at = now
    return letters.send(session, site, meeting, _sent(session, meeting, delegated=True),
                        letters.CANCEL, letters.Notes(reason=reason))


def send_current(session: Session, site: MeetingSite, meeting: Meeting,
           invitation: Invitation) -> int:
    """The current state to one invitee: an answer to REFRESH (RFC 5546 §3.2.6), or the
    REQUEST again for a delegator whose substitute declined (§4.2.7)."""
    if meeting.status == "CANCELLED":
        return letters.send(session, site, meeting, [invitation], letters.CANCEL)
    if meeting.ends_at <= site.clock() or invitation.state != "active":
        return 0
    return letters.send(session, site, meeting, [invitation], letters.INVITATION)


def send_answered(session: Session, site: MeetingSite, meeting: Meeting,
                  invitation: Invitation) -> int:
    """An answer given on the web, back to the invitee's calendar: the REQUEST at the same
    SEQUENCE with their PARTSTAT (RFC 5546 §3.2.2.2 allows an update to one attendee),
    to them only; nothing for a meeting that is over (itip.md G15)."""
    if meeting.status == "CANCELLED" or meeting.ends_at <= site.clock() \
            or invitation.state != "active":
        return 0
    return letters.send(session, site, meeting, [invitation], letters.ANSWERED)


def seat_added(session: Session, site: MeetingSite, body: Body) -> int:
    """A delegate joined the body: invite them to its meetings whose invitations went out."""
    now = site.clock()
    return sum(invite(session, site, meeting)
               for meeting in schedule.upcoming(session, body.id, now)
               if meeting.send_at is not None and meeting.send_at <= now)


def seat_removed(session: Session, site: MeetingSite, body: Body, delegate: Delegate) -> int:
    """A delegate left the body: a CANCEL naming only them, and their substitutes, who
    speak for them, SEQUENCE+1 (itip.md G5)."""
    queued = 0
    for meeting in schedule.upcoming(session, body.id, site.clock()):
        invitation = session.scalar(select(Invitation).where(
            Invitation.meeting_id == meeting.id, Invitation.address == delegate.address,
            Invitation.state == "active"))
        if invitation is not None:
            queued += withdraw(session, site, meeting,
                               [invitation, *substitutes(session, invitation)])
    return queued


def substitutes(session: Session, invitation: Invitation) -> list[Invitation]:
    """The substitutes an invitation sent, and theirs, down the chain (not removed ones)."""
    found: list[Invitation] = []
    ids = [invitation.id]
    for _ in range(MAX_CHAIN):
        more = list(session.scalars(select(Invitation).where(
            Invitation.meeting_id == invitation.meeting_id,
            Invitation.delegated_from_id.in_(ids), Invitation.state != "removed")
            .order_by(Invitation.id)))
        if not more:
            break
        found += more
        ids = [i.id for i in more]
    return found


def withdraw(session: Session, site: MeetingSite, meeting: Meeting,
             invitations: Sequence[Invitation]) -> int:
    """Take invitations back: each "removed", and a CANCEL naming only them to those who
    had mail, at SEQUENCE+1 (RFC 5546 §3.2.5, §2.1.4; itip.md G5)."""
    for invitation in invitations:
        invitation.state = "removed"
    sent = [i for i in invitations if i.sent_sequence is not None]
    if not sent:
        return 0
    meeting.sequence += 1
    meeting.updated_at = site.clock()
    return letters.send(session, site, meeting, sent, letters.UNINVITE)


def delegator_of(session: Session, invitation: Invitation) -> Invitation | None:
    """The first invitation of a delegation chain: the delegate who holds the seat."""
    current = invitation
    for _ in range(MAX_CHAIN):
        if current.delegated_from_id is None:
            return current
        parent = session.get(Invitation, current.delegated_from_id)
        if parent is None:
            return None
        current = parent
    return None


def party_of(session: Session, invitation: Invitation) -> int | None:
    """The party an invitation speaks for: a substitute speaks for their delegator's party,
    whatever party they belong to themselves (DESIGN §1)."""
    holder = delegator_of(session, invitation)
    delegate = session.get(Delegate, holder.delegate_id) \
        if holder is not None and holder.delegate_id is not None else None
    return delegate.party_id if delegate else None


def delegate(session: Session, site: MeetingSite, meeting: Meeting,
             from_invitation: Invitation, to_address: str, to_name: str) -> Invitation:
    """Send a substitute in an invitee's place (RFC 5546 §3.2.2.3, §4.2.5).

    The invitee becomes DELEGATED with DELEGATED-TO; the substitute gets an invitation
    of their own (`delegated_from_id`) and a REQUEST with DELEGATED-FROM, at the same
    SEQUENCE (§2.1.4: a delegation never raises it). The caller records the RsvpEvent
    if it wants one. MeetingError when the charter or the state forbids it.
    """
    now = site.clock()
    check_open(meeting, now)
    address = organisation.checked_address(to_address)
    _check_delegation(session, meeting, from_invitation, address)
    known = session.scalar(select(Delegate).where(Delegate.address == address))
    substitute = session.scalar(select(Invitation).where(
        Invitation.meeting_id == meeting.id, Invitation.address == address))
    if substitute is None:
        substitute = Invitation(meeting_id=meeting.id, address=address)
        session.add(substitute)
    _reopen(substitute, meeting, passed_offsets(meeting, now, site.reminder_days))
    substitute.delegate_id = known.id if known else None
    substitute.name = " ".join(to_name.split()) or (known.name if known else "")
    substitute.language = known.language if known else from_invitation.language
    substitute.delegated_from_id = from_invitation.id
    from_invitation.partstat, from_invitation.delegated_to = "DELEGATED", address
    session.flush()
    letters.send(session, site, meeting, [substitute], letters.INVITATION)
    return substitute


def _check_delegation(session: Session, meeting: Meeting, invitation: Invitation,
                      address: str) -> None:
    if invitation.meeting_id != meeting.id or invitation.state != "active":
        raise MeetingError(f"{invitation.address} is not invited to meeting {meeting.id}")
    if invitation.partstat == "DELEGATED":
        raise MeetingError(f"{invitation.address} has already sent "
                           f"{invitation.delegated_to or 'a substitute'}")
    if address == invitation.address:
        raise MeetingError(f"{address} cannot stand in for themselves")
    if session.scalar(select(Invitation.id).where(
            Invitation.meeting_id == meeting.id, Invitation.address == address,
            Invitation.state == "active")):
        raise MeetingError(f"{address} is already invited to meeting {meeting.id}")
    party_id = party_of(session, invitation)
    if party_id is None:
        raise MeetingError(f"cannot tell which party {invitation.address} speaks for")
    organisation.may_substitute(session, party_id, address)


def find_invitation(session: Session, meeting: Meeting, address: str) -> Invitation:
    """The meeting's invitation for that address, or MeetingError."""
    found = session.scalar(select(Invitation).where(
        Invitation.meeting_id == meeting.id,
        Invitation.address == organisation.checked_address(address)))
    if found is None:
        raise MeetingError(f"{address} is not invited to meeting {meeting.id}")
    return found


def answer_by_hand(session: Session, site: MeetingSite, meeting: Meeting, address: str,
                   partstat: str, comment: str = "") -> Invitation:
    """Record an answer a coordinator was given another way (by phone, in a plain-text
    mail): the invitee's PARTSTAT and comment, marked by hand. Nothing is sent; a later
    reply of the invitee's own replaces it (RFC 5546 §3.2.3 leaves PARTSTAT theirs)."""
    if partstat not in BY_HAND:
        raise MeetingError(f"an answer is one of {', '.join(p.lower() for p in BY_HAND)}")
    invitation = find_invitation(session, meeting, address)
    if meeting.status == "CANCELLED":
        raise MeetingError(f"meeting {meeting.id} is cancelled; nothing recorded")
    if invitation.state == "removed":
        raise MeetingError(f"{invitation.address} is no longer invited to meeting {meeting.id}")
    if invitation.partstat == "DELEGATED":
        raise MeetingError(f"{invitation.address} has sent {invitation.delegated_to} in "
                           "their place; record the substitute's answer")
    now = site.clock()
    invitation.partstat, invitation.comment = partstat, " ".join(comment.split())[:2000]
    invitation.replied_at, invitation.by_hand = now, True
    session.add(RsvpEvent(meeting_id=meeting.id, invitation_id=invitation.id, kind="by-hand",
                          partstat=partstat, detail=invitation.comment, at=now))
    return invitation


def was_sent(session: Session, meeting: Meeting) -> bool:
    """Whether any mail about the meeting went out (or is queued) to an invitee."""
    return session.scalar(select(Invitation.id).where(
        Invitation.meeting_id == meeting.id, Invitation.sent_sequence.is_not(None))
        .limit(1)) is not None


def invitees(session: Session, meeting: Meeting) -> list[Delegate]:
    """Who the invitations would go to now: the delegates seated in the meeting's body."""
    return list(session.scalars(select(Delegate).join(Seat, Seat.delegate_id == Delegate.id)
                                .where(Seat.body_id == meeting.body_id,
                                       Seat.role == "delegate").order_by(Delegate.address)))


@dataclass(frozen=True)
class Preview:
    """One message `invite` would queue: to whom, in which language, with what subject,
    its text part and its HTML part (as sent: the dashboard shows it as text)."""

    address: str
    name: str
    language: str
    subject: str
    text: str
    html: str = ""


def preview(session: Session, site: MeetingSite, meeting: Meeting) -> list[Preview]:
    """What `invite` would send, then rolled back: nothing is stored and nothing is sent
    (`alliance meeting invite --dry-run`, the dashboard's preview).

    Every recipient is listed, by address. The first of each language gets their letter
    written in full, as `invite` writes it; the others, the subject of their language's
    letter (the subject is the meeting's and the language's, never the person's) and no
    text, so that a body of a thousand costs a letter a language, not a thousand letters
    holding the one writer.
    """
    last = session.scalar(select(func.max(Outgoing.id))) or 0
    savepoint = session.begin_nested()
    try:
        unsent = sorted(_to_invite(session, site, meeting), key=lambda i: i.address)
        first = list({i.language: i for i in reversed(unsent)}.values())
        letters.send(session, site, meeting, first, letters.INVITATION)
        queued = session.execute(select(Delivery.recipient, Outgoing.data)
                                 .join(Outgoing, Delivery.outgoing_id == Outgoing.id)
                                 .where(Outgoing.id > last)).all()
        by_address = {i.address: i for i in first}
        written = {by_address[address].language: _preview(by_address[address], data)
                   for address, data in queued}
        return [written[i.language] if i in first else
                Preview(i.address, i.name, i.language, written[i.language].subject, "")
                for i in unsent]
    finally:
        savepoint.rollback()


def _preview(invitation: Invitation, data: bytes) -> Preview:
    message = BytesParser(policy=default_policy).parsebytes(data)
    body, html = message.get_body(("plain",)), message.get_body(("html",))
    return Preview(invitation.address, invitation.name, invitation.language,
                   str(message["Subject"]), body.get_content() if body is not None else "",
                   html.get_content() if html is not None else "")


def delete(session: Session, meeting: Meeting) -> str:
    """Delete a meeting no mail went out about; one that was sent must be cancelled, so
    that the invitees' calendars hear of it (RFC 5546 §3.2.5)."""
    if was_sent(session, meeting):
        raise MeetingError(f"meeting {meeting.id}: invitations went out; cancel it instead "
                           f"(alliance meeting cancel {meeting.id})")
    session.execute(delete_rows(RsvpEvent).where(RsvpEvent.meeting_id == meeting.id))
    session.execute(delete_rows(Invitation).where(Invitation.meeting_id == meeting.id))
    session.delete(meeting)
    return meeting.title


def invite_apart(session: Session, site: MeetingSite, meeting: Meeting) -> int:
    """`invite` in a savepoint of its own: a meeting that fails is logged and rolled back
    alone, so that it cannot hold back the invitations of every other meeting."""
    try:
        with session.begin_nested():
            return invite(session, site, meeting)
    except Exception:
        log.exception("invitations of meeting %d could not be sent", meeting.id)
        return 0


def send_job(site: MeetingSite, every: float = 30.0) -> Job:
    """The scheduler's job: invitations of meetings whose send-at time has come."""
    def run(session: Session, now: float) -> int:
        due = session.scalars(select(Meeting).where(
            Meeting.send_at <= now, Meeting.ends_at > now, Meeting.status != "CANCELLED")
            .order_by(Meeting.send_at))
        return sum(invite_apart(session, site, meeting) for meeting in list(due))
    return Job("meeting-invitations", every, run)
