"""The rules a post passes, in order: the first that decides wins (DESIGN §2).

Each rule returns a decision (accept, hold, discard or reject, with a reason) or None to
let the next rule decide (Mailman's chain, without its machinery).
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import getaddresses

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import service
from lists.automail import automatic_post
from lists.models import Archived
from lists.post import Decision, Post
from mailer.inbound import UnreadableField


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


def sender_rule(session: Session, post: Post) -> Decision | None:
    """A post has one From field naming one mailbox (RFC 5322 §3.6): one with none, or
    several, cannot be told apart from a forgery, so a person looks at it."""
    try:
        fields = post.message.get_all("from", [])
        mailboxes = getaddresses([str(field) for field in fields])
    except (ValueError, IndexError, TypeError) as error:    # CPython's parser trips
        return Decision("hold", f"the From field cannot be read ({type(error).__name__})",
                        "malformed_sender")
    if any(isinstance(field, UnreadableField) for field in fields):
        # Its parser failed and it was kept as text (mailer.inbound.ReadingPolicy).
        return Decision("hold", "the From field cannot be read", "malformed_sender")
    if len(fields) != 1 or len([address for _, address in mailboxes if address]) != 1:
        return Decision("hold", f"{len(fields)} From fields, not one with one mailbox",
                        "malformed_sender")
    problem = _unplain_sender(fields[0], mailboxes[0][1], post.raw)
    if problem is not None:
        return Decision("hold", f"the From field is {problem}", "malformed_sender")
    return None


def _unplain_sender(field: object, address: str, raw: bytes) -> str | None:
    """Why a From field's one mailbox cannot be trusted as read, or None: parsers that
    disagree about it (CVE-2023-27043: `member@x <other@y>`) or an address made of
    encoded words, which no mail client writes (reliability.md M04, M05)."""
    defects = getattr(field, "defects", ())
    if any(str(defect).startswith("invalid address") for defect in defects):
        return "ambiguous: parsers read different addresses in it"
    header = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].lower()
    if address.lower().encode("utf-8", "replace") not in header:
        return "not written plainly: its address is encoded"
    return None


def automatic_rule(session: Session, post: Post) -> Decision | None:
    """A list never passes on what a machine sent (RFC 3834 §2): an auto-reply to a list
    whose replies go to the list would answer itself for ever."""
    why = automatic_post(post.message, post.mail_from)
    if why is None:
        return None
    return Decision(post.mailing_list.automatic_action,  # type: ignore[arg-type]
                    f"automatic mail ({why})", "automatic")


def rate_rule(session: Session, post: Post) -> Decision | None:
    """At most `member_posts_per_hour` distributed posts an hour from one sender: a storm
    (a broken script, a loop through another system) waits for a person."""
    limit = post.mailing_list.member_posts_per_hour
    if limit <= 0 or not post.senders:
        return None
    since = post.site.clock() - 3600.0
    count = session.scalar(select(func.count()).select_from(Archived).where(
        Archived.list_id == post.mailing_list.id, Archived.archived_at > since,
        Archived.sender == post.senders[0]))
    if (count or 0) >= limit:
        return Decision("hold", f"{post.senders[0]} sent {count} posts in the last hour "
                        f"(at most {limit})", "too_many_posts")
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
    loop_rule, hop_rule, sender_rule, automatic_rule, rate_rule, moderator_rule, policy_rule)


def decide(session: Session, post: Post) -> Decision:
    """The first decision of the rules; a post no rule decides is held."""
    for rule in RULES:
        decision = rule(session, post)
        if decision is not None:
            return decision
    return Decision("hold", "no rule accepted the post", "no_rule")
