"""A list's public archive on the web: by month, by thread, searched, and each post.

    /lists/NAME/                  recent posts, the months, the search box
    /lists/NAME/YYYY-MM/          the threads with posts that month (paged)
    /lists/NAME/thread/ID         a thread's posts, oldest first (paged)
    /lists/NAME/ID                one post: the stable address its Archived-At names
    /lists/NAME/search?q=&page=   posts holding every word, newest first (bounded)

Only where the list's owner made the archive public (`public_archive`); any other list,
and a list that does not exist, answers 404 on every route alike, so that a visitor
cannot tell a private archive from none. Addresses are never shown as addresses: a
sender is the name in their From (read from the post's first bytes), else "ana at
example.org", and the same goes for addresses in the text; nothing is made a `mailto:`
link. Every page costs a fixed number of queries
whatever the archive's size, reads no message bytes but the one post's, and shows a
bounded number of rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import archive_search
from lists.list_site import ListSite
from lists.models import Archived, MailingList
from mailer import dates
from mailer.addresses import named_addresses
from mailer.inbound import parse
from mailer.templates import language_of
from mailer.web import Page, Request, Response, Store, render_error, render_page

RECENT = 20              # posts on the archive's first page
THREADS_PER_PAGE = 100   # threads on a month's page
POSTS_PER_PAGE = 50      # posts on a thread's page
EXCERPT = 5_000          # characters of each post a thread's page shows
HEAD = 4_096             # bytes of a post read for its sender's name
MAX_PAGE = 1_000

_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_NAME = r"/lists/(?P<name>[a-z0-9._-]{1,64})/"

Context = dict[str, Any]


def disguise(text: str) -> str:
    """Addresses written so that harvesters do not read them as addresses.

    >>> disguise("Write to ana.silva@party.example.org, or <kofi@x.test>.")
    'Write to ana.silva at party.example.org, or <kofi at x.test>.'
    """
    return _ADDRESS.sub(lambda found: found[0].replace("@", " at "), text)


def pages(site: ListSite, db: Store) -> tuple[Page, ...]:
    """The archive's routes, GET (and HEAD) only."""
    env = site.templates

    def route(pattern: str, template: str, problem: str,
              read: Callable[..., Context | None]) -> Page:
        async def serve(request: Request, match: re.Match[str]) -> Response:
            wanted = request.language()
            found = await db.read(lambda s: _public(s, match, request, wanted, read))
            if found is None:
                return render_error(env, problem, wanted)
            language = found.pop("language")
            return render_page(env, template, language, **found)
        return Page(("GET", "HEAD"), re.compile(_NAME + pattern), serve)

    return (route("", "archive_index", "no_archive", _index),
            route(r"(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[0-2])/", "archive_month",
                  "no_archive", _month),
            route(r"thread/(?P<id>[0-9]{1,12})", "archive_thread", "no_post", _thread),
            route(r"search", "archive_search", "no_archive", _search),
            route(r"(?P<id>[0-9]{1,12})", "archived_post", "no_post", _post))


def _public(session: Session, match: re.Match[str], request: Request, wanted: str | None,
            read: Callable[..., Context | None]) -> Context | None:
    """The page's context when the list's archive is public, in the page's language."""
    mailing_list = session.scalar(select(MailingList).where(MailingList.name == match["name"]))
    if mailing_list is None or not mailing_list.public_archive:
        return None
    language = language_of(wanted, mailing_list.language)
    found = read(session, mailing_list, match, request, language)
    if found is None:
        return None
    return {"list_name": mailing_list.display_name, "list_slug": mailing_list.name,
            "language": language, **found}


def _shown_sender(head: bytes, sender: str) -> str:
    """Who wrote a post, as its pages show them: the From name, else the address disguised.

    >>> _shown_sender(b"From: Ana Silva <ana@party.test>\\r\\n", "ana@party.test")
    'Ana Silva'
    >>> _shown_sender(b"From: ana@party.test\\r\\n", "ana@party.test")
    'ana at party.test'
    """
    named = named_addresses(parse(bytes(head), headersonly=True))
    return disguise(named[0][0] if named else "") or disguise(sender)


def _day(archived_at: float, language: str) -> str:
    return dates.short_day(datetime.fromtimestamp(archived_at, UTC), language)


def _page(request: Request) -> int:
    value = (request.query.get("page") or ["1"])[-1]
    return min(max(int(value), 1), MAX_PAGE) if value.isdigit() and len(value) < 6 else 1


