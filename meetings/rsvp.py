"""Answers to invitations: what mail to an invitee's `rsvp+TOKEN@` address does.

The token names one invitation (DESIGN §3), so it says which meeting and which invitee a
message is about even when the calendar data does not (Outlook omits ORGANIZER). In order:

1. A delivery report (RFC 3464) of a failure is kept beside the invitee's answer, which
   it never changes; only repeated failures of the address stop mail to them
   (`meetings.reachability`). Other automatic mail (out-of-office, RFC 3834) is dropped,
   unless it carries a REPLY, which is applied like any other but never answered or
   passed on.
2. The calendar data is read once (`meetings.itip`). A REPLY changes only the PARTSTAT and
   the note of the attendee the token names (RFC 5546 §3.2.3), and only when the reply
   names exactly that attendee and comes from their own address (RFC 6047 §2.2.1, §3);
   a SENT-BY the reply writes about itself proves nothing, so a secretary's reply goes to
   a person. A stale reply (RFC 5546 §2.1.5) or one to a cancelled meeting changes
   nothing; a valid reply after a bounce clears the delivery problem.
   PARTSTAT=DELEGATED with DELEGATED-TO sends a substitute (RFC 5546 §3.2.2.3).
3. A COUNTER is recorded and summarised for coordination@ (§3.2.7); a REFRESH has the
   current invitation sent again to the invitee, and to no one else (§3.2.6, §6.1.6).
4. Without calendar data, the command `delegate ADDRESS [NAME]` sends a substitute.
5. Everything else, and everything refused, is passed on, as it came, to coordination@,
   with the reason in an `X-Alliance-RSVP` header (as CalendarServer forwards what it
   cannot process to the organizer). Words only ("I'll come, but late") go attached
   under a note of the meeting, the invitee and their current answer.

Each change (and each REFRESH answered) is an `RsvpEvent` for the coordinator's daily
summary. Processing a message a second time changes nothing. Hostile input is bounded in
`meetings.itip`, and nothing in it makes processing raise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import compat32
from email.utils import getaddresses
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists.automail import automatic
from lists.bounces import failures
from lists.commands import body_lines
from mailer import dates, events, rawmail, robot_mail, templates
from mailer.addresses import AddressError, Role, Route, normalize
from mailer.inbound import HandlerOptions, Inbound, Offload, RoleHandler, parse
from meetings import coordination, invitations, itip, letters, reachability, reports
from meetings.imip import one_line
from meetings.meeting_site import MeetingSite
from meetings.models import Delegate, Invitation, Meeting, RsvpEvent
from meetings.organisation import MeetingError

log = logging.getLogger(__name__)

FORWARD_HEADER = "X-Alliance-RSVP"
CANCELLED = "CANCELLED"
DELEGATED = "DELEGATED"


@dataclass(frozen=True)
class RsvpOutcome:
    """What a message did: applied, unchanged, forward, dropped, delegated, counter,
    refreshed, bounced or undeliverable, and why."""

    action: str
    reason: str = ""


@dataclass(frozen=True)
class Rsvp:
    """What every rule needs: whose invitation, to what meeting, who wrote, and when."""

    site: MeetingSite
    meeting: Meeting
    invitation: Invitation
    sender: str
    now: float
    via: str = "mail"        # or "web": an answer given on the invitee's answer page


class RsvpHandler(RoleHandler):
    """The role handler of `rsvp+TOKEN@`.

    Replies come by the hundred when an invitation has gone out, and each is small, so
    they are handled many to a transaction (`batch`), with their invitations and meetings
    fetched in one query (`preload`). Their messages are parsed with the compat32 policy
    (`policy`), which leaves headers as the strings they are: the modern policy's header
    objects would cost ten times the parse. What the rules read is the same either way
    unless a header they read holds an encoded word or 8-bit bytes, which only the modern
    policy decodes: such a message is parsed again with it (`readable`), as is the rare one
    that needs its API (a command in the body, a delivery report). Reading is pure CPU
    work, done before the transaction, in a worker process when the daemon has them
    (`lazy`: the router leaves the bytes unparsed), else in a thread.
    """

    options = HandlerOptions(batch=50, policy=compat32.clone(message_factory=EmailMessage),
                             lazy=True)

    def __init__(self, site: MeetingSite, workers: Offload | None = None) -> None:
        self.site = site
        self._read = workers.batched(read_many) if workers is not None else None

    def accepts(self, session: Session, route: Route) -> bool:
        """The token is ours and its invitation exists (else 550 at RCPT)."""
        ident = self.site.attendee_tokens.verify(route.token or "")
        table = Invitation.__table__
        return ident is not None and session.connection().execute(
            select(table.c.id).where(table.c.id == ident)).first() is not None

    async def prepare(self, inbound: Inbound) -> Reading:
        """The message read once, before the transaction (pure CPU work)."""
        if self._read is None:
            return await asyncio.to_thread(read, inbound)
        return await self._read((inbound.raw, inbound.mail_from, inbound.message_id))

    def preload(self, session: Session, inbounds: Sequence[Inbound]) -> None:
        """The invitations the tokens name and their meetings, in one query, kept in the
        session so that `handle` finds them without asking the database again."""
        idents = {ident for inbound in inbounds
                  if (ident := self.site.attendee_tokens.verify(inbound.route.token or ""))
                  is not None}
        rows = session.execute(select(Invitation, Meeting)
                               .join(Meeting, Meeting.id == Invitation.meeting_id)
                               .where(Invitation.id.in_(idents))).all()
        session.info.setdefault("rsvp.preloaded", []).extend(rows)

    def handle(self, session: Session, inbound: Inbound) -> None:
        invitation = invitation_of(session, self.site, inbound.route.token or "")
        if invitation is None:
            events.note(session, "rsvp", "refused")
            log.warning("rsvp: message %d to %s: the invitation is gone", inbound.message_id,
                        inbound.recipient,
                        extra={"event": "rsvp", "outcome": "refused",
                               "reason": "the invitation is gone",
                               "stored_id": inbound.message_id})
            return
        reading = inbound.prepared if isinstance(inbound.prepared, Reading) else None
        outcome = process(session, self.site, invitation, inbound, reading)
        events.note(session, "rsvp", outcome.action)
        log.info("rsvp: message %d for invitation %d: %s (%s)", inbound.message_id,
                 invitation.id, outcome.action, outcome.reason,
                 extra={"event": "rsvp", "outcome": outcome.action, "reason": outcome.reason,
                        "meeting": invitation.meeting_id, "invitation": invitation.id,
                        "stored_id": inbound.message_id,
                        "message_id": str(inbound.message.get("message-id", "")).strip()})


def invitation_of(session: Session, site: MeetingSite, token: str) -> Invitation | None:
    """The invitation a genuine rsvp token names, or None."""
    ident = site.attendee_tokens.verify(token)
    return session.get(Invitation, ident) if ident is not None else None


@dataclass(frozen=True)
class Reading:
    """The message as the rules see it, read once."""

    machine: str | None              # why it is automatic mail (RFC 3834), or None
    report: bool                     # a multipart/report: a delivery report (RFC 3464)
    sender: str                      # the From: address, else the envelope sender
    calendars: itip.Calendars
    command: tuple[str, str] | None  # `delegate ADDRESS [NAME]`, when no calendar came


def read_many(stored: Sequence[tuple[bytes, str, int]]) -> list[Reading]:
    """`read` of stored messages (bytes, envelope sender, id), as a worker is given them."""
    return [read(Inbound(0, message_id, Route(Role.RSVP, None, None), "", mail_from, raw,
                         policy=RsvpHandler.options.policy))
            for raw, mail_from, message_id in stored]


def read(inbound: Inbound) -> Reading:
    """Read what the rules need; a message no parser can read is one for a person.

    Never raises: what goes wrong is a problem in the reading.
    """
    try:
        message = readable(inbound)
        calendars = itip.read(message)
        command = None if calendars.messages or calendars.problems \
            else delegate_command(modern(inbound))
        return Reading(automatic(message, inbound.mail_from),
                       itip.content_type_of(message)[0] == "multipart/report",
                       sender_address(inbound), calendars, command)
    except Exception:
        # The standard library's header parser raises on some hostile headers (an
        # IndexError on a broken From:, say): such mail goes to a person, not to quarantine.
        log.warning("rsvp: message %d could not be read", inbound.message_id, exc_info=True)
        return Reading(None, False, "", itip.Calendars(problems=("an unreadable message",)),
                       None)


# Headers whose values the rules take through the email package (the others they read
# raw, the same under any policy): a part's type, name and encoding, a message's date,
# and what marks automatic mail.
DECODED_HEADERS = frozenset({
    "content-type", "content-disposition", "content-transfer-encoding", "date",
    "auto-submitted", "precedence", "list-id", "x-autoreply", "x-autorespond",
    "x-auto-response-suppress"})


def readable(inbound: Inbound) -> EmailMessage:
    """The message as the rules must read it: as parsed, unless compat32 would read one of
    the DECODED_HEADERS of any part differently from the modern policy, that is when its
    value holds an encoded word (RFC 2047) or 8-bit bytes."""
    message = inbound.message
    if hasattr(message.policy, "content_manager"):
        return message
    for part in message.walk():
        for name, value in part.raw_items():
            if name.lower() in DECODED_HEADERS and ("=?" in value or not value.isascii()):
                return modern(inbound)
    return message


def modern(inbound: Inbound) -> EmailMessage:
    """The message with the modern policy's API (`get_body`, `get_content`)."""
    parsed = inbound.parsed
    if parsed is not None:
        if hasattr(parsed.policy, "content_manager"):
            return parsed
    elif hasattr(inbound.policy, "content_manager"):
        return inbound.message
    return parse(inbound.raw)


