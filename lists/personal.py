"""A member's own data on the lists: what they may see, take away and have erased.

GDPR art. 15 (access) and art. 17 (erasure), for the list side: memberships (every role,
with the options chosen), pending requests, posts held for moderation, and posts in the
archive sent from the address. Erasure takes the address off every list (each list's
`on_leave` hears of it, as when a member leaves), closes its pending requests, discards
its held posts, and anonymises its archived posts: the sender and the From, Reply-To and
Sender fields say "(erased)", so the archive keeps what was said to the list without who
said it. Each function takes a session and leaves committing to the caller.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import archive, service, subscriptions
from lists.list_site import ListSite
from lists.models import Archived, Held, MailingList, Member, Pending
from mailer import dates, rawmail

ERASED = "(erased)"
ERASED_FIELDS = {"from", "reply-to", "sender"}



def export(session: Session, site: ListSite, address: str) -> dict[str, Any]:
    """Everything the lists keep about the address, as plain JSON-ready data."""
    key = address.lower()
    memberships = session.execute(
        select(MailingList.name, MailingList.display_name, Member)
        .join(Member, Member.list_id == MailingList.id)
        .where(func.lower(Member.address) == key).order_by(MailingList.name)).all()
    pending = session.execute(
        select(MailingList.name, Pending.action, Pending.state, Pending.created_at)
        .join(Pending, Pending.list_id == MailingList.id)
        .where(func.lower(Pending.address) == key)).all()
    held = session.execute(
        select(MailingList.name, Held.subject, Held.reason, Held.held_at)
        .join(Held, Held.list_id == MailingList.id)
        .where(func.lower(Held.sender) == key)).all()
    posts = session.execute(
        select(MailingList.name, Archived.id, Archived.subject, Archived.archived_at,
               MailingList.public_archive)
        .join(Archived, Archived.list_id == MailingList.id)
        .where(func.lower(Archived.sender) == key).order_by(Archived.id)).all()
    return {
        "memberships": [{"list": name, "list_name": display, "role": m.role,
                         "name": m.display_name, "language": m.language,
                         "delivery": m.delivery, "digest_format": m.digest_format,
                         "joined_at": dates.iso(m.joined_at), "joined_by": m.joined_by,
                         "enabled": m.enabled, "disabled_reason": m.disabled_reason,
                         "bounce_score": m.bounce_score,
                         "last_bounce_at": dates.iso(m.last_bounce_at)}
                        for name, display, m in memberships],
        "pending_requests": [{"list": name, "action": action, "state": state,
                              "asked_at": dates.iso(at)} for name, action, state, at in pending],
        "held_posts": [{"list": name, "subject": subject, "reason": reason,
                        "held_at": dates.iso(at)} for name, subject, reason, at in held],
        "archived_posts": [{"list": name, "subject": subject, "archived_at": dates.iso(at),
                            "url": archive.post_url(site.base_url, name, ident)
                            if public and site.base_url else ""}
                           for name, ident, subject, at, public in posts],
    }


def erase(session: Session, site: ListSite, address: str) -> list[str]:
    """Take the address off every list and out of the archive; what was done, in words
    for the page (list names and counts)."""
    key = address.lower()
    done: list[str] = []
    rows = session.execute(select(MailingList, Member)
                           .join(Member, Member.list_id == MailingList.id)
                           .where(func.lower(Member.address) == key)).all()
    for mailing_list, member in rows:
        if member.role == "member":
            subscriptions.leave(session, site, mailing_list, member.address)
        else:
            service.remove_member(session, mailing_list, member.address, role=member.role)
        done.append(f"{member.role}:{mailing_list.name}")
    for pending in session.scalars(select(Pending).where(
            func.lower(Pending.address) == key, Pending.state == "pending")):
        pending.state = "expired"
    for held in session.scalars(select(Held).where(func.lower(Held.sender) == key,
                                                   Held.state == "held")):
        held.state, held.decided_at, held.decided_by = "discarded", time.time(), address
        held.note = "erased at the sender's request"
    erased = 0
    for post in session.scalars(select(Archived).where(func.lower(Archived.sender) == key)):
        post.sender = ERASED
        post.data = rawmail.rewrite(post.data, ERASED_FIELDS, [("From", ERASED)])
        erased += 1
    if erased:
        done.append(f"archived:{erased}")
    return done
