"""Joining and leaving by mail: confirmations (double opt-in), approvals, welcome, goodbye.

Every action that changes membership on the word of a mail waits for a reply from the
address concerned: a `Pending` row holds it under a token that is mailed to that address
only (RFC 5321 has no proof of who sent a message; a reply from the mailbox is one). The
token is `<row id>-<130 random bits>`, looked up by id and compared in constant time.
"""

from __future__ import annotations

import base64
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session

from lists import robot, service
from lists.list_site import ListSite
from lists.models import Held, MailingList, Member, Pending

T = TypeVar("T", Pending, Held)
log = logging.getLogger(__name__)
DAY = 86_400.0


@dataclass(frozen=True)
class RequestOutcome:
    """The result of one request, for the reply: a code the templates know, and a detail."""

    code: str
    detail: str = ""


def new_secret() -> str:
    """130 random bits in lower-case base32 (survives case-folding mail systems)."""
    return base64.b32encode(secrets.token_bytes(17)).decode().rstrip("=").lower()[:26]


def confirm_address(site: ListSite, mailing_list: MailingList, token: str) -> str:
    return site.address(f"{mailing_list.name}-confirm+{token}")


def open_pending(session: Session, site: ListSite, mailing_list: MailingList, action: str,
                 address: str, *, display_name: str = "", language: str = "") -> Pending:
    """A new pending action that expires after the list's confirm_days."""
    now = site.clock()
    pending = Pending(list_id=mailing_list.id, token="", action=action, address=address,
                      display_name=display_name[:200], language=language, created_at=now,
                      expires_at=now + mailing_list.confirm_days * DAY)
    session.add(pending)
    session.flush()
    pending.token = f"{pending.id}-{new_secret()}"
    return pending


def find_pending(session: Session, site: ListSite, mailing_list: MailingList,
                 token: str) -> Pending | None:
    """The live pending action a token names, compared in constant time."""
    pending = _by_token(session, Pending, mailing_list, token)
    if pending is None or pending.state != "pending":
        return None
    if pending.expires_at < site.clock():
        pending.state = "expired"
        return None
    return pending


def pending_of(session: Session, mailing_list: MailingList, token: str) -> Pending | None:
    """The pending action of this list a token names, in any state; changes nothing."""
    return _by_token(session, Pending, mailing_list, token)


def find_held(session: Session, mailing_list: MailingList, token: str) -> Held | None:
    """The held post a moderator's token names (tokens of holds start with 'h')."""
    return _by_token(session, Held, mailing_list, token, prefix="h")


def _by_token(session: Session, model: type[T], mailing_list: MailingList, token: str,
              prefix: str = "") -> T | None:
    """The row of this list that `PREFIX<id>-<secret>` names, compared in constant time."""
    ident, _, _ = token.partition("-")
    if not re.fullmatch(f"{prefix}[0-9]{{1,18}}", ident):
        return None
    row = session.get(model, int(ident[len(prefix):]))
    if row is None or row.list_id != mailing_list.id or row.token is None:
        return None
    if not hmac.compare_digest(row.token.encode(), token.lower().encode()):
        return None
    return row


def request_join(session: Session, site: ListSite, mailing_list: MailingList, address: str,
                 *, display_name: str = "", language: str = "", source: str = "",
                 in_reply_to: str | None = None) -> RequestOutcome:
    """Someone asked to join: refuse (closed), or mail them a confirmation. A member whom
    a seat in the list's body subscribed may join on their own too: once confirmed, the
    membership outlasts the seat."""
    if mailing_list.subscription_policy == "closed":
        if robot.allowed(session, site, kind="reply", target=address, sources=(source,)):
            robot.send(session, site, mailing_list, "subscription_refused", to=address,
                       language=language, kind="reply", source=source,
                       in_reply_to=in_reply_to)
        return RequestOutcome("closed")
    existing = service.member(session, mailing_list.id, address)
    if existing is not None and existing.joined_by != "seat":
        return RequestOutcome("already_member")
    if not robot.allowed(session, site, kind="confirm", target=address, sources=(source,)):
        log.warning("confirmation to %s for %s not sent: rate limit", address,
                    mailing_list.name)
        return RequestOutcome("limited")
    pending = open_pending(session, site, mailing_list, "subscribe", address,
                           display_name=display_name, language=language)
    _ask(session, site, mailing_list, pending, "confirm_subscribe", source, in_reply_to)
    return RequestOutcome("confirm_sent", address)


def request_leave(session: Session, site: ListSite, mailing_list: MailingList, address: str,
                  *, source: str = "", in_reply_to: str | None = None) -> RequestOutcome:
    """A member asked to leave: mail them a confirmation (a forged From cannot do it)."""
    member = service.member(session, mailing_list.id, address)
    if member is None:
        return RequestOutcome("not_member", address)
    if not robot.allowed(session, site, kind="confirm", target=address, sources=(source,)):
        return RequestOutcome("limited")
    pending = open_pending(session, site, mailing_list, "unsubscribe", address,
                           language=member.language)
    _ask(session, site, mailing_list, pending, "confirm_unsubscribe", source, in_reply_to)
    return RequestOutcome("unsubscribe_confirm_sent", address)


