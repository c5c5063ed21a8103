"""The organisation of the charter: parties, bodies, delegates and their seats.

The charter's rules (DESIGN §1) live here: the Board holds at most 30 parties; the
Steering Committee takes one delegate per party, plus one named substitute; the three
charter bodies exist from the start, each with its distribution list (Board and
Conference closed, the Steering Committee's open with confirmation). A delegate's seat
subscribes them to the body's list, and unseating takes them off it again, unless they
had joined it on their own. Names of parties and bodies are compared as meetings.names
says. Each function takes a session and leaves committing to the caller; a request that
cannot be done raises `MeetingError` with one line.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lists import service
from lists.models import LANGUAGES, MailingList, Member
from lists.service import ListError
from mailer import rawmail
from mailer.addresses import AddressError, check_list_name, normalize
from meetings.imip import one_line
from meetings.models import (
    REGIONS,
    Body,
    CoordinationTerm,
    Delegate,
    Invitation,
    Meeting,
    Party,
    Seat,
)
from meetings.names import country_code, loose_key, name_key

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
    names: dict[str, str]


# The charter's own French names (Conseil, Comité directeur, Conférence) and their usual
# Spanish, German and Portuguese forms; `body name` changes any of them.
CHARTER = (
    Charter("board", "Board", "closed", 30, False, 1,
            {"fr": "Conseil", "es": "Consejo", "de": "Vorstand", "pt": "Conselho"}),
    Charter("steering", "Steering Committee", "confirm", None, True, 2,
            {"fr": "Comité directeur", "es": "Comité Directivo", "de": "Lenkungsausschuss",
             "pt": "Comitê Diretor"}),
    Charter("conference", "Conference", "closed", None, False, 1,
            {"fr": "Conférence", "es": "Conferencia", "de": "Konferenz",
             "pt": "Conferência"}),
)


def ensure_charter(session: Session) -> None:
    """Create the Board, the Steering Committee and the Conference once, with their lists."""
    present = set(session.scalars(select(Body.slug).where(
        Body.slug.in_([c.slug for c in CHARTER]))))
    for charter in CHARTER:
        if charter.slug not in present:
            body = _create_body(session, charter.slug, charter.name, charter.slug,
                                charter.subscription, charter.max_parties,
                                charter.one_delegate_per_party, charter.meetings_per_year)
            body.names = dict(charter.names)


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
    name = name_of(name, "a body's name")
    if not name:
        raise MeetingError("a body needs a name")
    _new_name(session, Body, name, "body")
    return _create_body(session, slug, name, "custom", subscription.lower(), None, False, 0)


def find_body(session: Session, slug: str) -> Body:
    """The body of that slug (board, steering, conference, or a custom one), or of that
    name in any case ("Steering Committee")."""
    ensure_charter(session)
    found = session.scalar(select(Body).where(Body.slug == slug.strip().lower()))
    found = found or session.scalar(select(Body).where(Body.name_key == name_key(slug)))
    if found is None:
        raise MeetingError(f"no body named {slug!r}" + _hint(session, Body, slug))
    return found


def name_body(session: Session, slug: str, language: str, name: str) -> str:
    """Name the body in one language ("en" is its main name); an empty name drops the
    translation, so that the English name stands in. Returns what that language says."""
    body = find_body(session, slug)
    language = language.strip().lower()
    if language not in LANGUAGES:
        raise MeetingError(f"unknown language {language!r}; choose one of "
                           f"{', '.join(LANGUAGES)}")
    name = name_of(name, "a body's name")
    if language == "en":
        if not name:
            raise MeetingError("a body needs a name")
        _new_name(session, Body, name, "body", keep=body.id)
        body.name = name
        return f"{name} (its English name)"
    names = dict(body.names or {})
    if name:
        names[language] = name
    else:
        names.pop(language, None)
    body.names = names
    return names.get(language) or f"{body.name} (its English name)"


def bodies(session: Session) -> list[Body]:
    """Every body, the charter's three first."""
    ensure_charter(session)
    return list(session.scalars(select(Body).order_by(Body.id)))


def add_party(session: Session, name: str, *, country: str, region: str) -> Party:
    """A member party: its name, its country (ISO 3166-1 alpha-2) and its charter region."""
    name = name_of(name, "a party's name")
    if not name:
        raise MeetingError("a party needs a name")
    code = country_code(country)
    if code is None:
        raise MeetingError(f"unknown country {country!r}: give its ISO 3166-1 two-letter "
                           "code, such as FR, KE or BR")
    region = region.strip().lower()
    if region not in REGIONS:
        raise MeetingError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    _new_name(session, Party, name, "party")
    party = Party(name=name, country=code, region=region, created_at=time.time())
    session.add(party)
    session.flush()
    return party


