"""Bounces: mail to `NAME-bounces+TOKEN@` counts against the member the token names.

List mail leaves with the envelope sender `NAME-bounces+TOKEN@` (VERP), the token signed
over the member's row id, so a bounce names its member without reading the report. The
report still decides what kind of bounce it is: flufl.bounce reads RFC 3464 delivery status
notifications and the common non-standard formats. A permanent failure (RFC 3464 §2.3.3
`Action: failed`, status 5.x.x) is hard, a delay (`Action: delayed`, 4.x.x) is soft;
anything else at a bounce address (auto-replies, spam) is discarded, never forwarded.

Scoring follows Mailman's policy: at most one scored bounce per member per day (hard 1.0,
soft 0.5), a score older than the list's `bounce_decay_days` starts again from 0, and at
`bounce_threshold` delivery is disabled until the member confirms a re-enable token.
Robot mail leaves from `NAME-bounces@` without a token; bounces of it reach members only
by the failed addresses the report names, and never count against a disabled member, so
the notice that delivery was disabled cannot bounce its way into another notice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from flufl.bounce import all_failures
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lists import robot, service, subscriptions
from lists.handler import ListHandler
from lists.list_site import ListSite
from lists.models import Bounce, MailingList, Member, Pending
from mailer import events
from mailer.addresses import Route
from mailer.inbound import Inbound
from mailer.jobs import Job
from mailer.models import Outgoing
from mailer.outbox import Refusal

log = logging.getLogger(__name__)

DAY = 86_400.0
Kind = Literal["hard", "soft"]
WEIGHTS: dict[str, float] = {"hard": 1.0, "soft": 0.5}


@dataclass(frozen=True)
class Failures:
    """The addresses a bounce reports as failed for good and as failed for now."""

    permanent: frozenset[str] = frozenset()
    temporary: frozenset[str] = frozenset()

    @property
    def kind(self) -> Kind | None:
        """hard if anything failed for good, soft if only delays, None if not a bounce.

        >>> Failures(frozenset({"a@x.test"}), frozenset({"b@x.test"})).kind
        'hard'
        >>> Failures(temporary=frozenset({"b@x.test"})).kind
        'soft'
        >>> Failures().kind is None
        True
        """
        if self.permanent:
            return "hard"
        return "soft" if self.temporary else None

    def kind_of(self, address: str) -> Kind | None:
        """What the report says about one address (RFC 3464 §2.3.3 Action)."""
        if address in self.permanent:
            return "hard"
        return "soft" if address in self.temporary else None


def failures(message: Message) -> Failures:
    """Read a bounce with flufl.bounce: DSNs (RFC 3464) first, then per-MTA formats."""
    try:
        temporary, permanent = all_failures(message)
    except Exception:
        # A detector that trips over a malformed message must not put the work in
        # quarantine again and again: the message is treated as not a bounce.
        log.warning("bounce detectors failed on a message; treating it as no bounce",
                    exc_info=True)
        return Failures()
    return Failures(_addresses(permanent), _addresses(temporary))


def _addresses(found: frozenset[bytes]) -> frozenset[str]:
    return frozenset(raw.decode("ascii", "replace").strip().lower() for raw in found)


# -- scoring -----------------------------------------------------------------------------

def _scored_today(session: Session, member: Member, now: float) -> float:
    """The largest weight among this member's bounces recorded since midnight (UTC)."""
    kinds = session.scalars(select(Bounce.kind).where(
        Bounce.member_id == member.id, Bounce.received_at >= now - now % DAY))
    return max((WEIGHTS.get(kind, 0.0) for kind in kinds), default=0.0)


def register(session: Session, site: ListSite, mailing_list: MailingList, member: Member,
             kind: Kind, message_id: int) -> None:
    """Record one bounce and score it: one per member per day, hard 1.0, soft 0.5."""
    if not member.enabled:
        log.info("bounces: residual %s bounce for %s on %s, delivery already disabled",
                 kind, member.address, mailing_list.name)
        return
    now = site.clock()
    if member.last_bounce_at is not None \
            and now - member.last_bounce_at > mailing_list.bounce_decay_days * DAY:
        member.bounce_score = 0.0
    # What today already added, unless the score was reset since (decay or re-enable).
    counted = min(_scored_today(session, member, now), member.bounce_score)
    member.bounce_score += max(0.0, WEIGHTS[kind] - counted)
    member.last_bounce_at = now
    session.add(Bounce(list_id=mailing_list.id, member_id=member.id, message_id=message_id,
                       received_at=now, kind=kind))
    events.note(session, "bounced", f"{kind} bounce")
    log.info("bounces: %s bounce for %s on %s, score %.1f of %.1f", kind, member.address,
             mailing_list.name, member.bounce_score, mailing_list.bounce_threshold,
             extra={"event": "bounced", "outcome": f"{kind} bounce", "list": mailing_list.name,
                    "stored_id": message_id, "recipient": member.address,
                    "score": member.bounce_score})
    if member.bounce_score >= mailing_list.bounce_threshold:
        disable(session, site, mailing_list, member)


