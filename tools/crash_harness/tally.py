"""The count: what reached the sink and what the database kept, against what was acked.

A message is stored once per 250 it got, and once more for each time the daemon stored it
but died (or the disk filled) before the client read the 250, after which the client sent
it again: those extra copies are the "source" duplicates, an MTA's resending. Each stored
copy is delivered once to each member; deliveries beyond that are "delivery" duplicates,
which only a delivery leased (in flight) at a kill may cause.
"""

from __future__ import annotations

import bisect
import collections
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.common import MEMBER_FORMAT
from harness.sink import read_head

from .clients import Posting
from .killer import Kill
from .rig import Rig

NUMBER = re.compile(rb"(?im)^message-id:\s*<bench\.([^.>]+)\.crash\.(\d+)@members\.test>")


def members(count: int) -> list[str]:
    """The members' addresses, as benchmarks/make_list.py makes them."""
    return [MEMBER_FORMAT % n for n in range(1, count + 1)]


def stored_copies(rig: Rig, run_id: str) -> collections.Counter[int]:
    """How many times each number was stored (the `messages` table, read-only)."""
    found: collections.Counter[int] = collections.Counter()
    for (head,) in rig.rows("SELECT substr(raw, 1, 4096) FROM messages"):
        match = NUMBER.search(bytes(head))
        if match and match.group(1).decode() == run_id:
            found[int(match.group(2))] += 1
    return found


def at_sink(rig: Rig, run_id: str) -> tuple[collections.Counter[tuple[int, str]],
                                             dict[tuple[int, str], list[int]]]:
    """Deliveries at the sink by (number, recipient), and the position of each in the dump
    (its index among every recipient delivery), to tell which kill a duplicate followed."""
    seen: collections.Counter[tuple[int, str]] = collections.Counter()
    where: dict[tuple[int, str], list[int]] = collections.defaultdict(list)
    index = 0
    pattern = f"<bench.{run_id}.crash."
    for record in rig.sink.records():
        message_id, _, recipients = read_head(record)
        number = (int(message_id[len(pattern):].split("@")[0])
                  if message_id.startswith(pattern) else 0)
        for recipient in recipients:
            seen[(number, recipient)] += 1
            where[(number, recipient)].append(index)
            index += 1
    return seen, where


@dataclass
class Count:
    """The figures of one scenario's count."""

    acknowledged: int = 0
    undelivered: list[str] = field(default_factory=list)     # "N -> member"
    stored_not_delivered: int = 0
    source_duplicates: int = 0
    delivery_duplicates: int = 0
    duplicates_by_kill: dict[int, int] = field(default_factory=dict)
    unexplained_duplicates: int = 0       # before any kill: none may be

    def figures(self) -> dict[str, Any]:
        """For the JSON document and the table."""
        return {"acknowledged": self.acknowledged, "undelivered": len(self.undelivered),
                "undelivered_sample": self.undelivered[:20],
                "stored_not_delivered": self.stored_not_delivered,
                "source_duplicates": self.source_duplicates,
                "delivery_duplicates": self.delivery_duplicates,
                "max_duplicates_after_one_kill": max(self.duplicates_by_kill.values(),
                                                     default=0),
                "unexplained_duplicates": self.unexplained_duplicates}


def missing(seen: Mapping[tuple[int, str], int], posting: Posting,
            audience: list[str]) -> list[str]:
    """"N -> member" for every acknowledged number a member did not get.

    >>> posting = Posting("r", "l@x.test", next_number=3)
    >>> posting.acked.update({1: 1, 2: 1})
    >>> missing({(1, "a@x.test"): 1}, posting, ["a@x.test"])
    ['2 -> a@x.test']
    """
    return [f"{number} -> {member}" for number in posting.numbers() if posting.acked[number]
            for member in audience if not seen.get((number, member), 0)]


def count(rig: Rig, posting: Posting, audience: list[str], kills: list[Kill]) -> Count:
    """Every acknowledged number against every member of `audience` at the sink."""
    stored = stored_copies(rig, posting.run_id)
    seen, where = at_sink(rig, posting.run_id)
    marks = [kill.sink_mark for kill in kills]
    result = Count(acknowledged=sum(1 for n in posting.numbers() if posting.acked[n]),
                   undelivered=missing(seen, posting, audience))
    for number in posting.numbers():
        copies = stored.get(number, 0)
        result.source_duplicates += max(0, copies - 1) * len(audience)
        for member in audience:
            result.stored_not_delivered += max(0, copies - seen.get((number, member), 0))
            for position in where.get((number, member), [])[max(copies, 1):]:
                result.delivery_duplicates += 1
                kill = bisect.bisect_right(marks, position)   # the kills before it
                if kill == 0:
                    result.unexplained_duplicates += 1
                else:
                    result.duplicates_by_kill[kill] = result.duplicates_by_kill.get(kill, 0) + 1
    return result