def _index(session: Session, mailing_list: MailingList, match: re.Match[str],
           request: Request, language: str) -> Context:
    recent = session.execute(select(Archived.id, Archived.archived_at, Archived.subject)
                             .where(Archived.list_id == mailing_list.id)
                             .order_by(Archived.id.desc()).limit(RECENT))
    months = session.execute(select(Archived.month, func.count())
                             .where(Archived.list_id == mailing_list.id)
                             .group_by(Archived.month).order_by(Archived.month.desc()))
    return {"posts": [{"id": ident, "date": _day(at, language), "subject": disguise(subject)}
                      for ident, at, subject in recent],
            "months": [{"key": f"{month // 100:04d}-{month % 100:02d}",
                        "name": dates.month(month // 100, month % 100, language),
                        "count": count} for month, count in months if month]}


def _month(session: Session, mailing_list: MailingList, match: re.Match[str],
           request: Request, language: str) -> Context | None:
    year, number, page = int(match["year"]), int(match["month"]), _page(request)
    in_month = (Archived.list_id == mailing_list.id) & (Archived.month == year * 100 + number)
    rows = session.execute(
        select(Archived.thread_id, func.count(), func.max(Archived.archived_at))
        .where(in_month).group_by(Archived.thread_id).order_by(func.min(Archived.id))
        .offset((page - 1) * THREADS_PER_PAGE).limit(THREADS_PER_PAGE + 1)).all()
    if not rows and page == 1:
        return None
    shown = rows[:THREADS_PER_PAGE]
    subjects = dict(session.execute(select(Archived.id, Archived.subject).where(
        Archived.id.in_([thread for thread, _, _ in shown]))).all())
    return {"month_name": dates.month(year, number, language), "page": page,
            "more": len(rows) > THREADS_PER_PAGE,
            "threads": [{"id": thread, "subject": disguise(subjects.get(thread or 0, "")),
                         "count": count, "date": _day(last, language)}
                        for thread, count, last in shown]}


def _thread(session: Session, mailing_list: MailingList, match: re.Match[str],
            request: Request, language: str) -> Context | None:
    thread, page = int(match["id"]), _page(request)
    rows = session.execute(
        select(Archived.id, Archived.archived_at, Archived.subject, Archived.sender,
               func.substr(Archived.body, 1, EXCERPT + 1), func.substr(Archived.data, 1, HEAD))
        .where(Archived.list_id == mailing_list.id, Archived.thread_id == thread)
        .order_by(Archived.id).offset((page - 1) * POSTS_PER_PAGE)
        .limit(POSTS_PER_PAGE + 1)).all()
    if not rows:
        return None
    first = session.scalar(select(Archived.subject).where(Archived.id == thread))
    return {"subject": disguise(first or rows[0][2]), "page": page,
            "more": len(rows) > POSTS_PER_PAGE,
            "posts": [{"id": ident, "date": _day(at, language), "subject": disguise(subject),
                       "sender": _shown_sender(head, sender),
                       "text": disguise(text[:EXCERPT]), "cut": len(text) > EXCERPT}
                      for ident, at, subject, sender, text, head in rows[:POSTS_PER_PAGE]]}


def _search(session: Session, mailing_list: MailingList, match: re.Match[str],
            request: Request, language: str) -> Context:
    query = (request.query.get("q") or [""])[-1][:archive_search.MAX_QUERY]
    page = min(_page(request), archive_search.MAX_PAGES)
    found, more = archive_search.search(session, mailing_list.id,
                                        archive_search.words(query), page)
    heads: dict[int, bytes] = dict(session.execute(
        select(Archived.id, func.substr(Archived.data, 1, HEAD))
        .where(Archived.id.in_([post.id for post in found]))).all())
    return {"query": query, "page": page, "more": more,
            "results": [{"id": post.id, "date": _day(post.archived_at, language),
                         "subject": disguise(post.subject),
                         "sender": _shown_sender(heads.get(post.id, b""), post.sender)}
                        for post in found]}


def _post(session: Session, mailing_list: MailingList, match: re.Match[str],
          request: Request, language: str) -> Context | None:
    archived = session.get(Archived, int(match["id"]))
    if archived is None or archived.list_id != mailing_list.id:
        return None
    message = parse(archived.data)
    month = archived.month
    return {"subject": disguise(archived.subject),
            "senders": [disguise(name) or disguise(address)
                    for name, address in named_addresses(message)],
            "date": dates.stamp(archived.archived_at, language),
            "thread": archived.thread_id or archived.id,
            "month": f"{month // 100:04d}-{month % 100:02d}",
            "text": disguise(archived.body) if archived.body else None}
