"""Digests: the list's archived posts, gathered into one message per period.

The archive is the digest's source: `DigestState.last_archived_id` marks the last post a
digest carried. The `digests` job looks at every list with posts after that mark. A digest
is due when its oldest post has waited a full period (daily, weekly or monthly, and at
least one period after the previous digest), or at once when the posts waiting reach
`digest_max_kb`; a digest carries posts up to that size, the rest wait for the next one.
A list with nothing waiting sends nothing: a digest is never empty. A list that nobody
reads as a digest moves its mark on without sending, so a member who switches to digests
later gets the posts from then on, not a backlog.

The digest is built once and stored once, with one delivery row per digest member
inserted by a single INSERT ... SELECT, each with its member id, so that the delivery
engine gives every member their own VERP envelope sender and unsubscribe link.

Two forms: MIME (RFC 2046 §5.1.5; multipart/mixed of the masthead and table of contents,
a multipart/digest of message/rfc822 parts, and the footer) is what members get; the
plain-text form of RFC 1153 is `rfc1153()`.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid
from typing import Any, cast

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from lists import robot, service
from lists.list_site import ListSite
from lists.models import Archived, DigestState, MailingList, Member
from lists.pipeline import with_list_fields
from mailer import outbox, templates
from mailer.addresses import named_addresses
from mailer.inbound import parse
from mailer.jobs import Job

log = logging.getLogger(__name__)

KIND = "digest"
# RFC 1153: the headers an enclosed message keeps, in this order.
RFC1153_FIELDS = ("Date", "From", "To", "Cc", "Subject", "Message-ID", "Keywords")
SEPARATOR_70 = "-" * 70
SEPARATOR_30 = "-" * 30


# -- when ---------------------------------------------------------------------------

def period_end(period: str, start: float) -> float:
    """When a period that began at `start` ends: a day, a week, or a calendar month (UTC).

    >>> day = datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp()
    >>> [datetime.fromtimestamp(period_end(p, day), UTC).date().isoformat()
    ...  for p in ("daily", "weekly", "monthly")]
    ['2026-02-01', '2026-02-07', '2026-02-28']
    """
    moment = datetime.fromtimestamp(start, UTC)
    if period == "daily":
        return (moment + timedelta(days=1)).timestamp()
    if period == "weekly":
        return (moment + timedelta(weeks=1)).timestamp()
    year, month = divmod(moment.year * 12 + moment.month, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day).timestamp()


def numbering(volume: int, issue: int, last_sent_at: float, now: float) -> tuple[int, int]:
    """(volume, issue) of the next digest: a new volume each calendar year (RFC 1153).

    >>> jan, dec = datetime(2026, 1, 2, tzinfo=UTC), datetime(2025, 12, 30, tzinfo=UTC)
    >>> numbering(1, 0, 0.0, jan.timestamp())
    (1, 1)
    >>> numbering(1, 41, jan.timestamp(), jan.timestamp() + 86400)
    (1, 42)
    >>> numbering(1, 41, dec.timestamp(), jan.timestamp())
    (2, 1)
    """
    if issue == 0:
        return volume, 1
    if time.gmtime(last_sent_at).tm_year != time.gmtime(now).tm_year:
        return volume + 1, 1
    return volume, issue + 1


@dataclass(frozen=True)
class Backlog:
    """The posts waiting for the next digest, as far as that digest will carry them."""

    upto: int          # id of the last post the next digest carries
    count: int
    size: int          # bytes of those posts
    oldest: float      # when the oldest of them was archived
    full: bool         # they reach the list's digest_max_kb


def backlog(session: Session, mailing_list: MailingList, after: int) -> Backlog | None:
    """What waits after archive id `after`, cut where the size threshold is reached."""
    limit = mailing_list.digest_max_kb * 1024
    rows = session.execute(
        select(Archived.id, Archived.archived_at, func.length(Archived.data))
        .where(Archived.list_id == mailing_list.id, Archived.id > after)
        .order_by(Archived.id).execution_options(yield_per=500))
    upto, count, size, oldest = after, 0, 0, 0.0
    for ident, archived_at, length in rows:
        upto, count, size = ident, count + 1, size + int(length or 0)
        oldest = oldest or archived_at
        if size >= limit:
            break
    if count == 0:
        return None
    return Backlog(upto, count, size, oldest, size >= limit)


def due(mailing_list: MailingList, state: DigestState, waiting: Backlog, now: float) -> bool:
    """Whether the digest goes now: the size threshold, or a full period has passed."""
    start = max(state.last_sent_at, waiting.oldest)
    return waiting.full or now >= period_end(mailing_list.digest_period, start)


def state_of(session: Session, mailing_list: MailingList) -> DigestState:
    """The list's digest state, locked; a new one starts at the beginning of the archive.

    The job looks at every list with waiting posts, readers or not, so a state exists
    from the list's first post on, and no post is ever skipped.
    """
    state = session.get(DigestState, mailing_list.id, with_for_update=True)
    if state is None:
        state = DigestState(list_id=mailing_list.id, last_archived_id=0, last_sent_at=0.0,
                            volume=1, issue=0)
        session.add(state)
        session.flush()
    return state


# -- what -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One post in a digest."""

    subject: str
    author: str
    message: EmailMessage
    ascii: bool


