"""The list rules one by one (lists/rules.py): each decides, or lets the next rule decide.

A steering list with a member, an owner, a moderator and a named poster is made in a real
SQLite database; each test hands one rule a post, as the list's handler would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session

from lists import rules, service, settings
from lists.models import Archived
from lists.post import Decision, Post
from lists.rules import (
    RULES,
    automatic_rule,
    decide,
    hop_rule,
    loop_rule,
    moderator_rule,
    policy_rule,
    rate_rule,
    sender_rule,
)
from mailer.db import Database
from mailer.inbound import parse
from tests.helpers import DOMAIN, mail, post_of

LIST = f"steering@{DOMAIN}"
MEMBER = "ana@party.test"
OWNER = "chair@party.test"
MODERATOR = "mod@party.test"
POSTER = "press@party.test"          # a named poster of an announce list
STRANGER = "stranger@elsewhere.test"

Rule = Callable[[Session, Post], Decision | None]


@pytest.fixture(autouse=True)
def steering(db: Database) -> None:
    def create(session: Session) -> None:
        made = service.create(session, "steering", display_name="Steering Committee")
        service.add_members(session, made, [MEMBER])
        service.add_members(session, made, [OWNER], role="owner")
        service.add_members(session, made, [MODERATOR], role="moderator")
        service.add_members(session, made, [POSTER], role="poster")
    db.transaction(create)


def judged(db: Database, rule: Rule, raw: bytes, **options: str) -> Decision | None:
    """What `rule` decides about `raw` posted to steering, with the list set as told."""
    def judge(session: Session) -> Decision | None:
        steering = service.find(session, "steering")
        for key, value in options.items():
            settings.change(steering, key, value)
        return rule(session, post_of(steering, raw))
    return db.transaction(judge)


def test_the_loop_rule_discards_a_copy_this_list_already_sent(db: Database) -> None:
    ours = mail(MEMBER, LIST, List_Id=f"Steering Committee <steering.{DOMAIN}>")
    looped = mail(MEMBER, LIST, X_Loop=LIST)
    for raw in (ours, looped):
        assert judged(db, loop_rule, raw) == \
            Decision("discard", "already distributed by this list (loop)")


def test_the_loop_rule_lets_another_lists_copy_through(db: Database) -> None:
    other = mail(MEMBER, LIST, List_Id="<news.other.example>", X_Loop="news@other.example")
    assert judged(db, loop_rule, other) is None
    assert judged(db, loop_rule, mail(MEMBER, LIST)) is None


def test_the_hop_rule_discards_a_post_with_more_than_50_received_fields(db: Database) -> None:
    def hops(count: int) -> bytes:
        return b"Received: from relay.test by relay.test\r\n" * count + mail(MEMBER, LIST)
    assert judged(db, hop_rule, hops(51)) == \
        Decision("discard", "more than 50 Received: fields (mail loop)")
    assert judged(db, hop_rule, hops(50)) is None


def test_the_moderator_rule_accepts_owners_and_moderators(db: Database) -> None:
    for sender in (OWNER, MODERATOR):
        assert judged(db, moderator_rule, mail(sender, LIST)) == \
            Decision("accept", "posted by an owner or moderator")
    for sender in (MEMBER, POSTER, STRANGER):
        assert judged(db, moderator_rule, mail(sender, LIST)) is None


def test_the_policy_rule_of_a_members_list(db: Database) -> None:
    assert judged(db, policy_rule, mail(MEMBER, LIST)) == \
        Decision("accept", "posted by a member")
    assert judged(db, policy_rule, mail(STRANGER, LIST)) == \
        Decision("hold", "the sender is not a member of the list", "not_member")
    assert judged(db, policy_rule, mail(STRANGER, LIST), nonmember_action="reject") == \
        Decision("reject", "the sender is not a member of the list", "not_member")


def test_the_policy_rule_of_an_open_list_accepts_anyone(db: Database) -> None:
    assert judged(db, policy_rule, mail(STRANGER, LIST), posting_policy="anyone") == \
        Decision("accept", "anyone may post")


def test_the_policy_rule_of_a_moderated_list_holds_every_post(db: Database) -> None:
    assert judged(db, policy_rule, mail(MEMBER, LIST), posting_policy="moderated") == \
        Decision("hold", "every post to this list is moderated", "moderated")


def test_the_policy_rule_of_an_announce_list_accepts_named_posters_only(db: Database) -> None:
    assert judged(db, policy_rule, mail(POSTER, LIST), posting_policy="announce") == \
        Decision("accept", "posted by a named poster")
    assert judged(db, policy_rule, mail(MEMBER, LIST), posting_policy="announce") == \
        Decision("hold", "only the owners and named posters may post to this list",
                 "announce_only")


def test_the_rules_run_in_the_documented_order() -> None:
    """Loops are caught before anyone's post is accepted; moderators may post whatever the
    policy says; the policy, which always decides, comes last."""
    names = [rule.__name__ for rule in RULES]
    assert names == ["loop_rule", "hop_rule", "sender_rule", "automatic_rule", "rate_rule",
                     "moderator_rule", "policy_rule"], \
        "machines and storms are stopped before an owner's post is accepted"


def test_decide_returns_the_first_rules_decision(db: Database) -> None:
    # A moderator's post is accepted before the moderated list's policy would hold it...
    assert judged(db, decide, mail(MODERATOR, LIST), posting_policy="moderated") == \
        Decision("accept", "posted by an owner or moderator")
    # ...but a moderator's post that has already been through the list is a loop.
    looped = mail(MODERATOR, LIST, X_Loop=LIST)
    assert judged(db, decide, looped).action == "discard"  # type: ignore[union-attr]


def test_a_post_no_rule_decides_is_held(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "RULES", (loop_rule, hop_rule))
    assert judged(db, decide, mail(STRANGER, LIST)) == \
        Decision("hold", "no rule accepted the post", "no_rule")


# -- what no list passes on: malformed senders, machines, storms (issue 10) --------------

def test_the_sender_rule_holds_a_post_without_exactly_one_from_mailbox(db: Database) -> None:
    one = mail(MEMBER, LIST)
    none = one.replace(f"From: {MEMBER}\r\n".encode(), b"")
    two = one.replace(b"From: ", f"From: {STRANGER}\r\nFrom: ".encode(), 1)
    both = one.replace(f"From: {MEMBER}".encode(), f"From: {MEMBER}, {OWNER}".encode())
    assert judged(db, sender_rule, one) is None
    for raw in (two, both):
        decision = judged(db, sender_rule, raw)
        assert decision is not None and (decision.action, decision.code) == \
            ("hold", "malformed_sender")
    def without_from(session: Session) -> Decision | None:
        steering = service.find(session, "steering")
        post = dataclasses.replace(post_of(steering, one), message=parse(none))
        return sender_rule(session, post)
    decision = db.transaction(without_from)
    assert decision is not None and decision.code == "malformed_sender"


@pytest.mark.parametrize("headers", [{"Auto_Submitted": "auto-replied"},
                                     {"Auto_Submitted": "auto-generated; owner=x"},
                                     {"Precedence": "bulk"}, {"Precedence": "junk"},
                                     {"Precedence": "list"}])
def test_the_automatic_rule_holds_what_a_machine_sent(db: Database,
                                                      headers: dict[str, str]) -> None:
    decision = judged(db, automatic_rule, mail(OWNER, LIST, **headers))
    assert decision is not None and (decision.action, decision.code) == ("hold", "automatic")
    decision = judged(db, decide, mail(OWNER, LIST, **headers))
    assert decision is not None and decision.action == "hold", "even from an owner"


def test_the_automatic_rule_can_discard_and_lets_people_through(db: Database) -> None:
    vacation = mail(MEMBER, LIST, Auto_Submitted="auto-replied")
    decision = judged(db, automatic_rule, vacation, automatic_action="discard")
    assert decision is not None and decision.action == "discard"
    assert judged(db, automatic_rule, mail(MEMBER, LIST, Auto_Submitted="no")) is None
    assert judged(db, automatic_rule, mail(MEMBER, LIST)) is None


def test_the_automatic_rule_holds_a_post_with_an_empty_envelope_sender(db: Database) -> None:
    def bounce(session: Session) -> Decision | None:
        steering = service.find(session, "steering")
        post = dataclasses.replace(post_of(steering, mail(MEMBER, LIST)), mail_from="")
        return automatic_rule(session, post)
    decision = db.transaction(bounce)
    assert decision is not None and decision.reason == \
        "automatic mail (empty envelope sender)"


def test_the_rate_rule_holds_a_senders_posts_past_the_hourly_limit(db: Database) -> None:
    def archive(session: Session, count: int) -> None:
        steering = service.find(session, "steering")
        for _ in range(count):
            session.add(Archived(list_id=steering.id, archived_at=time.time(), sender=MEMBER,
                                 subject="x", data=b"x"))
    db.transaction(archive, 2)
    assert judged(db, rate_rule, mail(MEMBER, LIST), member_posts_per_hour="3") is None
    db.transaction(archive, 1)
    decision = judged(db, rate_rule, mail(MEMBER, LIST), member_posts_per_hour="3")
    assert decision is not None and (decision.action, decision.code) == \
        ("hold", "too_many_posts")
    assert judged(db, rate_rule, mail(OWNER, LIST), member_posts_per_hour="3") is None, \
        "another sender is not held"
    assert judged(db, rate_rule, mail(MEMBER, LIST), member_posts_per_hour="0") is None, \
        "0: no limit"