def sender_address(inbound: Inbound) -> str:
    """The From: address (read from the raw header), else the envelope sender, else ""."""
    raw = [str(value) for name, value in inbound.message.raw_items() if name.lower() == "from"]
    candidates = [address for _, address in getaddresses(raw)] + [inbound.mail_from]
    for candidate in candidates:
        try:
            return normalize(candidate)
        except AddressError:
            continue
    return ""


def process(session: Session, site: MeetingSite, invitation: Invitation,
            inbound: Inbound, reading: Reading | None = None) -> RsvpOutcome:
    """Everything a message to an invitation's rsvp address can do, in the module's order.

    `reading` is the message as `read` read it, if it was read before.
    """
    meeting = session.get(Meeting, invitation.meeting_id)
    assert meeting is not None, "an invitation has its meeting"
    reading = reading or read(inbound)
    if reading.machine or reading.report:
        bounce = bounced(session, invitation, inbound, site.clock())
        if bounce is not None:
            return bounce
    answer = reading.calendars.answer()
    if reading.machine and (answer is None or answer.method != "REPLY"):
        return RsvpOutcome("dropped", f"automatic mail: {reading.machine}")
    rsvp = Rsvp(site, meeting, invitation, reading.sender, site.clock())
    outcome = decide(session, rsvp, reading, answer)
    if outcome.action == "forward":
        if reading.machine:
            return RsvpOutcome("dropped", f"automatic mail: {reading.machine}; {outcome.reason}")
        if is_note(reading):
            forward_note(session, rsvp, inbound, outcome.reason)
        else:
            forward(session, site, inbound, outcome.reason)
    return outcome


