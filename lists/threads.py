"""What the archive reads from a post once, when it is kept: its Message-ID, the posts it
answers, its month and its text.

Threads follow RFC 5322 §3.6.4: a reply names its parent in In-Reply-To and its
ancestors in References. A post joins the thread of the newest of those it finds in the
same list's archive; a post that names none (or only posts we never archived) starts one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage

MAX_ID = 250                 # characters of a Message-ID kept (the column's width)
MAX_REFERENCES = 20          # the newest ids of References looked up, no more
MAX_TEXT = 200_000           # characters of a post's text kept for search and pages

_MESSAGE_ID = re.compile(r"<[^<>\s]{1,248}>")


def message_ids(value: str) -> list[str]:
    """The message identifiers in a field's value, in order, lower-cased for comparison.

    >>> message_ids("<a@x.test> (comment) <B@Y.test>")
    ['<a@x.test>', '<b@y.test>']
    >>> message_ids("no id here")
    []
    """
    return [found.lower() for found in _MESSAGE_ID.findall(value or "")]


def own_id(message: EmailMessage) -> str:
    """The post's own Message-ID, or "" when it has none we can read."""
    found = message_ids(_field(message, "message-id"))
    return found[0][:MAX_ID] if found else ""


def parents(message: EmailMessage) -> list[str]:
    """The ids a reply names, nearest first: In-Reply-To, then References from the end."""
    named = message_ids(_field(message, "in-reply-to"))
    named += reversed(message_ids(_field(message, "references"))[-MAX_REFERENCES:])
    return list(dict.fromkeys(named))[:MAX_REFERENCES + 1]


def month_of(archived_at: float) -> int:
    """The month a post was archived in, as YYYYMM (UTC).

    >>> month_of(0.0)
    197001
    """
    moment = datetime.fromtimestamp(archived_at, UTC)
    return moment.year * 100 + moment.month


def text_of(message: EmailMessage) -> str:
    """The post's plain text (its first text/plain part), bounded; "" when it has none."""
    try:
        body = message.get_body(preferencelist=("plain",))
        text = str(body.get_content()) if body is not None else ""
    except (LookupError, ValueError, AssertionError, TypeError):
        return ""          # an unknown charset or a broken part: nothing to search
    return text[:MAX_TEXT].replace("\r\n", "\n").replace("\x00", "")


def _field(message: EmailMessage, name: str) -> str:
    try:
        return str(message.get(name, "") or "")
    except (IndexError, ValueError, TypeError):
        return ""
