"""A post to a list: rules decide its fate, then a pipeline makes the list copy.

Rules run in order and the first decision wins (Mailman's chain, without its machinery).
The pipeline edits the raw header block and leaves the body as the poster wrote it. The
copy is stored once; one delivery row per member is inserted by a single INSERT ... SELECT,
so a 10,000-member list costs one statement, not 10,000 objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from email.utils import getaddresses
from typing import Literal

from sqlalchemy import insert, literal, select
from sqlalchemy.orm import Session

from lists import service
from lists.models import Held, MailingList, Member
from lists.site import ListSite
from mailer import rawmail
from mailer.addresses import AddressError, normalize
from mailer.models import Delivery, Outgoing
from mailer.router import Inbound
from mailer.routing import Route

Action = Literal["accept", "hold", "discard"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


@dataclass(frozen=True)
class Post:
    """Everything the rules and steps need about one post to one list."""

    list_id: int
    name: str
    display_name: str
    posting_policy: str
    domain: str
    senders: tuple[str, ...]
    inbound: Inbound

    @property
    def list_id_header(self) -> str:
        """RFC 2919 list identifier: the posting address with '@' turned into '.'."""
        return f"{self.name}.{self.domain}"

    def address(self, suffix: str = "") -> str:
        return f"{self.name}{suffix}@{self.domain}"


def senders_of(inbound: Inbound) -> tuple[str, ...]:
    """The From: addresses and the envelope sender, normalised, the valid ones only."""
    found = []
    for _, address in getaddresses([str(v) for v in inbound.message.get_all("from", [])]):
        found.append(address)
    found.append(inbound.mail_from)
    valid = []
    for address in found:
        try:
            valid.append(normalize(address))
        except AddressError:
            continue
    return tuple(dict.fromkeys(valid))


# -- rules: each returns a decision, or None to let the next rule decide ---------------

def loop_rule(session: Session, post: Post) -> Decision | None:
    """A message that has already been through this list is never sent again."""
    message = post.inbound.message
    ours = post.list_id_header
    for value in message.get_all("list-id", []) + message.get_all("x-loop", []):
        if ours in str(value).lower() or post.address() in str(value).lower():
            return Decision("discard", "already distributed by this list (loop)")
    return None


def membership_rule(session: Session, post: Post) -> Decision | None:
    """Members may post; others are held for a moderator (posting policy `members`)."""
    if post.posting_policy == "anyone":
        return Decision("accept", "anyone may post")
    if service.is_member(session, post.list_id, post.senders):
        return Decision("accept", "posted by a member")
    return Decision("hold", "the sender is not a member of the list")


RULES: tuple[Callable[[Session, Post], Decision | None], ...] = (loop_rule, membership_rule)


def decide(session: Session, post: Post) -> Decision:
    for rule in RULES:
        decision = rule(session, post)
        if decision is not None:
            return decision
    return Decision("hold", "no rule accepted the post")


# -- pipeline: each step takes the list copy's bytes and returns new bytes ------------

LIST_FIELDS = {"list-id", "list-post", "list-help", "list-unsubscribe", "list-subscribe",
               "list-owner", "list-archive", "list-unsubscribe-post", "precedence", "x-loop",
               "return-path", "delivered-to"}


def _phrase(text: str) -> str:
    """A display name safe for a header: quoted, or RFC 2047 encoded if not ASCII."""
    if text.isascii():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return Header(text, "utf-8").encode()


def list_headers(post: Post, data: bytes) -> bytes:
    """RFC 2369 and RFC 2919 fields, Precedence and X-Loop, replacing any on the post."""
    return rawmail.rewrite(data, LIST_FIELDS, [
        ("List-Id", f"{_phrase(post.display_name)} <{post.list_id_header}>"),
        ("List-Post", f"<mailto:{post.address()}>"),
        ("List-Help", f"<mailto:{post.address('-request')}?subject=help>"),
        ("List-Subscribe", f"<mailto:{post.address('-join')}>"),
        ("List-Unsubscribe", f"<mailto:{post.address('-leave')}>"),
        ("List-Owner", f"<mailto:{post.address('-owner')}>"),
        ("Precedence", "list"),
        ("X-Loop", post.address()),
    ])


PIPELINE: tuple[Callable[[Post, bytes], bytes], ...] = (list_headers,)


def fan_out(session: Session, post: Post, data: bytes) -> int:
    """Store the list copy once and one delivery per regular member; returns its id."""
    now = time.time()
    outgoing = Outgoing(created_at=now, kind="list", source_id=post.inbound.message_id,
                        sender=post.address("-bounces+{token}"), data=data)
    session.add(outgoing)
    session.flush()
    members = select(literal(outgoing.id), Member.address, Member.id, literal("pending"),
                     literal(0), literal(now), literal(now)).where(
        Member.list_id == post.list_id, Member.role == "member", Member.enabled.is_(True),
        Member.delivery == "regular")
    session.execute(insert(Delivery).from_select(
        ["outgoing_id", "recipient", "member_id", "state", "attempts", "created_at", "due_at"],
        members))
    return outgoing.id


class PostHandler:
    """The role handler for `NAME@`: posting to a list."""

    def __init__(self, site: ListSite) -> None:
        self.site = site
        self.domain = site.domain.lower()

    def accepts(self, session: Session, route: Route) -> bool:
        return session.scalar(select(MailingList.id).where(
            MailingList.name == route.list)) is not None

    async def prepare(self, inbound: Inbound) -> None:
        return None

    def handle(self, session: Session, inbound: Inbound) -> None:
        mailing_list = service.find(session, inbound.route.list or "")
        post = Post(mailing_list.id, mailing_list.name, mailing_list.display_name,
                    mailing_list.posting_policy, self.domain, senders_of(inbound), inbound)
        decision = decide(session, post)
        if decision.action == "accept":
            data = inbound.raw
            for step in PIPELINE:
                data = step(post, data)
            fan_out(session, post, data)
        elif decision.action == "hold":
            session.add(Held(list_id=post.list_id, message_id=inbound.message_id,
                             sender=post.senders[0] if post.senders else "",
                             subject=str(inbound.message.get("subject", ""))[:500],
                             reason=decision.reason, held_at=time.time()))