@dataclass(frozen=True)
class Issue:
    """One digest: its list, numbering, date and posts."""

    mailing_list: MailingList
    volume: int
    number: int
    date: float
    entries: tuple[Entry, ...]


def author_of(message: EmailMessage, fallback: str) -> str:
    """The poster's name for the table of contents, else the address.

    >>> author_of(parse(b"From: Ana Silva <ana@x.test>\\n\\n"), "")
    'Ana Silva'
    """
    pairs = named_addresses(message)
    for name, address in pairs:
        if name or address:
            return " ".join((name or address).split())
    return fallback


def entries(session: Session, list_id: int, after: int, upto: int) -> tuple[Entry, ...]:
    """The archived posts with ids in (after, upto], oldest first, parsed once."""
    rows = session.execute(
        select(Archived.sender, Archived.subject, Archived.data)
        .where(Archived.list_id == list_id, Archived.id > after, Archived.id <= upto)
        .order_by(Archived.id))
    found = []
    for sender, subject, data in rows:
        message = parse(data.replace(b"\r\n", b"\n"))
        found.append(Entry(subject, author_of(message, sender), message, data.isascii()))
    return tuple(found)


@dataclass(frozen=True)
class Texts:
    """The words of one digest, in the list's language (templates digest_header/footer)."""

    subject: str
    masthead: str      # how to post and change delivery, and the table of contents
    omitted: str       # said where a non-text part is left out of the plain form
    signoff: str       # "End of ... Digest, Vol N, Issue M" (RFC 1153 trailer)
    footer: str


def texts(site: ListSite, issue: Issue) -> Texts:
    """Render the digest's header and footer templates."""
    language = templates.language_of(issue.mailing_list.language)
    context: dict[str, Any] = {
        "list": robot.list_view(site, issue.mailing_list), "site_name": site.name,
        "volume": issue.volume, "issue": issue.number,
        "topics": [{"number": n, "subject": e.subject, "author": e.author}
                   for n, e in enumerate(issue.entries, start=1)]}
    module = templates.render_module(site.templates, "digest_header", language, context)
    signoff, footer = templates.render(site.templates, "digest_footer", language, context)
    return Texts(subject=templates.subject_of(module),
                 masthead=str(module), omitted=str(getattr(module, "omitted", "")),
                 signoff=signoff, footer=footer)


# -- how: the two forms ------------------------------------------------------------------