def disable(session: Session, site: ListSite, mailing_list: MailingList,
            member: Member) -> Pending:
    """Stop delivery to a member; mail them a re-enable token and tell the owners."""
    member.enabled, member.disabled_reason = False, "bounces"
    pending = subscriptions.open_pending(session, site, mailing_list, "reenable",
                                         member.address, display_name=member.display_name,
                                         language=member.language)
    confirm = subscriptions.confirm_address(site, mailing_list, pending.token)
    robot.send(session, site, mailing_list, "bounce_disabled", to=member.address,
               language=member.language, kind="notice", reply_to=confirm,
               member_id=member.id,
               context={"address": member.address, "token": pending.token,
                        "confirm_address": confirm, "days": mailing_list.confirm_days})
    robot.notify_moderators(session, site, mailing_list, "bounce_owner_notice",
                            {"address": member.address, "score": member.bounce_score,
                             "threshold": mailing_list.bounce_threshold},
                            service.moderators(session, mailing_list.id))
    log.info("bounces: delivery to %s on %s disabled", member.address, mailing_list.name)
    return pending


def decay(session: Session, now: float) -> int:
    """Scheduler job: forget the scores of enabled members whose last bounce is old."""
    window = (select(MailingList.bounce_decay_days * DAY)
              .where(MailingList.id == Member.list_id).scalar_subquery())
    session.execute(update(Member).where(
        Member.enabled.is_(True), Member.bounce_score > 0,
        Member.last_bounce_at < now - window).values(bounce_score=0.0)
        .execution_options(synchronize_session=False))
    return 0


DECAY = Job("bounce-decay", 3600.0, decay)


# -- the role handler ----------------------------------------------------------------------

def verp_member(session: Session, site: ListSite, mailing_list: MailingList,
                token: str) -> Member | None:
    """The member of this list a VERP token names, or None."""
    member_id = site.member_tokens.verify(token)
    member = session.get(Member, member_id) if member_id is not None else None
    if member is None or member.list_id != mailing_list.id or member.role != "member":
        return None
    return member


def named_members(session: Session, mailing_list: MailingList,
                  found: Failures) -> list[tuple[Member, Kind]]:
    """Members of the list among the failed addresses a report names (no token: best effort)."""
    addresses = sorted(found.permanent | found.temporary)
    if not addresses:
        return []
    members = session.scalars(select(Member).where(
        Member.list_id == mailing_list.id, Member.role == "member",
        Member.address.in_(addresses)))
    return [(member, kind) for member in members
            if (kind := found.kind_of(member.address)) is not None]


class BounceHandler(ListHandler):
    """The role handler for `NAME-bounces@` and `NAME-bounces+TOKEN@`."""

    def accepts(self, session: Session, route: Route) -> bool:
        """The list exists, and a token, if there is one, is ours (else 550 at RCPT)."""
        return super().accepts(session, route) and (
            route.token is None or self.site.member_tokens.verify(route.token) is not None)

    def handle(self, session: Session, inbound: Inbound) -> None:
        mailing_list = service.find(session, inbound.route.list or "")
        found = failures(inbound.message)
        if inbound.route.token is None:
            # Only a signed VERP token proves which member a bounce is about; anyone can
            # write a DSN that names a member, so these are logged, never scored.
            named = named_members(session, mailing_list, found)
            log.info("bounces: message %d to %s without a token, not scored (names %s)",
                     inbound.message_id, inbound.recipient,
                     ", ".join(m.address for m, _ in named) or "no member")
            return
        member = verp_member(session, self.site, mailing_list, inbound.route.token)
        if member is None or found.kind is None:
            log.info("bounces: message %d to %s discarded: %s", inbound.message_id,
                     inbound.recipient,
                     "not a bounce" if found.kind is None else "names no member")
            return
        register(session, self.site, mailing_list, member, found.kind, inbound.message_id)


def smarthost_refusals(site: ListSite) -> Callable[[Session, list[Refusal]], None]:
    """What the delivery engine calls when the next hop refuses a member's address.

    A 5xx at our own smarthost is a bounce as good as a DSN (DESIGN §2: "5xx → bounce"),
    but only a refusal of the mailbox itself (enhanced code 5.1.x, RFC 3463) scores: a
    policy refusal of our whole message must not count against every member at once.
    """
    def scored(session: Session, refusals: list[Refusal]) -> None:
        for refusal in refusals:
            if not refusal.text.startswith("5.1."):
                continue
            member = session.get(Member, refusal.member_id)
            outgoing = session.get(Outgoing, refusal.outgoing_id)
            if member is None or member.role != "member" or outgoing is None \
                    or outgoing.source_id is None:
                continue
            mailing_list = session.get(MailingList, member.list_id)
            assert mailing_list is not None
            register(session, site, mailing_list, member, "hard", outgoing.source_id)

    return scored