def is_note(reading: Reading) -> bool:
    """Whether a person wrote words only: no calendar data at all, and no command."""
    calendars = reading.calendars
    return not calendars.messages and not calendars.problems and reading.command is None


def decide(session: Session, rsvp: Rsvp, reading: Reading,
           answer: itip.ItipMessage | None) -> RsvpOutcome:
    """The rule for what the message carries: an answer, other calendar data, or none."""
    if answer is None:
        return without_answer(session, rsvp, reading)
    if answer.uid != rsvp.meeting.uid:
        return RsvpOutcome("forward", f"{answer.method} about another event (UID {answer.uid!r})")
    if answer.recurrence_id:
        # Our meetings do not repeat: an answer about one occurrence matches none (R23).
        return RsvpOutcome("forward", f"{answer.method} about one occurrence "
                                  f"({answer.recurrence_id}) of a meeting that does not repeat")
    if answer.method == "REPLY":
        return reply(session, rsvp, answer)
    if answer.method == "COUNTER":
        return counter(session, rsvp, answer)
    return refresh(session, rsvp, answer)


# -- who may answer --------------------------------------------------------------------

def authorise(rsvp: Rsvp, answer: itip.ItipMessage, *,
              others: bool = False) -> tuple[itip.AttendeeReply | None, str]:
    """The invitee's ATTENDEE if the answer may act for them, else (None, why).

    The token is the first proof (DESIGN §5): it names the only attendee whose PARTSTAT
    may change. The answer must name that attendee, and no one else except the other side
    of a delegation (RFC 5546 §4.2.5–§4.2.6), or anyone when `others` (a COUNTER may
    propose attendees). The second is the sender: the mail must come from the attendee's
    own address (RFC 6047 §2.2.1). The reply's own SENT-BY (RFC 5545 §3.2.18) is not
    trusted, since whoever forges the From can write it too (RFC 6047 §3); no SENT-BY is
    stored for anyone, so none is accepted, and a missing sender never matches.
    """
    invitee = rsvp.invitation.address.lower()
    mine = answer.attendee(invitee)
    if mine is None:
        named = ", ".join(a.address for a in answer.attendees[:3]) or "no attendee"
        return None, f"the {answer.method} names {named}, not the invitee {invitee}"
    conflict = conflicting(answer, invitee)
    if conflict:
        return None, conflict
    strangers = [a for a in answer.attendees if a.address != invitee
                 and not _delegation_pair(mine, a)]
    if strangers and not others:
        return None, f"the {answer.method} also names {strangers[0].address}"
    if not rsvp.sender or rsvp.sender != invitee:
        return None, f"sent by {rsvp.sender or 'no one'}, not the invitee"
    return mine, ""


