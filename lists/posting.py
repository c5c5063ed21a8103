"""A post to a list: rules decide its fate, then a pipeline makes the list copy.

Rules run in order and the first decision wins (Mailman's chain, without its machinery).
The pipeline edits the raw message and leaves the poster's body bytes alone wherever it
can. The copy is stored once; one delivery row per member is inserted by a single
INSERT ... SELECT, so a 10,000-member list costs one statement, not 10,000 objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import archive, dmarc, footer, robot, service
from lists.handler import ListHandler
from lists.models import MailingList, Member
from lists.site import ListSite
from mailer import compose, rawmail
from mailer.addresses import AddressError, named_addresses, normalize
from mailer.delivery import UNSUBSCRIBE_MARKER
from mailer.router import Inbound

log = logging.getLogger(__name__)
Action = Literal["accept", "hold", "reject", "discard"]


@dataclass(frozen=True)
class Decision:
    """What a rule decided, why in English (for owners' tools), and a code templates translate."""

    action: Action
    reason: str
    code: str = ""


@dataclass(frozen=True)
class PostFacts:
    """What was looked up on the network before the transaction (RFC 7489 policy)."""

    dmarc_policy: str | None = None


@dataclass(frozen=True)
class Post:
    """Everything the rules and steps need about one post to one list."""

    mailing_list: MailingList
    site: ListSite
    message: EmailMessage
    raw: bytes
    message_id: int
    mail_from: str
    senders: tuple[str, ...]
    facts: PostFacts = PostFacts()

    @property
    def name(self) -> str:
        return self.mailing_list.name

    @property
    def list_id_header(self) -> str:
        return list_id(self.site, self.mailing_list)

    def address(self, suffix: str = "") -> str:
        return self.site.address(f"{self.name}{suffix}")


def senders_of(message: EmailMessage, mail_from: str) -> tuple[str, ...]:
    """The From: addresses and the envelope sender, normalised, the valid ones only."""
    found = [address for _, address in named_addresses(message)]
    found.append(mail_from)
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
    ours = post.list_id_header
    for value in post.message.get_all("list-id", []) + post.message.get_all("x-loop", []):
        if ours in str(value).lower() or post.address() in str(value).lower():
            return Decision("discard", "already distributed by this list (loop)")
    return None


def hop_rule(session: Session, post: Post) -> Decision | None:
    """Too many Received: fields means a loop somewhere (RFC 5321 §6.3)."""
    if len(post.message.get_all("received", [])) > 50:
        return Decision("discard", "more than 50 Received: fields (mail loop)")
    return None


def moderator_rule(session: Session, post: Post) -> Decision | None:
    """Owners and moderators may always post."""
    if service.has_role(session, post.mailing_list.id, post.senders, ("owner", "moderator")):
        return Decision("accept", "posted by an owner or moderator")
    return None


def policy_rule(session: Session, post: Post) -> Decision | None:
    """The list's posting policy: members, anyone, moderated or announce."""
    policy = post.mailing_list.posting_policy
    if policy == "anyone":
        return Decision("accept", "anyone may post")
    if policy == "moderated":
        return Decision("hold", "every post to this list is moderated", "moderated")
    if policy == "announce":
        if service.has_role(session, post.mailing_list.id, post.senders, ("poster",)):
            return Decision("accept", "posted by a named poster")
        return _stranger(post, "only the owners and named posters may post to this list",
                         "announce_only")
    if service.is_member(session, post.mailing_list.id, post.senders):
        return Decision("accept", "posted by a member")
    return _stranger(post, "the sender is not a member of the list", "not_member")


def _stranger(post: Post, reason: str, code: str) -> Decision:
    action = post.mailing_list.nonmember_action
    return Decision(action, reason, code)  # type: ignore[arg-type]


RULES: tuple[Callable[[Session, Post], Decision | None], ...] = (
    loop_rule, hop_rule, moderator_rule, policy_rule)


def decide(session: Session, post: Post) -> Decision:
    for rule in RULES:
        decision = rule(session, post)
        if decision is not None:
            return decision
    return Decision("hold", "no rule accepted the post", "no_rule")


# -- pipeline: each step takes the list copy's bytes and returns new bytes ------------

LIST_FIELDS = {"list-id", "list-post", "list-help", "list-unsubscribe", "list-subscribe",
               "list-owner", "list-archive", "list-unsubscribe-post", "precedence", "x-loop",
               "return-path", "delivered-to", "x-original-to"}


def subject_prefix(post: Post, data: bytes) -> bytes:
    """Put the list's prefix before the subject, once (not again on replies)."""
    prefix = post.mailing_list.subject_prefix.strip()
    if not prefix:
        return data
    subject = " ".join(str(post.message.get("subject", "")).split())
    if prefix.lower() in subject.lower():
        return data
    return rawmail.rewrite(data, {"subject"}, [("Subject", rawmail.encoded(f"{prefix} {subject}"))])


def reply_to(post: Post, data: bytes) -> bytes:
    """Reply-To the list when the list asks for it; otherwise replies go to the poster."""
    if post.mailing_list.reply_to != "list":
        return data
    value = f"{rawmail.phrase(post.mailing_list.display_name)} <{post.address()}>"
    return rawmail.rewrite(data, {"reply-to"}, [("Reply-To", value)])


def dmarc_step(post: Post, data: bytes) -> bytes:
    """From becomes the list's when the poster's domain asks receivers to reject forgeries."""
    if not dmarc.needs_munging(post.mailing_list.dmarc_mode, post.facts.dmarc_policy):
        return data
    return dmarc.munge_from(data, list_address=post.address(),
                            list_name=post.mailing_list.display_name,
                            poster_in=post.mailing_list.dmarc_poster_in)


def add_footer(post: Post, data: bytes) -> bytes:
    """The footer that tells every reader how to leave (lists/footer.py rules)."""
    if not post.mailing_list.footer:
        return data
    language = compose.language_of(post.mailing_list.language)
    _, text = compose.render(post.site.templates, "footer", language,
                             {"list": robot.list_view(post.site, post.mailing_list),
                              "site_name": post.site.name})
    return footer.add_footer(data, post.message, text)


def list_id(site: ListSite, mailing_list: MailingList) -> str:
    """RFC 2919 list identifier: the posting address with '@' turned into '.'."""
    return f"{mailing_list.name}.{site.domain}"


def list_headers(post: Post, data: bytes) -> bytes:
    """RFC 2369, RFC 2919 and RFC 8058 fields, Precedence and X-Loop, replacing old ones."""
    return with_list_fields(post.site, post.mailing_list, data)


def with_list_fields(site: ListSite, mailing_list: MailingList, data: bytes) -> bytes:
    """The list's own fields on a message it sends (a post, a digest), old ones replaced."""
    name = mailing_list.name

    def address(suffix: str = "") -> str:
        return site.address(f"{name}{suffix}")
    leave = f"<mailto:{address('-leave')}>"
    fields = [
        ("List-Id", f"{rawmail.phrase(mailing_list.display_name)} "
                    f"<{list_id(site, mailing_list)}>"),
        ("List-Post", f"<mailto:{address()}>"),
        ("List-Help", f"<mailto:{address('-request')}?subject=help>"),
        ("List-Subscribe", f"<mailto:{address('-join')}>"),
        ("List-Unsubscribe", leave),
        ("List-Owner", f"<mailto:{address('-owner')}>"),
        ("Precedence", "list"),
        ("X-Loop", address()),
    ]
    if site.base_url:
        one_click = f"{site.base_url}/unsubscribe/{UNSUBSCRIBE_MARKER.decode()}"
        fields[4] = ("List-Unsubscribe", f"<{one_click}>, {leave}")
        fields.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        if mailing_list.public_archive:
            fields.append(("List-Archive", f"<{site.base_url}/lists/{name}/>"))
    return rawmail.rewrite(data, LIST_FIELDS, fields)


PIPELINE: tuple[Callable[[Post, bytes], bytes], ...] = (
    subject_prefix, reply_to, dmarc_step, add_footer, list_headers)


def fan_out(session: Session, post: Post, data: bytes) -> int:
    """Store the list copy once and one delivery per regular member; returns its id."""
    archive.keep(session, post, data)
    outgoing = compose.enqueue(session, sender=post.address("-bounces+{token}"),
                               recipients=(), data=data, kind="list",
                               source_id=post.message_id)
    compose.enqueue_each(session, outgoing, select(Member.address, Member.id).where(
        Member.list_id == post.mailing_list.id, Member.role == "member",
        Member.enabled.is_(True), Member.delivery == "regular"))
    return outgoing.id


def distribute(session: Session, post: Post) -> int:
    """Make the list copy and send it to every member; returns the outgoing id."""
    data = post.raw
    for step in PIPELINE:
        data = step(post, data)
    return fan_out(session, post, data)


def make_post(site: ListSite, mailing_list: MailingList, inbound: Inbound) -> Post:
    facts = inbound.prepared if isinstance(inbound.prepared, PostFacts) else PostFacts()
    return Post(mailing_list, site, inbound.message, inbound.raw, inbound.message_id,
                inbound.mail_from, senders_of(inbound.message, inbound.mail_from), facts)


class PostHandler(ListHandler):
    """The role handler for `NAME@`: posting to a list."""

    async def prepare(self, inbound: Inbound) -> PostFacts:
        domain = dmarc.from_domain(inbound.raw)
        if self.site.dmarc is None or domain is None:
            return PostFacts()
        return PostFacts(await self.site.dmarc.policy(domain))

    def handle(self, session: Session, inbound: Inbound) -> None:
        from lists import moderation
        mailing_list = service.find(session, inbound.route.list or "")
        post = make_post(self.site, mailing_list, inbound)
        decision = decide(session, post)
        if decision.action == "accept":
            distribute(session, post)
        elif decision.action == "hold":
            moderation.hold(session, self.site, post, decision)
        elif decision.action == "reject":
            moderation.refuse(session, self.site, post, decision)
        else:
            log.info("post %d to %s discarded: %s", inbound.message_id, mailing_list.name,
                     decision.reason)
