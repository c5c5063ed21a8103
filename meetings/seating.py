"""Seats from a CSV file (`alliance delegate import`): every row checked, then all or none.

The file has a header row `address,name,party,body,language` (RFC 4180). Each row seats
one delegate as `organisation.seat` does, each in a savepoint, so that the charter's rules
are checked against the rows before it; any bad row, whether its cells are wrong or the
seat is refused, is reported with its line number, and then nothing is applied.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from meetings import organisation
from meetings.models import Body, Delegate, Seat
from meetings.organisation import MeetingError

HEADER = ("address", "name", "party", "body", "language")


@dataclass(frozen=True)
class SeatRow:
    line: int
    cells: tuple[str, ...]


@dataclass(frozen=True)
class Imported:
    seated: int
    already: int
    bodies: tuple[Body, ...]   # the bodies that have new seats


class SeatsRefused(MeetingError):
    """Rows that cannot be applied, one line each; nothing was."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} bad row(s); nothing imported")
        self.problems = problems


def read_rows(handle: TextIO) -> list[SeatRow]:
    """The rows after the header, blank lines left out; a wrong header is MeetingError.

    >>> import io
    >>> read_rows(io.StringIO("address,name,party,body,language\\n\\n"
    ...                       "ana@x.org,Ana,ODM,board,en\\n"))
    [SeatRow(line=3, cells=('ana@x.org', 'Ana', 'ODM', 'board', 'en'))]
    """
    reader = csv.reader(handle)
    try:
        header = tuple(cell.strip().lower() for cell in next(reader, []))
        if header != HEADER:
            raise MeetingError(f"line 1 must be the header {','.join(HEADER)}, not "
                               f"{','.join(header) or 'empty'}")
        return [SeatRow(reader.line_num, tuple(cell.strip() for cell in cells))
                for cells in reader if any(cell.strip() for cell in cells)]
    except UnicodeDecodeError:
        raise MeetingError("the file is not UTF-8 text; save it as CSV UTF-8") from None
    except csv.Error as error:
        raise MeetingError(f"line {reader.line_num}: not CSV ({error})") from None


def import_seats(session: Session, rows: list[SeatRow]) -> Imported:
    """Seat every row's delegate, or none (SeatsRefused) if any row is bad."""
    problems: list[str] = []
    seated, already = 0, 0
    bodies: dict[int, Body] = {}
    seen: dict[tuple[str, int], int] = {}
    for row in rows:
        try:
            body, outcome = _apply(session, row, seen)
        except MeetingError as error:
            problems.append(f"line {row.line}: {error}")
            continue
        if outcome:
            seated += 1
            bodies[body.id] = body
        else:
            already += 1
    if problems:
        raise SeatsRefused(problems)
    return Imported(seated, already, tuple(bodies.values()))


def _apply(session: Session, row: SeatRow, seen: dict[tuple[str, int], int]) -> \
        tuple[Body, bool]:
    """Seat one row's delegate in a savepoint: (the body, whether a seat was made)."""
    if len(row.cells) != len(HEADER):
        raise MeetingError(f"{len(row.cells)} cells, not {len(HEADER)} ({','.join(HEADER)})")
    address, name, party_name, body_name, language = row.cells
    address = organisation.checked_address(address)
    party = organisation.find_party(session, party_name)
    body = organisation.find_body(session, body_name)
    if (address, body.id) in seen:
        raise MeetingError(f"{address} is seated in {body.slug} on line "
                           f"{seen[address, body.id]} already")
    seen[address, body.id] = row.line
    with session.begin_nested():
        if _seated(session, body, address, party.id):
            organisation.person(session, address, name, party, language)
            return body, False
        organisation.seat(session, body, party, address=address, name=name,
                          language=language)
    return body, True


def _seated(session: Session, body: Body, address: str, party_id: int) -> bool:
    """Whether the person has that seat already, for that party (a file imported twice)."""
    return session.scalar(select(Seat.id).join(Delegate, Seat.delegate_id == Delegate.id)
                          .where(Seat.body_id == body.id, Delegate.address == address,
                                 Seat.party_id == party_id)) is not None