def conflicting(answer: itip.ItipMessage, invitee: str) -> str:
    """Why the answer cannot say what the invitee answered, or "": two ATTENDEE lines for
    them with different PARTSTATs. RFC 5545 §3.8.4.1 gives one ATTENDEE per calendar
    user; taking either line would be a guess, so the coordinators decide."""
    lines = [a for a in answer.attendees if a.address == invitee]
    answers = sorted({a.partstat or "?" for a in lines})
    if len(answers) < 2:
        return ""
    return (f"the {answer.method} has {len(lines)} ATTENDEE lines for {invitee} with "
            f"different answers ({', '.join(answers)})")


def _delegation_pair(mine: itip.AttendeeReply, other: itip.AttendeeReply) -> bool:
    """Whether `other` is the substitute `mine` sends, or the delegate `mine` replaces."""
    return (other.address in mine.delegated_to or mine.address in other.delegated_from
            or other.address in mine.delegated_from or mine.address in other.delegated_to)


def revision(rsvp: Rsvp, answer: itip.ItipMessage) -> tuple[int, float]:
    """(SEQUENCE, DTSTAMP) of an answer as compared (RFC 5546 §2.1.5).

    No revision above the meeting's exists, and no reply is written in the future: both
    are capped, so that one odd reply cannot make every later one look stale.
    """
    stamp = answer.stamp if answer.stamp is not None else rsvp.now
    return min(answer.sequence, rsvp.meeting.sequence), min(stamp, rsvp.now)


def stale(invitation: Invitation, sequence: int, stamp: float) -> str | None:
    """Why a reply is too old to apply, or None (RFC 5546 §2.1.5; itip.md §1.3).

    A reply to a version before the last reset of PARTSTAT (a new time) answers a question
    no longer asked; a reply older than the last one applied (a lower SEQUENCE, or the same
    with an earlier DTSTAMP) arrived out of order. An equal (SEQUENCE, DTSTAMP) is applied
    again, which changes nothing when it is the same message, and lets a client that echoes
    the request's DTSTAMP change its answer.
    """
    if sequence < invitation.reset_sequence:
        return (f"it answers SEQUENCE {sequence}, before the change at "
                f"SEQUENCE {invitation.reset_sequence}")
    if invitation.reply_sequence is not None and \
            (sequence, stamp) < (invitation.reply_sequence, invitation.reply_stamp or 0.0):
        return "it is older than the reply already applied"
    return None


def closed(rsvp: Rsvp) -> str | None:
    """Why answers to this invitation change nothing any more, or None."""
    if rsvp.meeting.status == CANCELLED:
        return "the meeting is cancelled"
    if rsvp.invitation.state == "removed":
        return "the invitee was removed from the meeting"
    return None


# -- REPLY -----------------------------------------------------------------------------

