"""The pipeline one step at a time (lists/pipeline.py): the list copy's bytes in, bytes out.

Each step is handed a post to a steering list made in a real SQLite database, as
`distribute` hands it; bytes a step has no reason to touch come back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import pipeline, service, settings
from lists.list_site import ListSite
from lists.models import Member
from lists.pipeline import PIPELINE, add_footer, dmarc_step, list_headers, subject_prefix
from lists.post import Post, PostFacts
from mailer.db import Database
from mailer.models import Delivery, Message, Outgoing
from mailer.outbox import UNSUBSCRIBE_MARKER
from tests.helpers import DOMAIN, list_site, mail, post_of, read, site_config

LIST = f"steering@{DOMAIN}"
ANA = "Ana Silva <ana@strict.example>"
MEMBERS = ["ana@strict.example", "ben@party.test", "carla@party.test", "dev@party.test"]
FOOTER = f"To unsubscribe, send a message to steering-leave@{DOMAIN}"

Step = Callable[[Post, bytes], bytes]


@pytest.fixture(autouse=True)
def steering(db: Database) -> None:
    def create(session: Session) -> None:
        made = service.create(session, "steering", display_name="Steering Committee")
        service.add_members(session, made, MEMBERS)
    db.transaction(create)


def stepped(db: Database, step: Step, raw: bytes, *, facts: PostFacts | None = None,
            site: ListSite | None = None, **options: str) -> bytes:
    """What `step` makes of `raw` posted to steering, with the list set as told."""
    def run(session: Session) -> bytes:
        steering = service.find(session, "steering")
        for key, value in options.items():
            settings.change(steering, key, value)
        return step(post_of(steering, raw, facts=facts, site=site), raw)
    return db.transaction(run)


def test_the_subject_prefix_is_added_once(db: Database) -> None:
    copy = read(stepped(db, subject_prefix, mail(ANA, LIST, subject="Agenda for Nairobi")))
    assert copy["Subject"] == "[steering] Agenda for Nairobi"
    reply = mail(ANA, LIST, subject="Re: [steering] Agenda for Nairobi")
    assert stepped(db, subject_prefix, reply) == reply
    plain = mail(ANA, LIST, subject="Agenda")
    assert stepped(db, subject_prefix, plain, subject_prefix="") == plain


def test_a_post_without_a_message_id_gets_one_and_one_with_keeps_its_own(
        db: Database) -> None:
    """Reliability M02: Gmail refuses mail without a Message-ID."""
    raw = mail(ANA, LIST)
    assert stepped(db, pipeline.message_id, raw) == raw
    bare = b"".join(line for line in raw.splitlines(keepends=True)
                    if not line.lower().startswith(b"message-id:"))
    copy = read(stepped(db, pipeline.message_id, bare))
    assert str(copy["Message-ID"]).endswith(f"@{DOMAIN}>")


def test_reply_to_names_the_list_only_when_the_list_asks(db: Database) -> None:
    raw = mail(ANA, LIST)
    copy = read(stepped(db, pipeline.reply_to, raw, reply_to="list"))
    assert copy["Reply-To"] == f"Steering Committee <{LIST}>"
    assert stepped(db, pipeline.reply_to, raw, reply_to="poster") == raw


def test_the_dmarc_step_rewrites_from_only_for_a_strict_domain(db: Database) -> None:
    raw = mail(ANA, LIST)
    copy = read(stepped(db, dmarc_step, raw, facts=PostFacts(dmarc_policy="reject")))
    assert [a.addr_spec for a in copy["From"].addresses] == [LIST]
    assert copy["From"].addresses[0].display_name == "Ana Silva via Steering Committee"
    assert copy["Reply-To"] == ANA
    assert stepped(db, dmarc_step, raw, facts=PostFacts(dmarc_policy="none")) == raw
    assert stepped(db, dmarc_step, raw) == raw, "no policy found"


def test_the_footer_is_added_and_a_multipart_message_stays_valid(db: Database) -> None:
    plain = read(stepped(db, add_footer, mail(ANA, LIST, body="See you in Nairobi.\n")))
    assert plain.get_content().startswith("See you in Nairobi.\n")
    assert FOOTER in plain.get_content()
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ANA, LIST, "Agenda"
    message.set_content("See you in Nairobi.\n")
    message.add_alternative("<p>See you in Nairobi.</p>\n", subtype="html")
    raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    copy = read(stepped(db, add_footer, raw))
    assert copy.get_content_type() == "multipart/mixed" and not copy.defects
    original, footer = copy.get_payload()  # type: ignore[misc]
    assert original.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in original.iter_parts()] == ["text/plain", "text/html"]
    assert FOOTER in footer.get_content()
    assert stepped(db, add_footer, raw, footer="no") == raw


def test_list_headers_replace_old_ones(db: Database) -> None:
    raw = mail(ANA, LIST, List_Id="<news.other.example>", List_Unsubscribe="<mailto:x@y>",
               Precedence="bulk")
    copy = read(stepped(db, list_headers, raw))
    assert copy.get_all("List-Id") == [f'"Steering Committee" <steering.{DOMAIN}>']
    assert copy.get_all("List-Post") == [f"<mailto:{LIST}>"]
    assert copy.get_all("List-Unsubscribe") == [f"<mailto:steering-leave@{DOMAIN}>"]
    assert copy.get_all("Precedence") == ["list"]
    assert copy["List-Unsubscribe-Post"] is None


def test_list_headers_offer_one_click_unsubscribe_when_pages_are_published(
        db: Database) -> None:
    site = list_site(site_config(base_url="https://lists.example.org"))
    copy = read(stepped(db, list_headers, mail(ANA, LIST), site=site))
    one_click = f"https://lists.example.org/unsubscribe/{UNSUBSCRIBE_MARKER.decode()}"
    assert copy["List-Unsubscribe"] == f"<{one_click}>, <mailto:steering-leave@{DOMAIN}>"
    assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_the_steps_run_in_the_documented_order() -> None:
    assert [step.__name__ for step in PIPELINE] == \
        ["message_id", "subject_prefix", "reply_to", "dmarc_step", "add_footer",
         "list_headers"]


def test_distribute_stores_the_copy_once_for_each_regular_member(db: Database) -> None:
    def distribute(session: Session) -> int:
        steering = service.find(session, "steering")
        for member in session.scalars(select(Member).where(Member.list_id == steering.id)):
            if member.address == "carla@party.test":
                member.delivery = "digest"
            if member.address == "dev@party.test":
                member.enabled = False
        raw = mail(ANA, LIST, subject="Hi")
        received = Message(received_at=0.0, protocol="smtp", peer="127.0.0.1",
                           mail_from=ANA, size=len(raw), sha256="", raw=raw)
        session.add(received)
        session.flush()
        return pipeline.distribute(session, post_of(steering, raw, message_id=received.id))
    outgoing_id = db.transaction(distribute)

    def stored(session: Session) -> tuple[bytes, list[str]]:
        outgoing = session.get(Outgoing, outgoing_id)
        assert outgoing is not None
        return outgoing.data, sorted(session.scalars(select(Delivery.recipient).where(
            Delivery.outgoing_id == outgoing_id)))
    data, recipients = db.query(stored)
    assert recipients == ["ana@strict.example", "ben@party.test"]
    copy = read(data)
    assert copy["Subject"] == "[steering] Hi"
    assert copy["List-Id"] == f'"Steering Committee" <steering.{DOMAIN}>'
    assert FOOTER in copy.get_content()
