"""Held posts: the moderators' notice, their decision (by mail or CLI), and expiry.

A held post keeps its raw message (it is never lost) and gets a token of its own; the
moderators answer by replying to `NAME-confirm+TOKEN@` with `approve`, `reject [reason]`
or `discard` on the first line, or with `alliance list moderate`. The poster is told
that the post waits, and told again if it is rejected or expires; never when the post
came from a robot (RFC 3834).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import robot, service, subscriptions
from lists.automail import automatic
from lists.list_site import ListSite
from lists.models import Held, MailingList
from lists.pipeline import distribute
from lists.post import Decision, Post, PostFacts, senders_of
from lists.subscriptions import RequestOutcome
from mailer.arc import Assessment
from mailer.inbound import parse
from mailer.models import Message

log = logging.getLogger(__name__)
DAY = 86_400.0
DECISIONS = {"approve": "approved", "reject": "rejected", "discard": "discarded"}


def _subject(post: Post) -> str:
    return " ".join(str(post.message.get("subject", "")).split())[:500]


def hold(session: Session, site: ListSite, post: Post, decision: Decision) -> Held:
    """Keep the post for a moderator; tell the moderators and the poster."""
    reason = decision.reason
    now = site.clock()
    mailing_list = post.mailing_list
    held = Held(list_id=mailing_list.id, message_id=post.message_id,
                sender=post.senders[0] if post.senders else post.mail_from,
                subject=_subject(post), reason=reason, held_at=now,
                expires_at=now + mailing_list.hold_days * DAY,
                note=json.dumps({"dmarc_policy": post.facts.dmarc_policy,
                                 "reason_code": decision.code,
                                 "arc": dataclasses.astuple(post.facts.arc)
                                 if post.facts.arc else None}))
    session.add(held)
    session.flush()
    held.token = f"h{held.id}-{subscriptions.new_secret()}"
    reply_to = subscriptions.confirm_address(site, mailing_list, held.token)
    context = {"sender": held.sender, "post_subject": held.subject, "reason": reason,
               "reason_code": decision.code,
               "token": held.token, "confirm_address": reply_to, "id": held.id,
               "days": mailing_list.hold_days}
    robot.notify_moderators(session, site, mailing_list, "held_moderator", context,
                            service.moderators(session, mailing_list.id), reply_to)
    _tell_poster(session, site, post, "held_poster",
                 {"post_subject": held.subject, "reason": reason,
                  "reason_code": decision.code})  # never the moderators' token
    return held


def refuse(session: Session, site: ListSite, post: Post, decision: Decision) -> None:
    """Reject a post outright (non-member action `reject`): the poster is told why."""
    _tell_poster(session, site, post, "post_rejected",
                 {"post_subject": _subject(post), "reason": decision.reason,
                  "reason_code": decision.code})


def _tell_poster(session: Session, site: ListSite, post: Post, template: str,
                 context: dict[str, object]) -> None:
    if automatic(post.message, post.mail_from) or not post.senders:
        return
    poster = post.senders[0]
    if not robot.allowed(session, site, kind="reply", target=poster, sources=(poster,)):
        return
    member = service.member(session, post.mailing_list.id, poster)
    robot.send(session, site, post.mailing_list, template, to=poster,
               language=member.language if member else "", kind="reply",
               in_reply_to=str(post.message.get("message-id", "")) or None,
               context=context)


def decide(session: Session, site: ListSite, mailing_list: MailingList, held: Held,
           action: str, *, reason: str = "", actor: str = "") -> None:
    """Carry out a moderator's decision on a held post."""
    if action not in DECISIONS:
        raise service.ListError(f"unknown decision {action!r}; say approve, reject or "
                                "discard")
    if held.state != "held":
        raise service.ListError(f"post {held.id} was already {held.state}")
    post = _post(session, site, mailing_list, held)
    if action == "approve":
        distribute(session, post)
    elif action == "reject":
        _tell_poster(session, site, post, "post_rejected",
                     {"post_subject": held.subject, "reason": reason or held.reason,
                      "reason_code": "" if reason else str(_facts(held).get("reason_code", ""))})
    held.state = DECISIONS[action]
    held.decided_at, held.decided_by = site.clock(), actor
    if reason:
        held.note = json.dumps({**_facts(held), "reason": reason})


def _facts(held: Held) -> dict[str, object]:
    try:
        facts = json.loads(held.note or "{}")
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}


def _post(session: Session, site: ListSite, mailing_list: MailingList, held: Held) -> Post:
    stored = session.get(Message, held.message_id)
    assert stored is not None, "a held post keeps its message"
    message = parse(stored.raw)
    facts = _facts(held)
    policy = facts.get("dmarc_policy")
    return Post(mailing_list, site, message, stored.raw, stored.id, stored.mail_from,
                senders_of(message, stored.mail_from),
                PostFacts(policy if isinstance(policy, str) else None,
                          arc=_arc(facts.get("arc"))))


def _arc(kept: object) -> Assessment | None:
    """The ARC set a held post's copies get, as the post's note kept it (checked when
    the post arrived: the chain as it came, RFC 8617 §5.2)."""
    if not isinstance(kept, list) or len(kept) != 3:
        return None
    instance, cv, results = kept
    if not isinstance(instance, int) or cv not in ("none", "pass", "fail") \
            or not isinstance(results, str):
        return None
    return Assessment(instance, cv, results)


def by_mail(session: Session, site: ListSite, mailing_list: MailingList, held: Held,
            actor: str, words: list[str]) -> RequestOutcome:
    """A moderator replied to a hold notice: the first word says what to do."""
    if held.state != "held":
        return RequestOutcome("already_decided", held.state)
    verb = words[0] if words else ""
    if verb not in DECISIONS:
        return RequestOutcome("moderation_help")
    reason = " ".join(words[1:])
    decide(session, site, mailing_list, held, verb, reason=reason, actor=actor)
    return RequestOutcome("moderated", verb)


def expire(site: ListSite) -> Callable[[Session, float], int]:
    """The scheduler job: holds past their time expire, and the poster is told."""

    def run(session: Session, now: float) -> int:
        sent = 0
        due = session.scalars(select(Held).where(Held.state == "held",
                                                 Held.expires_at < now).limit(500))
        for held in list(due):
            mailing_list = session.get(MailingList, held.list_id)
            assert mailing_list is not None
            post = _post(session, site, mailing_list, held)
            held.state, held.decided_at, held.decided_by = "expired", now, "expiry"
            _tell_poster(session, site, post, "hold_expired",
                         {"post_subject": held.subject, "days": mailing_list.hold_days})
            sent += 1
        return sent

    return run