def reply(session: Session, rsvp: Rsvp, answer: itip.ItipMessage) -> RsvpOutcome:
    """Apply a REPLY: the invitee's PARTSTAT and note, nothing else (RFC 5546 §3.2.3)."""
    attendee, why = authorise(rsvp, answer)
    if attendee is None:
        return RsvpOutcome("forward", why)
    why_not = closed(rsvp)
    sequence, stamp = revision(rsvp, answer)
    why_not = why_not or stale(rsvp.invitation, sequence, stamp)
    if why_not:
        return RsvpOutcome("unchanged", why_not)
    if not attendee.partstat:
        return RsvpOutcome("forward", "an unreadable PARTSTAT")
    if rsvp.invitation.partstat == DELEGATED and attendee.partstat != DELEGATED:
        # Taking the seat back while a substitute holds it is for the coordinator to settle.
        return RsvpOutcome("forward", f"the invitee has sent {rsvp.invitation.delegated_to} "
                                  "in their place")
    if attendee.partstat == DELEGATED:
        outcome = delegation(session, rsvp, answer, attendee)
    else:
        outcome = apply(session, rsvp, attendee.partstat, answer.note(attendee))
    if outcome.action != "forward":
        rsvp.invitation.reply_sequence, rsvp.invitation.reply_stamp = sequence, stamp
        reachability.reachable(rsvp.invitation)
    return outcome


def apply(session: Session, rsvp: Rsvp, partstat: str, comment: str) -> RsvpOutcome:
    """Store an answer and record the change; the same answer again changes nothing."""
    invitation = rsvp.invitation
    if (invitation.partstat, invitation.comment) == (partstat, comment) \
            and not invitation.by_hand:
        return RsvpOutcome("unchanged", f"{partstat} again")
    invitation.partstat, invitation.comment, invitation.replied_at = \
        partstat, comment, rsvp.now
    invitation.by_hand = False      # the invitee's own word replaces one given by hand
    record(session, rsvp, "reply", partstat, comment)
    if partstat == "DECLINED" and invitation.delegated_from_id is not None:
        ask_delegator_again(session, rsvp)
    return RsvpOutcome("applied", partstat)


def ask_delegator_again(session: Session, rsvp: Rsvp) -> None:
    """A substitute declined: their delegator gets the REQUEST again (RFC 5546 §4.2.7).

    The seat goes back to the delegator, so the substitute is uninvited (a CANCEL naming
    only them): a party never has two invitees who may answer for it (DESIGN §1).
    """
    substitute = rsvp.invitation
    delegator = session.get(Invitation, substitute.delegated_from_id or 0)
    if delegator is None or delegator.partstat != DELEGATED \
            or delegator.delegated_to != substitute.address:
        return
    delegator.partstat, delegator.delegated_to = "NEEDS-ACTION", ""
    invitations.withdraw(session, rsvp.site, rsvp.meeting,
                         [substitute, *invitations.substitutes(session, substitute)])
    invitations.send_current(session, rsvp.site, rsvp.meeting, delegator)


def record(session: Session, rsvp: Rsvp, kind: str, partstat: str, detail: str) -> None:
    """One change, for the daily summary of the coordinator; one given on the web is
    marked so ("reply-web", "delegated-web")."""
    kind = kind if rsvp.via == "mail" else f"{kind}-{rsvp.via}"
    session.add(RsvpEvent(meeting_id=rsvp.meeting.id, invitation_id=rsvp.invitation.id,
                          kind=kind, partstat=partstat, detail=detail[:itip.MAX_TEXT],
                          at=rsvp.now))


# -- answers given on the web ----------------------------------------------------------

@dataclass(frozen=True)
class WebAnswer:
    """What an invitee chose on their answer page: a PARTSTAT (or DELEGATED and the
    substitute), a comment, and the SEQUENCE of the meeting as the page showed it."""

    partstat: str
    comment: str
    sequence: int
    substitute: str = ""
    substitute_name: str = ""

    def as_reply(self, uid: str, invitee: str, now: float) -> itip.ItipMessage:
        """The answer as the REPLY the invitee's calendar would have sent (RFC 5546
        §3.2.3; with DELEGATED, §3.2.2.3 and its DELEGATED-FROM line for the substitute)."""
        delegated = self.partstat == DELEGATED
        own = itip.AttendeeReply(invitee, partstat=self.partstat, comment=self.comment,
                                 delegated_to=(self.substitute,) if delegated else ())
        other = (itip.AttendeeReply(self.substitute, self.substitute_name,
                                    delegated_from=(invitee,)),) \
            if delegated and self.substitute and self.substitute != invitee else ()
        # DTSTAMP in whole seconds, as the REQUEST sent back writes it: a client that
        # echoes that DTSTAMP in a later reply of its own is not taken for a stale one.
        return itip.ItipMessage("REPLY", uid, self.sequence, float(int(now)), "",
                                (own, *other))


