"""Importing and exporting members: CSV (address, name, language) or one address a line.

An import of thousands of members is a few statements: addresses are checked in Python,
the ones already on the list are found with one query per chunk, and the new ones are
inserted in bulk.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from lists.models import LANGUAGES, MailingList, Member
from mailer.addresses import AddressError, normalize

CHUNK = 1000
COLUMNS = ("address", "name", "language", "delivery")


@dataclass(frozen=True)
class Row:
    line: int
    address: str
    name: str = ""
    language: str = ""


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)


def read_rows(handle: TextIO) -> Iterator[Row]:
    """Rows of a CSV (with or without the header line) or of one address a line.

    >>> import io
    >>> list(read_rows(io.StringIO("address,name\\nana@example.org,Ana\\n\\nbo@example.org\\n")))
    [Row(line=2, address='ana@example.org', name='Ana', language=''), \
Row(line=4, address='bo@example.org', name='', language='')]
    """
    for number, fields in enumerate(csv.reader(handle), start=1):
        cells = [cell.strip() for cell in fields]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() in ("address", "email", "e-mail"):
            continue
        cells += [""] * (3 - len(cells))
        yield Row(number, cells[0], cells[1], cells[2].lower())


def import_rows(session: Session, mailing_list: MailingList, rows: Iterable[Row],
                progress: Callable[[int], None] = lambda n: None) -> ImportReport:
    """Add every valid new address as a member; report what was added and what was not."""
    report = ImportReport()
    seen: set[str] = set()
    batch: list[Row] = []
    for row in rows:
        try:
            address = normalize(row.address)
        except AddressError as error:
            report.invalid.append((row.line, str(error)))
            continue
        if row.language and row.language not in LANGUAGES:
            report.invalid.append((row.line, f"unknown language {row.language!r}"))
            continue
        if address in seen:
            report.existing += 1
            continue
        seen.add(address)
        batch.append(Row(row.line, address, row.name[:200], row.language))
        if len(batch) >= CHUNK:
            _insert(session, mailing_list, batch, report)
            progress(len(batch))
            batch = []
    _insert(session, mailing_list, batch, report)
    progress(len(batch))
    return report


def _insert(session: Session, mailing_list: MailingList, batch: list[Row],
            report: ImportReport) -> None:
    if not batch:
        return
    present = set(session.scalars(select(Member.address).where(
        Member.list_id == mailing_list.id, Member.role == "member",
        Member.address.in_([row.address for row in batch]))))
    now = time.time()
    new = [{"list_id": mailing_list.id, "address": row.address, "role": "member",
            "display_name": row.name, "language": row.language, "delivery": "regular",
            "joined_at": now, "joined_by": "owner", "enabled": True, "disabled_reason": "",
            "bounce_score": 0.0}
           for row in batch if row.address not in present]
    if new:
        session.execute(insert(Member), new)
    report.added += len(new)
    report.existing += len(batch) - len(new)


def export_rows(session: Session, mailing_list: MailingList, handle: TextIO) -> int:
    """Write the members as CSV (the import format, plus delivery); returns the count."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    query = (select(Member.address, Member.display_name, Member.language, Member.delivery)
             .where(Member.list_id == mailing_list.id, Member.role == "member")
             .order_by(Member.address).execution_options(yield_per=CHUNK))
    for row in session.execute(query):
        writer.writerow(row)
        count += 1
    return count