def _new_name(session: Session, model: type[Party] | type[Body], name: str, noun: str, *,
              keep: int | None = None) -> None:
    """Refuse a name that another party (or body) has already, in any case or spacing,
    or that differs from one only by accents, spaces or punctuation (`keep`: the row
    being renamed, which may keep its own)."""
    loose = loose_key(name)
    for ident, other in session.execute(select(model.id, model.name)):
        if ident == keep:
            continue
        if name_key(other) == name_key(name):
            raise MeetingError(f"{noun} {other!r} already exists")
        if loose and loose_key(other) == loose:
            raise MeetingError(f"{noun} {name!r} differs from {other!r} only by accents, "
                               f"spaces or punctuation: did you mean {other!r}?")


def _hint(session: Session, model: type[Party] | type[Body], name: str) -> str:
    """"; did you mean 'X'?" for a name close to one that exists, else ""."""
    names = list(session.scalars(select(model.name)))
    key, loose = name_key(name), loose_key(name)
    near = [other for other in names if loose and loose_key(other) == loose]
    near = near or [other for other in names
                    if len(key) > 1 and name_key(other).startswith(key + " ")]
    near = near or [other for other in names if name_key(other) in difflib.get_close_matches(
        key, [name_key(other) for other in names], n=1, cutoff=0.75)]
    return f"; did you mean {near[0]!r}?" if near else ""


def rename_party(session: Session, old: str, new: str) -> Party:
    """Give a party another name; its seats, delegates and meetings stay its own."""
    party = find_party(session, old)
    new = name_of(new, "a party's name")
    if not new:
        raise MeetingError("a party needs a name")
    _new_name(session, Party, new, "party", keep=party.id)
    party.name = new
    session.flush()
    return party


def remove_party(session: Session, name: str) -> str:
    """Take a party off the network's roll: refused while it has seats or a record
    (meetings it hosted, terms it coordinated, delegates who were invited)."""
    party = find_party(session, name)
    held = int(session.scalar(select(func.count()).select_from(Seat)
                              .where(Seat.party_id == party.id)) or 0)
    if held:
        raise MeetingError(f"{party.name} still has {held} seat(s); take them first "
                           "(alliance delegate remove ADDRESS --body BODY)")
    if _has_record(session, party):
        raise MeetingError(f"{party.name} has a record (meetings, invitations or a "
                           "coordination term) and stays; `party rename` can change its name")
    for delegate in session.scalars(select(Delegate).where(Delegate.party_id == party.id)):
        session.delete(delegate)
    session.delete(party)
    session.flush()
    return party.name


def _has_record(session: Session, party: Party) -> bool:
    """Whether the party coordinated, hosted a meeting or had a delegate invited."""
    people = select(Delegate.id).where(Delegate.party_id == party.id)
    return any(session.scalar(query.limit(1)) is not None for query in (
        select(CoordinationTerm.id).where(CoordinationTerm.party_id == party.id),
        select(Meeting.id).where(Meeting.host_party_id == party.id),
        select(Invitation.id).where(Invitation.delegate_id.in_(people))))


NAME_LENGTH = 200  # the columns of names and of their keys


def name_of(text: str, what: str) -> str:
    """A name on one line, as it will stand in headers and invitations, or MeetingError if
    it holds what no header may (a line break, a NUL) or is longer than its column (the
    key too: case folding can lengthen a name, ß to ss)."""
    problem = rawmail.header_unsafe(text)
    if problem is not None:
        raise MeetingError(f"{what} cannot be used: {problem}")
    name = one_line(text)
    if max(len(name), len(name_key(name))) > NAME_LENGTH:
        raise MeetingError(f"{what} cannot be used: it is longer than {NAME_LENGTH} "
                           "characters")
    return name


def find_party(session: Session, name: str) -> Party:
    """The party of that name (in any case, any script), or MeetingError with a hint."""
    found = session.scalar(select(Party).where(Party.name_key == name_key(name)))
    if found is None:
        raise MeetingError(f"no party named {name!r}" + _hint(session, Party, name))
    return found


def parties(session: Session) -> list[Party]:
    """Every member party, by name as names are compared (alike on both databases)."""
    return list(session.scalars(select(Party).order_by(Party.name_key)))


def checked_address(text: str) -> str:
    """The normalised address, or MeetingError saying what is wrong with it."""
    try:
        return normalize(text.strip())
    except AddressError as error:
        raise MeetingError(str(error)) from None


def checked_language(language: str) -> str:
    """The language code in lower case, or MeetingError."""
    code = language.strip().lower()
    if code not in LANGUAGES:
        raise MeetingError(f"unknown language {language!r}; choose one of "
                           f"{', '.join(LANGUAGES)}")
    return code


