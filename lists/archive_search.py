"""Full-text search of a list's archive, in the database's own index (migration 0013).

SQLite: the FTS5 table `archive_search` over the subject and the text. PostgreSQL: the
GIN index on `to_tsvector('simple', subject || ' ' || body)`; the query below repeats that
expression word for word, or the planner would not use the index. Either way a visitor's
words are only ever values: each becomes a quoted FTS5 string or goes through
`plainto_tsquery`, so no query syntax of theirs reaches the engine. A post matches when it
holds every word; the newest come first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Select, column, select, table, text
from sqlalchemy.orm import Session

from lists.models import Archived

MAX_QUERY = 200          # characters of a query read, no more
MAX_WORDS = 8
PER_PAGE = 20
MAX_PAGES = 10           # a search shows at most PER_PAGE * MAX_PAGES posts

_WORD = re.compile(r"\w+")
_FTS = table("archive_search", column("rowid"))
_SEARCHED = ("to_tsvector('simple', coalesce(archive.subject, '') || ' ' "
             "|| coalesce(archive.body, ''))")


def words(query: str) -> list[str]:
    """The words of a visitor's query that are searched for, bounded.

    >>> words('"réunion" AND (Dakar*) OR NEAR')
    ['réunion', 'AND', 'Dakar', 'OR', 'NEAR']
    >>> len(words("a " * 500))
    8
    """
    return _WORD.findall(query[:MAX_QUERY])[:MAX_WORDS]


@dataclass(frozen=True)
class Found:
    """A post a search found, without its bytes."""

    id: int
    archived_at: float
    subject: str
    sender: str
    thread_id: int


def search(session: Session, list_id: int, searched: list[str],
           page: int) -> tuple[list[Found], bool]:
    """One page (from 1) of the list's posts holding every word, newest first, and
    whether another page follows."""
    if not searched or not 1 <= page <= MAX_PAGES:
        return [], False
    query = _matching(session, searched).where(Archived.list_id == list_id) \
        .order_by(Archived.id.desc()).offset((page - 1) * PER_PAGE).limit(PER_PAGE + 1)
    rows = [Found(ident, at, subject, sender, thread or ident)
            for ident, at, subject, sender, thread in session.execute(query)]
    return rows[:PER_PAGE], len(rows) > PER_PAGE and page < MAX_PAGES


def _matching(session: Session,
              searched: list[str]) -> Select[int, float, str, str, int | None]:
    found = select(Archived.id, Archived.archived_at, Archived.subject, Archived.sender,
                   Archived.thread_id)
    if session.get_bind().dialect.name == "sqlite":
        # Each word a quoted FTS5 string ("" inside is the only escape): AND of all.
        expression = " ".join('"' + word.replace('"', '""') + '"' for word in searched)
        hits = select(_FTS.c.rowid).where(text("archive_search MATCH :expression")
                                          .bindparams(expression=expression))
        return found.where(Archived.id.in_(hits))
    return found.where(text(f"{_SEARCHED} @@ plainto_tsquery('simple', :words)")
                       .bindparams(words=" ".join(searched)))
