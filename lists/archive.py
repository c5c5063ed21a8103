"""The archive: every post as the list distributed it, and its export as an mbox file.

A post is archived in the transaction that distributes it, as the list copy (after the
pipeline, before any per-member personalisation), so the archive holds what members read
and nothing that was held or discarded. The export streams rows in id order into a file
that `mailbox.mbox`, mutt and every other mbox reader understand.
"""

from __future__ import annotations

import mailbox
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import threads
from lists.models import Archived, MailingList
from lists.post import Post
from lists.service import ListError
from mailer import rawmail
from mailer.inbound import parse
from mailer.outbox import UNSUBSCRIBE_MARKER

BATCH = 200


def subject_of(data: bytes) -> str:
    """The decoded Subject of a message, on one line (RFC 2047 words decoded).

    >>> subject_of(b"Subject: =?utf-8?q?R=C3=A9union?=\\r\\n\\r\\nbody")
    'Réunion'
    >>> subject_of(b"From: a@b.test\\r\\n\\r\\n")
    ''
    """
    headers = parse(data, headersonly=True)
    return " ".join(str(headers.get("subject", "")).split())


def impersonal(data: bytes, leave: str) -> bytes:
    """The list copy without the per-member one-click unsubscribe link (RFC 8058).

    That link is made for each member at delivery time; an archived copy is read by
    everyone, so it keeps only the list's own `mailto:` unsubscribe address.

    >>> impersonal(b"List-Unsubscribe: <https://x/u/@@unsubscribe-token@@>, <mailto:l@x>\\r\\n"
    ...            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\\r\\n\\r\\nhi", "l@x")
    b'List-Unsubscribe: <mailto:l@x>\\r\\n\\r\\nhi'
    """
    end = data.find(b"\r\n\r\n")
    if UNSUBSCRIBE_MARKER not in (data if end < 0 else data[:end]):
        return data
    return rawmail.rewrite(data, {"list-unsubscribe", "list-unsubscribe-post"},
                           [("List-Unsubscribe", f"<mailto:{leave}>")])


def store(session: Session, list_id: int, sender: str, data: bytes,
          archived_at: float, text: str | None = None) -> Archived:
    """Archive one message (CRLF line endings) as the list distributed it, in its thread.

    `text` is the post's plain text, when the caller has read it already.
    """
    headers = parse(data, headersonly=True)
    if text is None:
        text = threads.text_of(parse(data))
    archived = Archived(list_id=list_id, archived_at=archived_at, sender=sender[:320],
                        subject=subject_of(data), data=data,
                        message_id=threads.own_id(headers), month=threads.month_of(archived_at),
                        body=text)
    session.add(archived)
    session.flush()          # the id: a thread's first post names the thread
    archived.thread_id = thread_of(session, list_id, threads.parents(headers)) or archived.id
    return archived


def thread_of(session: Session, list_id: int, parents: list[str]) -> int | None:
    """The thread of the nearest of `parents` (Message-IDs) in the list's archive."""
    if not parents:
        return None
    found = dict(session.execute(select(Archived.message_id, Archived.thread_id).where(
        Archived.list_id == list_id, Archived.message_id.in_(parents))).all())
    return next((found[ident] for ident in parents if found.get(ident)), None)


def keep(session: Session, post: Post, data: bytes) -> bytes:
    """Archive the list copy of a post that is being distributed (same transaction);
    returns the copy members get: with `Archived-At` (RFC 5064) where the archive is
    public, pointing at the post's page, which the archived copy carries too."""
    sender = post.senders[0] if post.senders else post.mail_from
    archived = store(session, post.mailing_list.id, sender,
                     impersonal(data, post.address("-leave")), post.site.clock(),
                     threads.text_of(post.message))
    if not (post.mailing_list.public_archive and post.site.base_url):
        return data
    link = f"<{post_url(post.site.base_url, post.mailing_list.name, archived.id)}>"
    data = rawmail.rewrite(data, {"archived-at"}, [("Archived-At", link)])
    archived.data = impersonal(data, post.address("-leave"))
    return data


def post_url(base_url: str, list_name: str, ident: int) -> str:
    """The stable address of an archived post's page.

    >>> post_url("https://lists.example.org", "steering", 7)
    'https://lists.example.org/lists/steering/7'
    """
    return f"{base_url}/lists/{list_name}/{ident}"


def from_line(sender: str, archived_at: float) -> bytes:
    """The mbox separator line: `From sender asctime` (RFC 4155), in UTC.

    >>> from_line("chair@party.test", 0.0)
    b'From chair@party.test Thu Jan  1 00:00:00 1970\\n'
    >>> from_line("", 0.0)
    b'From MAILER-DAEMON Thu Jan  1 00:00:00 1970\\n'
    """
    address = "".join(sender.split()) or "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(archived_at))
    return f"From {address} {stamp}\n".encode("ascii", "replace")


def export_mbox(session: Session, mailing_list: MailingList, path: Path) -> int:
    """Write the list's archive to a new mbox file (RFC 4155); returns the message count.

    Rows are streamed in batches, never loaded all at once. Lines of a body that begin
    with "From " are written as ">From " by `mailbox.mbox`, so no message splits in two.
    The file must not exist yet: an export never appends to or replaces another file.
    """
    try:
        path.open("xb").close()
    except FileExistsError:
        raise ListError(f"{path} already exists; choose a new file name") from None
    except OSError as error:
        raise ListError(f"cannot write {path}: {error.strerror or error}") from None
    rows = session.execute(
        select(Archived.sender, Archived.archived_at, Archived.data)
        .where(Archived.list_id == mailing_list.id).order_by(Archived.id)
        .execution_options(yield_per=BATCH))
    box = mailbox.mbox(str(path), create=False)
    count = 0
    try:
        for sender, archived_at, data in rows:
            # mbox lines end in LF; a leading From_ line is taken by mailbox as the separator.
            box.add(from_line(sender, archived_at) + data.replace(b"\r\n", b"\n"))
            count += 1
    finally:
        box.close()
    return count
