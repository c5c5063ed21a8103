"""The organisation of the charter: parties, bodies, delegates and their seats.

The charter's rules (DESIGN §1) live here: the Board holds at most 30 parties; the
Steering Committee takes one delegate per party, plus one named substitute; the three
charter bodies exist from the start, each with its distribution list (Board and
Conference closed, the Steering Committee's open with confirmation). A delegate's seat
subscribes them to the body's list. Each function takes a session and leaves committing
to the caller; a request that cannot be done raises `MeetingError` with one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import service
from lists.models import LANGUAGES, MailingList
from lists.service import ListError
from mailer import rawmail
from mailer.addresses import AddressError, check_list_name, normalize
from meetings.imip import one_line
from meetings.models import REGIONS, Body, Delegate, Party, Seat

SEAT_ROLES = ("delegate", "substitute")


class MeetingError(Exception):
    """A request about the organisation or a meeting that cannot be done, in one line."""


@dataclass(frozen=True)
class Charter:
    """A body the charter names, and its rules."""

    slug: str
    name: str
    subscription: str
    max_parties: int | None
    one_delegate_per_party: bool
    meetings_per_year: int


CHARTER = (
    Charter("board", "Board", "closed", 30, False, 1),
    Charter("steering", "Steering Committee", "confirm", None, True, 2),
    Charter("conference", "Conference", "closed", None, False, 1),
)


def ensure_charter(session: Session) -> None:
    """Create the Board, the Steering Committee and the Conference once, with their lists."""
    present = set(session.scalars(select(Body.slug).where(
        Body.slug.in_([c.slug for c in CHARTER]))))
    for charter in CHARTER:
        if charter.slug not in present:
            _create_body(session, charter.slug, charter.name, charter.slug,
                         charter.subscription, charter.max_parties,
                         charter.one_delegate_per_party, charter.meetings_per_year)


def _body_list(session: Session, slug: str, name: str, subscription: str) -> MailingList:
    """The body's list: the one of that name if an owner made it already, else a new one."""
    existing = session.scalar(select(MailingList).where(MailingList.name == slug))
    if existing is not None:
        return existing
    try:
        return service.create(session, slug, display_name=name, subscription=subscription)
    except ListError as error:
        raise MeetingError(str(error)) from None


def _create_body(session: Session, slug: str, name: str, kind: str, subscription: str,
                 max_parties: int | None, one_per_party: bool, per_year: int) -> Body:
    mailing_list = _body_list(session, slug, name, subscription)
    body = Body(slug=slug, name=name, kind=kind, list_id=mailing_list.id,
                max_parties=max_parties, one_delegate_per_party=one_per_party,
                meetings_per_year=per_year, created_at=time.time())
    session.add(body)
    session.flush()
    return body


def add_body(session: Session, slug: str, name: str, *, subscription: str = "closed") -> Body:
    """A custom body (seminar, campaign, regional network) with its own list."""
    ensure_charter(session)
    slug = slug.strip().lower()
    problem = check_list_name(slug)
    if problem:
        raise MeetingError(f"cannot create body {slug!r}: {problem}")
    if session.scalar(select(Body.id).where(Body.slug == slug)):
        raise MeetingError(f"body {slug!r} already exists")
    if not name.strip():
        raise MeetingError("a body needs a name")
    return _create_body(session, slug, name_of(name, "a body's name"), "custom", subscription,
                        None, False, 0)


def find_body(session: Session, slug: str) -> Body:
    """The body of that slug (board, steering, conference, or a custom one)."""
    ensure_charter(session)
    found = session.scalar(select(Body).where(Body.slug == slug.strip().lower()))
    if found is None:
        raise MeetingError(f"no body named {slug!r}")
    return found


def bodies(session: Session) -> list[Body]:
    """Every body, the charter's three first."""
    ensure_charter(session)
    return list(session.scalars(select(Body).order_by(Body.id)))


def add_party(session: Session, name: str, *, country: str, region: str) -> Party:
    """A member party: its name, its country (ISO 3166 alpha-2) and its charter region."""
    name = name_of(name, "a party's name")
    if not name:
        raise MeetingError("a party needs a name")
    if not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise MeetingError(f"country must be a two-letter code (ISO 3166), not {country!r}")
    if region not in REGIONS:
        raise MeetingError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    if session.scalar(select(Party.id).where(func.lower(Party.name) == name.lower())):
        raise MeetingError(f"party {name!r} already exists")
    party = Party(name=name, country=country.upper(), region=region, created_at=time.time())
    session.add(party)
    session.flush()
    return party


def name_of(text: str, what: str) -> str:
    """A name on one line, as it will stand in headers and invitations, or MeetingError if
    it holds what no header may (a line break, a NUL)."""
    problem = rawmail.header_unsafe(text)
    if problem is not None:
        raise MeetingError(f"{what} cannot be used: {problem}")
    return one_line(text)


def find_party(session: Session, name: str) -> Party:
    """The party of that name (any case), or MeetingError."""
    found = session.scalar(select(Party).where(func.lower(Party.name) == name.strip().lower()))
    if found is None:
        raise MeetingError(f"no party named {name!r}")
    return found


def parties(session: Session) -> list[Party]:
    """Every member party, by name."""
    return list(session.scalars(select(Party).order_by(Party.name)))