def answer_on_web(session: Session, site: MeetingSite, invitation: Invitation,
                  answer: WebAnswer) -> RsvpOutcome:
    """An answer given on the invitee's page (reached by their own signed link), under
    the rules of a REPLY by mail (`reply`): a cancelled meeting, a removed invitee, an
    answer to a version before a change of time, a delegator taking the seat back and the
    charter's rules for substitutes all refuse it alike. The link is the proof of who
    answers, as their own address is for mail. An answer that changes something is sent
    back to the invitee's calendar: the REQUEST again, to them only, with their PARTSTAT
    in their ATTENDEE line (as Google Calendar does), so that calendar and attendance agree.
    """
    meeting = session.get(Meeting, invitation.meeting_id)
    assert meeting is not None, "an invitation has its meeting"
    invitee = invitation.address.lower()
    rsvp = Rsvp(site, meeting, invitation, invitee, site.clock(), via="web")
    outcome = reply(session, rsvp, answer.as_reply(meeting.uid, invitee, rsvp.now))
    if outcome.action in ("applied", "delegated"):
        invitations.send_answered(session, site, meeting, invitation)
    return outcome


# -- substitutes -----------------------------------------------------------------------

def delegation(session: Session, rsvp: Rsvp, answer: itip.ItipMessage,
               attendee: itip.AttendeeReply) -> RsvpOutcome:
    """PARTSTAT=DELEGATED: the one DELEGATED-TO gets an invitation (RFC 5546 §4.2.5)."""
    if len(attendee.delegated_to) != 1:
        return RsvpOutcome("forward", "a delegation must name exactly one substitute "
                                  f"(DELEGATED-TO has {len(attendee.delegated_to)})")
    address = attendee.delegated_to[0]
    named = answer.attendee(address)
    return send_substitute(session, rsvp, address, named.name if named else "")


def send_substitute(session: Session, rsvp: Rsvp, address: str, name: str) -> RsvpOutcome:
    """The invitee sends a substitute; the charter's rules are `invitations.delegate`'s.

    That marks the invitee DELEGATED and sends the substitute their REQUEST; the change is
    recorded here. A refusal (one delegate per party, a closed meeting, ...) changes nothing.
    """
    try:
        address = normalize(address)
    except AddressError:
        return RsvpOutcome("forward", "the substitute's address is not an address")
    why_not = closed(rsvp)
    if why_not:
        return RsvpOutcome("unchanged", why_not)
    invitation = rsvp.invitation
    if invitation.partstat == DELEGATED and invitation.delegated_to == address:
        return RsvpOutcome("unchanged", f"{address} is already the substitute")
    try:
        with session.begin_nested():
            invitations.delegate(session, rsvp.site, rsvp.meeting, invitation, address,
                                 one_line(name))
    except MeetingError as error:
        return RsvpOutcome("forward", f"the substitute cannot be invited: {error}")
    invitation.replied_at = rsvp.now
    record(session, rsvp, "delegated", DELEGATED, address)
    return RsvpOutcome("delegated", address)


def delegate_command(message: EmailMessage) -> tuple[str, str] | None:
    """(address, name) of a `delegate ADDRESS [NAME]` first line in the body, or None.

    >>> from mailer.inbound import parse
    >>> delegate_command(parse(b"Subject: Re: Invitation\\r\\n\\r\\n\\r\\n"
    ...                        b"Delegate <kofi@party.test> Kofi Mensah\\r\\n> quoted\\r\\n"))
    ('kofi@party.test', 'Kofi Mensah')
    >>> delegate_command(parse(b"\\r\\nI will come.\\r\\ndelegate kofi@party.test\\r\\n"))
    """
    for line in body_lines(message):
        words = line.split()
        if not words:
            continue
        if words[0].lower().rstrip(":") != "delegate" or len(words) < 2:
            return None
        address = words[1].strip("<>").removeprefix("mailto:")
        return address, " ".join(words[2:])[:200]
    return None


# -- COUNTER and REFRESH ---------------------------------------------------------------

