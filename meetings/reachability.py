"""Whether an invitee can be reached: delivery reports about invitation mail, scored.

A message that failed for good (RFC 3464 §2.3.3 `Action: failed`) is a problem of that
message: it is shown to the coordinators beside the invitee's answer, which it never
changes, and it stops no later update, reminder or CANCEL by itself. Only failures of the
address itself count towards stopping: a status of subject X.1 (addressing) or X.2
(mailbox) (RFC 3463 §3.3, §3.4), or one that names no cause (X.0.0, §3.1, or no status
at all). They score one a day at most, as list bounces do (`lists.bounces`); at
STOP_AFTER the invitation is undeliverable and no more mail goes to it. A refusal of the
message (X.3 system, X.4 network, X.5 protocol, X.6 content, X.7 policy: a content
filter's 5.7.1) scores nothing. A valid reply from the invitee proves that the address
works, and clears both (`reachable`).

The score is kept per invitation, as a list bounce is per membership: a dead address
stops getting one meeting's mail, and another meeting's first message is tried again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from sqlalchemy.orm import Session

from meetings.models import Invitation, RsvpEvent

STOP_AFTER = 3          # hard failures of the address, on different days, that stop mail
DAY = 86_400.0
MAX_PARTS = 50          # parts of a report looked at
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
ADDRESS_SUBJECTS = ("0", "1", "2")  # RFC 3463 §3.1 undefined, §3.3 address, §3.4 mailbox


@dataclass(frozen=True)
class Problem:
    """What a delivery report says about one recipient."""

    status: str         # the enhanced status code (RFC 3463), "" when the report has none
    diagnostic: str     # the remote server's words, on one line

    @property
    def of_address(self) -> bool:
        """Whether it says the address fails, or names no cause (RFC 3463 §3.1-§3.4).

        >>> Problem("5.1.1", "").of_address, Problem("5.7.1", "").of_address
        (True, False)
        >>> Problem("", "").of_address, Problem("5.0.0", "").of_address
        (True, True)
        """
        return not self.status or self.status.split(".")[1] in ADDRESS_SUBJECTS

    def line(self, now: float) -> str:
        """The problem as the coordinators read it, dated (UTC).

        >>> Problem("5.7.1", "550 5.7.1 Message rejected").line(0.0)
        '5.7.1 on 1970-01-01: 550 5.7.1 Message rejected'
        """
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        text = f"{self.status or 'failed'} on {day}"
        return (f"{text}: {self.diagnostic}" if self.diagnostic else text)[:300]


def problem_of(report: Message, address: str) -> Problem:
    """What a report says about `address`: its Status and Diagnostic-Code (RFC 3464
    §2.3.4, §2.3.6), else those of the first failed recipient (a forwarder's address),
    else the first enhanced status code in its text (reports that are no DSN)."""
    blocks = list(_recipient_blocks(report))
    chosen = next((b for b in blocks if _recipient(b) == address.lower()), None) or next(
        (b for b in blocks if str(b.get("action", "")).strip().lower() == "failed"), None)
    if chosen is not None:
        found = _STATUS.search(str(chosen.get("status", "")))
        diagnostic = " ".join(str(chosen.get("diagnostic-code", "")).split())
        return Problem(found.group(0) if found else "",
                       diagnostic.partition(";")[2].strip() or diagnostic)
    return Problem(_status_in_text(report), "")


def _recipient_blocks(report: Message) -> Iterator[Message]:
    """The per-recipient field blocks of every message/delivery-status part (RFC 3464 §2)."""
    for count, part in enumerate(report.walk()):
        if count >= MAX_PARTS:
            return
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks[1:] if isinstance(blocks, list) else ():
            if isinstance(block, Message):
                yield block


def _recipient(block: Message) -> str:
    """The address of Final-Recipient (`rfc822; ana@party.test`), in lower case."""
    return str(block.get("final-recipient", "")).rpartition(";")[2].strip().lower()


def _status_in_text(report: Message) -> str:
    """The first permanent enhanced status code in the report's first text part."""
    for count, part in enumerate(report.walk()):
        if count >= MAX_PARTS:
            break
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            text = payload[:20_000].decode("ascii", "replace") \
                if isinstance(payload, bytes) else ""
            found = next((m for m in _STATUS.finditer(text) if m.group(1) == "5"), None)
            return found.group(0) if found else ""
    return ""


def register(session: Session, invitation: Invitation, problem: Problem,
             now: float) -> tuple[str, str]:
    """Record a failed message to the invitee: (action, reason) for the log.

    The problem is kept on the invitation and recorded for the daily summary; a failure of
    the address scores one a day, and the STOP_AFTER-th makes the invitation undeliverable.
    The same report again changes nothing.
    """
    line = problem.line(now)
    scored = problem.of_address and (invitation.last_bounce_at is None
                                     or _day(invitation.last_bounce_at) != _day(now))
    if line == invitation.problem and not scored:
        return "unchanged", f"the same problem again ({line})"
    invitation.problem = line
    if scored:
        invitation.bounce_score += 1.0
        invitation.last_bounce_at = now
    session.add(RsvpEvent(meeting_id=invitation.meeting_id, invitation_id=invitation.id,
                          kind="bounce", partstat=invitation.partstat, detail=line, at=now))
    if invitation.state == "active" and invitation.bounce_score >= STOP_AFTER:
        invitation.state = "undeliverable"
        return "undeliverable", f"{line}; the address failed {STOP_AFTER} times: no more mail"
    return "bounced", line


def _day(moment: float) -> int:
    return int(moment // DAY)


def reachable(invitation: Invitation) -> None:
    """A valid reply from the invitee: their address works. An undeliverable invitation is
    active again, for updates and reminders, and the failures are forgotten."""
    if invitation.state == "undeliverable":
        invitation.state = "active"
    invitation.bounce_score, invitation.last_bounce_at, invitation.problem = 0.0, None, ""


def delivery_note(invitation: Invitation) -> str:
    """What the coordinators see beside the answer: the last problem, and whether mail to
    the invitee has stopped."""
    if invitation.state == "undeliverable":
        return f"no more mail, the address failed {STOP_AFTER} times; last: " \
               f"{invitation.problem or 'failed'}"
    return f"a message failed: {invitation.problem}" if invitation.problem else ""
