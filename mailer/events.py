"""Message events, noted in the transaction that makes them and counted once it commits.

A step that logs a message event (issue 11, item 8: received, a post distributed or
held, deliveries, a bounce, an RSVP) also notes it here, on its session, with the same
`event` and `outcome` as its log line. The daemon's metrics (mailer.metrics) count what a
transaction noted when that transaction commits: work rolled back and tried again is
counted once, and the count does not depend on the log level.
"""

from __future__ import annotations

import collections

from sqlalchemy.orm import Session

KEY = "mailer.events"


def note(session: Session, event: str, outcome: str, count: int = 1) -> None:
    """Note `count` events of this kind in the session's transaction.

    >>> from sqlalchemy.orm import Session
    >>> session = Session()
    >>> note(session, "post", "distributed"); note(session, "delivery", "deferred", 3)
    >>> sorted(noted(session).items())
    [(('delivery', 'deferred'), 3), (('post', 'distributed'), 1)]
    >>> noted(session)
    Counter()
    """
    if count:
        events = session.info.setdefault(KEY, collections.Counter())
        events[(event, outcome)] += count


def noted(session: Session) -> collections.Counter[tuple[str, str]]:
    """The events the session noted, which are forgotten there (once they are counted,
    or once the transaction is rolled back)."""
    found: collections.Counter[tuple[str, str]] = session.info.pop(KEY, collections.Counter())
    return found