def text_encoding(text: str) -> str:
    """8bit while every line fits SMTP's 998 octets (RFC 5322 §2.1.1), else QP.

    >>> text_encoding("Réunion à Dakar\\n"), text_encoding("x" * 999)
    ('8bit', 'quoted-printable')
    """
    fits = all(len(line.encode()) <= 998 for line in text.splitlines())
    return "8bit" if fits else "quoted-printable"


def _addressed(site: ListSite, issue: Issue, subject: str) -> EmailMessage:
    """A new message from the list to the list, dated and identified."""
    mailing_list = issue.mailing_list
    message = EmailMessage()
    message["From"] = formataddr((mailing_list.display_name, site.address(mailing_list.name)))
    message["To"] = site.address(mailing_list.name)
    message["Subject"] = subject
    message["Date"] = formatdate(issue.date)
    message["Message-ID"] = make_msgid(domain=site.domain)
    return message


def _as_list_mail(site: ListSite, mailing_list: MailingList, data: bytes) -> bytes:
    """The list's RFC 2369 / RFC 2919 fields, as on every post (lists/pipeline.py)."""
    return with_list_fields(site, mailing_list, data)


def mime(site: ListSite, issue: Issue) -> bytes:
    """The MIME digest: masthead and contents, the posts, the footer (RFC 2046 §5.1.5)."""
    words = texts(site, issue)
    message = _addressed(site, issue, words.subject)
    message.set_content(words.masthead, charset="utf-8", cte=text_encoding(words.masthead))
    message.make_mixed()
    digest = MIMEPart()
    digest["Content-Type"] = "multipart/digest"
    for entry in issue.entries:
        part = MIMEPart()
        part.set_content(entry.message, cte="7bit" if entry.ascii else "8bit")
        digest.attach(cast(EmailMessage, part))
    message.attach(cast(EmailMessage, digest))
    footer = MIMEPart()
    closing = f"{words.footer.rstrip()}\n\n{words.signoff}\n"
    footer.set_content(closing, charset="utf-8", cte=text_encoding(closing))
    message.attach(cast(EmailMessage, footer))
    return _as_list_mail(site, issue.mailing_list, message.as_bytes(policy=SMTP))


def plain_body(message: EmailMessage, omitted: str) -> str:
    """A post's text for a plain digest: its text/plain body, cleaned as RFC 1153 asks.

    Leading and trailing blank lines go; a line of exactly 30 hyphens starts with a blank
    instead, so that it cannot be taken for a separator.

    >>> note = parse(
    ...     b"Subject: x\\n\\n\\nAgenda\\n" + b"-" * 30 + b"\\nEnd\\n\\n")
    >>> plain_body(note, "[omitted]").splitlines()
    ['Agenda', ' -----------------------------', 'End']
    """
    body = message.get_body(preferencelist=("plain",))
    text = ""
    if isinstance(body, EmailMessage):
        try:
            text = body.get_content()
        except (LookupError, ValueError):
            text = ""
    lines = [(" " + line[1:]) if line == SEPARATOR_30 else line.rstrip()
             for line in text.splitlines()]
    if body is None or any(True for _ in message.iter_attachments()):
        lines += ["", omitted] if lines else [omitted]
    return "\n".join(lines).strip("\n")


def enclosed(message: EmailMessage, omitted: str) -> str:
    """One post as RFC 1153 encloses it: its Date .. Keywords lines, a blank, the text."""
    lines = []
    for name in RFC1153_FIELDS:
        for value in message.get_all(name, []):
            # Decoded and on one line, so that a plain-text reader sees words.
            lines.append(f"{name}: {' '.join(str(value).split())}")
    return "\n".join(lines) + "\n\n" + plain_body(message, omitted)


