"""The rules a post passes, in order: the first that decides wins (DESIGN §2).

Each rule returns a decision (accept, hold, discard or reject, with a reason) or None to
let the next rule decide (Mailman's chain, without its machinery).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from lists import service
from lists.post import Decision, Post


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
    """The first decision of the rules; a post no rule decides is held."""
    for rule in RULES:
        decision = rule(session, post)
        if decision is not None:
            return decision
    return Decision("hold", "no rule accepted the post", "no_rule")