def _ask(session: Session, site: ListSite, mailing_list: MailingList, pending: Pending,
         template: str, source: str, in_reply_to: str | None) -> None:
    """The confirmation mail: confirmed by a reply, a `confirm TOKEN` command, or the
    button of the page it links to (lists.confirm_pages)."""
    reply_to = confirm_address(site, mailing_list, pending.token)
    robot.send(session, site, mailing_list, template, to=pending.address,
               language=pending.language, kind="confirm", source=source,
               reply_to=reply_to, in_reply_to=in_reply_to,
               context={"token": pending.token, "confirm_address": reply_to,
                        "address": pending.address, "days": mailing_list.confirm_days,
                        "confirm_url": confirm_link(site, mailing_list, pending.token)})


def confirm_link(site: ListSite, mailing_list: MailingList, token: str) -> str:
    """The page that confirms a pending action (lists.confirm_pages), or "" with no web
    site."""
    return f"{site.base_url}/confirm/{mailing_list.name}/{token}" if site.base_url else ""


def confirm(session: Session, site: ListSite, mailing_list: MailingList, pending: Pending,
            *, rejected: bool = False) -> RequestOutcome:
    """Carry out a confirmed pending action (or an owner's refusal of a join)."""
    pending.state = "done"
    if pending.action == "subscribe":
        if mailing_list.subscription_policy == "moderate":
            return _ask_owners(session, site, mailing_list, pending)
        return _welcome(session, site, mailing_list, pending)
    if pending.action == "approve":
        if rejected:
            robot.send(session, site, mailing_list, "subscription_rejected",
                       to=pending.address, language=pending.language, kind="notice")
            return RequestOutcome("join_rejected", pending.address)
        return _welcome(session, site, mailing_list, pending)
    if pending.action == "unsubscribe":
        return leave(session, site, mailing_list, pending.address)
    if pending.action == "reenable":
        reenable(session, site, mailing_list, pending)
        return RequestOutcome("reenabled", pending.address)
    return RequestOutcome("bad_token")


def _ask_owners(session: Session, site: ListSite, mailing_list: MailingList,
                pending: Pending) -> RequestOutcome:
    approval = open_pending(session, site, mailing_list, "approve", pending.address,
                            display_name=pending.display_name, language=pending.language)
    reply_to = confirm_address(site, mailing_list, approval.token)
    robot.notify_moderators(session, site, mailing_list, "subscription_approval",
                            {"address": pending.address, "token": approval.token,
                             "confirm_address": reply_to},
                            service.moderators(session, mailing_list.id), reply_to)
    robot.send(session, site, mailing_list, "subscription_awaiting_approval",
               to=pending.address, language=pending.language, kind="notice")
    return RequestOutcome("awaiting_approval", pending.address)


def _welcome(session: Session, site: ListSite, mailing_list: MailingList,
             pending: Pending) -> RequestOutcome:
    member, new = service.subscribe(session, mailing_list, pending.address,
                                    display_name=pending.display_name,
                                    language=pending.language)
    if member.joined_by == "seat":
        member.joined_by = "self"
    if new:
        robot.send(session, site, mailing_list, "welcome", to=member.address,
                   language=member.language, kind="notice", member_id=member.id,
                   context={"address": member.address})
    return RequestOutcome("subscribed", member.address)


def leave(session: Session, site: ListSite, mailing_list: MailingList,
          address: str) -> RequestOutcome:
    """Remove a member now and say goodbye (after a confirmation or a one-click POST);
    the site's `on_leave` hook hears of it."""
    member = service.member(session, mailing_list.id, address)
    if member is None:
        return RequestOutcome("not_member", address)
    language = member.language
    session.delete(member)
    robot.send(session, site, mailing_list, "goodbye", to=address, language=language,
               kind="notice", context={"address": address})
    if site.on_leave is not None:
        site.on_leave(session, mailing_list, member.address)
    return RequestOutcome("unsubscribed", address)


def expire(session: Session, now: float) -> int:
    """Scheduler job: pending actions past their time are closed (nothing is sent)."""
    from sqlalchemy import update
    session.execute(update(Pending).where(Pending.state == "pending",
                                          Pending.expires_at < now).values(state="expired"))
    return 0


def set_option(session: Session, site: ListSite, mailing_list: MailingList, member: Member,
               option: str, value: str) -> RequestOutcome:
    """`set digest|nomail|regular` and `set language CODE` for the sender's membership."""
    from lists.models import DELIVERY_MODES, DIGEST_FORMATS, LANGUAGES
    if option == "digest" and value in DIGEST_FORMATS:
        member.delivery, member.digest_format = "digest", value
        return RequestOutcome("delivery_set", f"digest {value}")
    if option in DELIVERY_MODES and not value:
        member.delivery = option
        return RequestOutcome("delivery_set", option)
    if option == "language" and value in LANGUAGES:
        member.language = value
        return RequestOutcome("language_set", value)
    return RequestOutcome("bad_set", f"{option} {value}".strip())


def reenable(session: Session, site: ListSite, mailing_list: MailingList,
             pending: Pending) -> None:
    """The member confirmed a re-enable token: deliver again, with a clean score."""
    member = service.member(session, mailing_list.id, pending.address)
    if member is None:
        log.info("bounces: %s left %s before re-enabling", pending.address,
                 mailing_list.name)
        return
    if not member.enabled and member.disabled_reason not in ("", "bounces"):
        # Disabled for another reason (by an owner, say): a bounce token cannot undo that.
        log.info("bounces: %s on %s stays disabled (%s)", member.address,
                 mailing_list.name, member.disabled_reason)
        return
    member.enabled, member.disabled_reason, member.bounce_score = True, "", 0.0