def rfc1153(site: ListSite, issue: Issue) -> bytes:
    """The plain-text digest of RFC 1153: preamble, enclosed messages, trailer."""
    words = texts(site, issue)
    parts = [words.masthead.rstrip(), "", SEPARATOR_70, ""]
    for entry in issue.entries:
        parts += [enclosed(entry.message, words.omitted), "", SEPARATOR_30, ""]
    parts += [words.footer.strip(), "", words.signoff, "*" * len(words.signoff), ""]
    message = _addressed(site, issue, words.subject)
    text = "\n".join(parts)
    message.set_content(text, charset="utf-8", cte=text_encoding(text))
    return _as_list_mail(site, issue.mailing_list, message.as_bytes(policy=SMTP))


# -- sending ------------------------------------------------------------------------------

def readers(list_id: int, form: str | None = None) -> Select:  # type: ignore[type-arg]
    """The members who take the list as a digest, of one form or any (address, id)."""
    query = select(Member.address, Member.id).where(
        Member.list_id == list_id, Member.role == "member", Member.enabled.is_(True),
        Member.delivery == "digest")
    return query if form is None else query.where(Member.digest_format == form)


FORMS: tuple[tuple[str, Callable[[ListSite, Issue], bytes]], ...] = (
    ("mime", lambda site, issue: mime(site, issue)),
    ("plain", lambda site, issue: rfc1153(site, issue)))


def queue(session: Session, site: ListSite, mailing_list: MailingList, data: bytes,
          form: str = "mime") -> int:
    """Store the digest once and one delivery per digest member; returns its id."""
    # VERP: the delivery engine puts each member's signed token in place of {token}.
    sender = site.address(mailing_list.name + "-bounces+{token}")
    outgoing = outbox.enqueue(session, sender=sender, recipients=(), data=data, kind=KIND)
    # Deliveries are due by the wall clock, whatever time the scheduler was given.
    outbox.enqueue_each(session, outgoing, readers(mailing_list.id, form))
    return outgoing.id


def send(session: Session, site: ListSite, mailing_list: MailingList, now: float,
         force: bool = False) -> int:
    """Send the list's digest if it is due (or `force`); returns 1 if one was queued."""
    state = state_of(session, mailing_list)
    waiting = backlog(session, mailing_list, state.last_archived_id)
    if waiting is None or not (force or due(mailing_list, state, waiting, now)):
        return 0
    after, state.last_archived_id = state.last_archived_id, waiting.upto
    if not session.scalar(select(readers(mailing_list.id).exists())):
        return 0
    volume, number = numbering(state.volume, state.issue, state.last_sent_at, now)
    issue = Issue(mailing_list, volume, number, now,
                  entries(session, mailing_list.id, after, waiting.upto))
    for form, render in FORMS:
        if session.scalar(select(readers(mailing_list.id, form).exists())):
            queue(session, site, mailing_list, render(site, issue), form)
    state.volume, state.issue, state.last_sent_at = volume, number, now
    return 1


def send_now(session: Session, site: ListSite, name: str, now: float) -> int:
    """Send the list's digest now if anything waits, period or not (an owner's request)."""
    return send(session, site, service.find(session, name), now, force=True)


def lists_waiting(session: Session) -> list[MailingList]:
    """Lists with archived posts that no digest has carried yet."""
    mark = func.coalesce(select(DigestState.last_archived_id)
                         .where(DigestState.list_id == MailingList.id)
                         .scalar_subquery(), 0)
    newer = exists().where(Archived.list_id == MailingList.id, Archived.id > mark)
    return list(session.scalars(select(MailingList).where(newer).order_by(MailingList.id)))


def job(site: ListSite) -> Job:
    """The scheduler's `digests` job: every minute, send the digests that are due."""
    def run(session: Session, now: float) -> int:
        sent = 0
        for mailing_list in lists_waiting(session):
            try:
                with session.begin_nested():
                    sent += send(session, site, mailing_list, now)
            except Exception:
                # One list's broken digest must not hold back the others'.
                log.exception("digest of %s failed; it is tried again", mailing_list.name)
        return sent

    return Job("digests", 60, run)