def counter(session: Session, rsvp: Rsvp, answer: itip.ItipMessage) -> RsvpOutcome:
    """Record a proposal and tell coordination@; the meeting is unchanged (RFC 5546 §3.2.7).

    A COUNTER to a SEQUENCE above the meeting's answers no version we sent: it is passed
    on, not recorded (RFC 5546 §2.1.5; itip.md R32).
    """
    attendee, why = authorise(rsvp, answer, others=True)
    if attendee is None:
        return RsvpOutcome("forward", why)
    if answer.sequence > rsvp.meeting.sequence:
        return RsvpOutcome("forward", f"a COUNTER to SEQUENCE {answer.sequence}, a version of "
                                  f"the meeting that does not exist (itip.md R32)")
    why_not = closed(rsvp)
    if why_not:
        return RsvpOutcome("unchanged", why_not)
    proposal = Proposal.of(rsvp.meeting, rsvp.invitation, answer, answer.note(attendee))
    detail = proposal.line[:itip.MAX_TEXT]      # compared as it is stored
    if session.scalar(select(RsvpEvent.id).where(
            RsvpEvent.invitation_id == rsvp.invitation.id, RsvpEvent.kind == "counter",
            RsvpEvent.detail == detail).limit(1)) is not None:
        return RsvpOutcome("unchanged", "the same proposal again")
    record(session, rsvp, "counter", rsvp.invitation.partstat, detail)
    summarise(session, rsvp, proposal)
    return RsvpOutcome("counter", proposal.line)


@dataclass(frozen=True)
class Proposal:
    """A COUNTER as the coordinator reads it, in the meeting's own time zone."""

    start: str
    end: str
    location: str
    comment: str
    outdated: bool          # made against an earlier version than the attendee last had

    @classmethod
    def of(cls, meeting: Meeting, invitation: Invitation, answer: itip.ItipMessage,
           comment: str) -> Proposal:
        """The proposal, judged against the SEQUENCE this attendee last received (RFC 5546
        §2.1.5): the meeting's may have risen since for other invitees' sake (one
        uninvited, a substitute's chain), which makes no proposal of theirs stale."""
        received = invitation.sent_sequence if invitation.sent_sequence is not None \
            else meeting.sequence
        return cls(local_time(answer.start, meeting.tz), local_time(answer.end, meeting.tz),
                   answer.location, comment, answer.sequence < received)

    @property
    def line(self) -> str:
        """The proposal in one line, as recorded."""
        parts = [f"{self.start or '?'} - {self.end or '?'}"]
        parts += [text for text in (self.location, self.comment) if text]
        return "; ".join(one_line(part) for part in parts)


def local_time(moment: datetime | None, tz: str) -> str:
    """A proposed time as wall time in the meeting's zone (floating times as they are).

    >>> from datetime import timezone
    >>> local_time(datetime(2027, 3, 14, 8, 0, tzinfo=timezone.utc), "Europe/Paris")
    '2027-03-14 09:00'
    >>> local_time(None, "Europe/Paris")
    ''
    """
    if moment is None:
        return ""
    if moment.tzinfo is not None:
        moment = moment.astimezone(ZoneInfo(tz))
    return moment.strftime("%Y-%m-%d %H:%M")


def summarise(session: Session, rsvp: Rsvp, proposal: Proposal) -> None:
    """The readable summary of a COUNTER, to coordination@, in the coordinator's language."""
    meeting, invitation = rsvp.meeting, rsvp.invitation
    context = {"title": meeting.title, "meeting_id": meeting.id,
               "name": invitation.name or invitation.address, "address": invitation.address,
               "current_start": meeting.start_local.replace("T", " ")[:16],
               "current_end": meeting.end_local.replace("T", " ")[:16], "tz": meeting.tz,
               "current_location": meeting.location, "proposed_start": proposal.start,
               "proposed_end": proposal.end, "proposed_location": proposal.location,
               "comment": proposal.comment, "outdated": proposal.outdated,
               "site_name": rsvp.site.name}
    site = rsvp.site
    subject, body = templates.render(site.templates, "counter_summary",
                                   coordination_language(session), context)
    own = site.address(coordination.LOCAL)
    data = robot_mail.robot_message(sender=(site.name, own), to=own, subject=subject, body=body,
                                 domain=site.domain, reply_to=invitation.address,
                                 auto="auto-generated")
    coordination.forward(session, site, data)


def coordination_language(session: Session) -> str:
    """The language of the first coordination contact, when they are a delegate."""
    contact = next(iter(coordination.contacts(session)), None)
    language = session.scalar(select(Delegate.language).where(Delegate.address == contact)) \
        if contact else None
    return templates.language_of(language)