def person(session: Session, address: str, name: str, party: Party,
              language: str) -> Delegate:
    """The person at that address, made, or found as given; one party per person.

    An empty name or language means the stored one. A name or language other than the
    stored one is refused, saying what differs: a seat in a second body never renames a
    person or changes the language of their other bodies (`set_delegate` does that).
    """
    name = name_of(name, "a delegate's name")
    language = checked_language(language) if language else ""
    found = session.scalar(select(Delegate).where(Delegate.address == address))
    if found is None:
        if not name:
            raise MeetingError(f"{address} is a new delegate: give their --name")
        found = Delegate(address=address, name=name, party_id=party.id,
                         language=language or "en", created_at=time.time())
        session.add(found)
        session.flush()
        return found
    if found.party_id != party.id:
        other = session.get(Party, found.party_id)
        raise MeetingError(f"{address} is a delegate of {other.name if other else '?'}, "
                           f"not of {party.name}")
    differs = [f"{what} {given!r} (stored: {stored!r})" for what, given, stored in
               (("name", name, found.name), ("language", language, found.language))
               if given and given != stored]
    if differs:
        raise MeetingError(f"{address} differs from the stored delegate in "
                           f"{' and '.join(differs)}; nothing changed (alliance delegate "
                           f"set {address} changes a person)")
    return found


def set_delegate(session: Session, address: str, *, name: str = "",
                 language: str = "") -> Delegate:
    """Change a person's name or language: for every body they sit in, their lists
    (where the seat subscribed them) and the invitations of meetings still to come."""
    address = checked_address(address)
    found = session.scalar(select(Delegate).where(Delegate.address == address))
    if found is None:
        raise MeetingError(f"{address} is not a delegate")
    name = name_of(name, "a delegate's name")
    language = checked_language(language) if language else ""
    if not name and not language:
        raise MeetingError("say what to change: --name, --language or both")
    found.name, found.language = name or found.name, language or found.language
    lists = select(Body.list_id).join(Seat, Seat.body_id == Body.id).where(
        Seat.delegate_id == found.id)
    session.execute(update(Member).where(Member.address == address, Member.role == "member",
                                         Member.joined_by == "seat",
                                         Member.list_id.in_(lists))
                    .values(display_name=found.name[:200], language=found.language))
    coming = select(Meeting.id).where(Meeting.ends_at > time.time())
    session.execute(update(Invitation).where(Invitation.delegate_id == found.id,
                                             Invitation.meeting_id.in_(coming))
                    .values(name=found.name, language=found.language))
    session.flush()
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


def seat(session: Session, body: Body, party: Party, *, address: str, name: str = "",
         language: str = "", role: str = "delegate") -> Seat:
    """Give a person a seat in a body for their party, and subscribe them to its list
    (a membership the seat made, which unseating ends)."""
    if role not in SEAT_ROLES:
        raise MeetingError(f"unknown seat {role!r}; choose one of {', '.join(SEAT_ROLES)}")
    address = checked_address(address)
    delegate = person(session, address, name, party, language)
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
                          language=delegate.language, joined_by="seat")
    session.flush()
    return made


@dataclass(frozen=True)
class Unseated:
    """Whom unseating concerned, and whether they left the body's list with the seat
    (False: they are no member of it, or joined it on their own and stay)."""

    delegate: Delegate
    left_list: bool
    stays: bool


def unseat(session: Session, body: Body, address: str) -> Unseated:
    """Take a person's seat away, and the list membership the seat gave them; one they
    took on their own, or an owner gave them, stays."""
    address = checked_address(address)
    found = session.execute(select(Seat, Delegate).join(Delegate, Seat.delegate_id ==
                                                         Delegate.id)
                            .where(Seat.body_id == body.id,
                                   Delegate.address == address)).first()
    if found is None:
        raise MeetingError(f"{address} has no seat in the {body.name}")
    seat_row, delegate = found
    session.delete(seat_row)
    member = service.member(session, body.list_id, address) if body.list_id else None
    by_seat = member is not None and member.joined_by == "seat"
    if by_seat:
        session.delete(member)
    session.flush()
    return Unseated(delegate, left_list=by_seat, stays=member is not None and not by_seat)


def seats(session: Session, body: Body | None = None) -> list[tuple[Seat, Delegate, Party]]:
    """The seats of a body (or of every body) with their people and parties, by body,
    then party, then address."""
    query = (select(Seat, Delegate, Party).join(Delegate, Seat.delegate_id == Delegate.id)
             .join(Party, Seat.party_id == Party.id)
             .order_by(Seat.body_id, Party.name_key, Delegate.address))
    if body is not None:
        query = query.where(Seat.body_id == body.id)
    return [(s, d, p) for s, d, p in session.execute(query)]


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