def checked_address(text: str) -> str:
    """The normalised address, or MeetingError saying what is wrong with it."""
    try:
        return normalize(text.strip())
    except AddressError as error:
        raise MeetingError(str(error)) from None


def _delegate(session: Session, address: str, name: str, party: Party,
              language: str) -> Delegate:
    """The person at that address, made or updated; one party per person."""
    if language not in LANGUAGES:
        raise MeetingError(f"unknown language {language!r}; choose one of "
                           f"{', '.join(LANGUAGES)}")
    name = name_of(name, "a delegate's name")
    found = session.scalar(select(Delegate).where(Delegate.address == address))
    if found is None:
        found = Delegate(address=address, name=name, party_id=party.id, language=language,
                         created_at=time.time())
        session.add(found)
        session.flush()
        return found
    if found.party_id != party.id:
        other = session.get(Party, found.party_id)
        raise MeetingError(f"{address} is a delegate of {other.name if other else '?'}, "
                           f"not of {party.name}")
    found.name, found.language = name or found.name, language
    return found


def check_charter(session: Session, body: Body, party: Party, role: str) -> None:
    """Refuse a seat the charter does not allow (DESIGN §1)."""
    seated = select(func.count(func.distinct(Seat.party_id))).where(Seat.body_id == body.id)
    if body.max_parties is not None and not session.scalar(
            select(Seat.id).where(Seat.body_id == body.id, Seat.party_id == party.id)):
        count = int(session.scalar(seated) or 0)
        if count >= body.max_parties:
            raise MeetingError(f"the {body.name} holds at most {body.max_parties} parties; "
                               f"{party.name} would be number {count + 1}")
    if body.one_delegate_per_party:
        holder = session.scalar(select(Delegate.address).join(Seat, Seat.delegate_id ==
                                                               Delegate.id)
                                .where(Seat.body_id == body.id, Seat.party_id == party.id,
                                       Seat.role == role))
        if holder is not None:
            what = "delegate" if role == "delegate" else "named substitute"
            hint = " (name a substitute with --substitute)" if role == "delegate" else ""
            raise MeetingError(f"the {body.name} takes one {what} per party; {party.name} "
                               f"already has {holder}{hint}")


def seat(session: Session, body: Body, party: Party, *, address: str, name: str,
         language: str = "en", role: str = "delegate") -> Seat:
    """Give a person a seat in a body for their party, and subscribe them to its list."""
    if role not in SEAT_ROLES:
        raise MeetingError(f"unknown seat {role!r}; choose one of {', '.join(SEAT_ROLES)}")
    address = checked_address(address)
    delegate = _delegate(session, address, one_line(name), party, language)
    if session.scalar(select(Seat.id).where(Seat.body_id == body.id,
                                            Seat.delegate_id == delegate.id)):
        raise MeetingError(f"{address} already has a seat in the {body.name}")
    check_charter(session, body, party, role)
    made = Seat(body_id=body.id, delegate_id=delegate.id, party_id=party.id, role=role,
                created_at=time.time())
    session.add(made)
    mailing_list = session.get(MailingList, body.list_id) if body.list_id else None
    if mailing_list is not None:
        service.subscribe(session, mailing_list, address, display_name=delegate.name,
                          language=language)
    session.flush()
    return made


def unseat(session: Session, body: Body, address: str) -> Delegate:
    """Take a person's seat away; a closed list (Board, Conference) loses them too."""
    address = checked_address(address)
    found = session.execute(select(Seat, Delegate).join(Delegate, Seat.delegate_id ==
                                                         Delegate.id)
                            .where(Seat.body_id == body.id,
                                   Delegate.address == address)).first()
    if found is None:
        raise MeetingError(f"{address} has no seat in the {body.name}")
    seat_row, delegate = found
    session.delete(seat_row)
    mailing_list = session.get(MailingList, body.list_id) if body.list_id else None
    if mailing_list is not None and mailing_list.subscription_policy == "closed":
        member = service.member(session, mailing_list.id, address)
        if member is not None:
            session.delete(member)
    session.flush()
    return delegate


def seats(session: Session, body: Body) -> list[tuple[Seat, Delegate, Party]]:
    """The body's seats with their people and parties, by party then address."""
    rows = session.execute(select(Seat, Delegate, Party)
                           .join(Delegate, Seat.delegate_id == Delegate.id)
                           .join(Party, Seat.party_id == Party.id)
                           .where(Seat.body_id == body.id)
                           .order_by(Party.name, Delegate.address))
    return [(s, d, p) for s, d, p in rows]


def may_substitute(session: Session, party_id: int, address: str) -> None:
    """Refuse a substitute who would give a party a second voice (DESIGN §1).

    A substitute speaks for the party of the delegate they stand in for. A registered
    delegate of another party may not, in any body: in the Steering Committee their party
    would have two voices, and on the Board a party outside the 30 could take a seat.
    """
    theirs = session.execute(select(Party).join(Delegate, Delegate.party_id == Party.id)
                             .where(Delegate.address == address)).scalar()
    if theirs is None or theirs.id == party_id:
        return
    ours = session.get(Party, party_id)
    raise MeetingError(f"{address} is a delegate of {theirs.name}; a substitute speaks for "
                       f"{ours.name if ours else 'the party of the delegate'}, and no party "
                       f"may have a second voice")