def refresh(session: Session, rsvp: Rsvp, answer: itip.ItipMessage) -> RsvpOutcome:
    """Send the invitee the current invitation again (RFC 5546 §3.2.6); only to them."""
    attendee, why = authorise(rsvp, answer)
    if attendee is None:
        return RsvpOutcome("forward", why)
    if invitations.send_current(session, rsvp.site, rsvp.meeting, rsvp.invitation) == 0:
        return RsvpOutcome("unchanged", f"nothing to send ({rsvp.invitation.state}, the "
                                    "meeting is over or the invitation is not active)")
    record(session, rsvp, "refresh", rsvp.invitation.partstat, "")
    return RsvpOutcome("refreshed", f"SEQUENCE {rsvp.meeting.sequence}")


# -- mail without an answer ------------------------------------------------------------

def without_answer(session: Session, rsvp: Rsvp, reading: Reading) -> RsvpOutcome:
    """Other calendar data, a `delegate` command, or a person writing: who acts on it."""
    calendars, command = reading.calendars, reading.command
    if calendars.messages:
        methods = ", ".join(sorted({m.method or "no METHOD" for m in calendars.messages}))
        return RsvpOutcome("forward", f"calendar data that is not an answer ({methods})")
    if calendars.problems:
        return RsvpOutcome("forward", "; ".join(calendars.problems[:3]))
    if command is None:
        return RsvpOutcome("forward", "no calendar data")
    if rsvp.sender != rsvp.invitation.address.lower():
        return RsvpOutcome("forward", f"a delegate command from {rsvp.sender or 'no one'}, "
                                  "not the invitee")
    return send_substitute(session, rsvp, *command)


def forward(session: Session, site: MeetingSite, inbound: Inbound, reason: str) -> None:
    """Pass the message on, as it came, to the people behind coordination@, saying why.

    It goes to them directly, as the coordination@ handler would pass it on, rather than
    out to the smarthost and back in through our own MX.
    """
    why = one_line(reason).encode("ascii", "replace").decode()[:300]
    data = rawmail.rewrite(inbound.raw, {FORWARD_HEADER.lower()}, [(FORWARD_HEADER, why)])
    coordination.forward(session, site, data)


def forward_note(session: Session, rsvp: Rsvp, inbound: Inbound, reason: str) -> None:
    """Words about an invitation with no calendar in them ("I'll come, but late"), to the
    coordinators: attached as they came (RFC 2046 §5.2.1), under what they need to act on
    them: the meeting, the invitee, where their answer stands, and how to record one."""
    invitation, meeting, site = rsvp.invitation, rsvp.meeting, rsvp.site
    language = coordination_language(session)
    context = {"sender": rsvp.sender or "someone", "title": meeting.title,
               "meeting_id": meeting.id, "when": letters.span_of(meeting).local(language),
               "name": invitation.name or invitation.address, "address": invitation.address,
               "partstat": invitation.partstat, "answered": reports.answered(
                   invitation, invitation.id in reports.on_the_web(session, meeting.id)),
               "replied_at": "" if invitation.replied_at is None
               else dates.stamp(invitation.replied_at, language),
               "comment": invitation.comment, "site_name": site.name,
               "delivery": reachability.delivery_note(invitation)}
    subject, body = templates.render(site.templates, "rsvp_note", language, context)
    own = site.address(coordination.LOCAL)
    note = robot_mail.robot_message(
        sender=(site.name, own), to=own, subject=subject, body=body, domain=site.domain,
        reply_to=rsvp.sender or invitation.address, auto="auto-generated",
        headers=[(FORWARD_HEADER, one_line(reason).encode("ascii", "replace").decode()[:300])])
    coordination.forward(session, site, robot_mail.with_original(note, inbound.raw))


def bounced(session: Session, invitation: Invitation, inbound: Inbound,
            now: float) -> RsvpOutcome | None:
    """A delivery report about mail to the invitee: a delay is dropped; a failure is kept
    beside their answer and scored (`meetings.reachability`); None if it is no report."""
    report = modern(inbound)
    found = failures(report)
    if found.kind is None:
        return None
    if found.kind == "soft":
        return RsvpOutcome("dropped", "a report of delayed delivery")
    problem = reachability.problem_of(report, invitation.address)
    return RsvpOutcome(*reachability.register(session, invitation, problem, now))
