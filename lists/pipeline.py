"""The pipeline that makes a post's list copy, and its fan-out to the members.

Each step takes the list copy's bytes and returns new bytes; the pipeline edits the raw
message and leaves the poster's body bytes alone wherever it can. The copy is stored once;
one delivery row per member is inserted by a single INSERT ... SELECT, so a 10,000-member
list costs one statement, not 10,000 objects.
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import make_msgid

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import archive, dmarc, footer, robot
from lists.list_site import ListSite
from lists.models import MailingList, Member
from lists.post import Post, list_id
from mailer import outbox, rawmail, templates
from mailer.outbox import UNSUBSCRIBE_MARKER

LIST_FIELDS = {"list-id", "list-post", "list-help", "list-unsubscribe", "list-subscribe",
               "list-owner", "list-archive", "list-unsubscribe-post", "precedence", "x-loop",
               "return-path", "delivered-to", "x-original-to", "archived-at"}


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
    language = templates.language_of(post.mailing_list.language)
    _, text = templates.render(post.site.templates, "footer", language,
                               {"list": robot.list_view(post.site, post.mailing_list),
                                "site_name": post.site.name})
    return footer.add_footer(data, post.message, text)


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


def message_id(post: Post, data: bytes) -> bytes:
    """A post without a Message-ID gets one (RFC 5322 §3.6.4 says SHOULD; Gmail refuses
    mail without); one it has is kept, so that replies thread."""
    if post.message.get("message-id") is not None:
        return data
    return rawmail.rewrite(data, set(), [("Message-ID", make_msgid(domain=post.site.domain))])


PIPELINE: tuple[Callable[[Post, bytes], bytes], ...] = (
    message_id, subject_prefix, reply_to, dmarc_step, add_footer, list_headers)


def fan_out(session: Session, post: Post, data: bytes) -> int:
    """Store the list copy once and one delivery per regular member; returns its id.
    The archive keeps it first: a public archive's copy says where it is (Archived-At).
    Then the ARC set, over the copy as every member gets it but their List-Unsubscribe."""
    data = archive.keep(session, post, data)
    if post.site.arc is not None and post.facts.arc is not None:
        data = post.site.arc.seal(data, post.facts.arc)
    outgoing = outbox.enqueue(session, sender=post.address("-bounces+{token}"),
                              recipients=(), data=data, kind="list",
                              source_id=post.message_id)
    outbox.enqueue_each(session, outgoing, select(Member.address, Member.id).where(
        Member.list_id == post.mailing_list.id, Member.role == "member",
        Member.enabled.is_(True), Member.delivery == "regular",
        # Never to one of our own addresses, however it became a member: a loop.
        ~Member.address.endswith("@" + post.site.domain, autoescape=True)))
    return outgoing.id


def distribute(session: Session, post: Post) -> int:
    """Make the list copy and send it to every member; returns the outgoing id."""
    data = post.raw
    for step in PIPELINE:
        data = step(post, data)
    return fan_out(session, post, data)
