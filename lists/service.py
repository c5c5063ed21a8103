"""What owners do to lists: create them, add and remove members, look at held posts.

Each function takes a session and leaves committing to the caller. An address can hold
several roles on one list (member, owner, moderator, poster); "members" means the role
`member` unless a role is named.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists.models import (
    LANGUAGES,
    POSTING_POLICIES,
    ROLES,
    SUBSCRIPTION_POLICIES,
    Held,
    MailingList,
    Member,
)
from mailer import rawmail
from mailer.addresses import AddressError, check_list_name, normalize


class ListError(Exception):
    """A request about a list that cannot be done, said in one line."""


def create(session: Session, name: str, *, display_name: str = "",
           subscription: str = "confirm", posting: str = "members",
           language: str = "en") -> MailingList:
    """Create a list; its name must not shadow a role address (DESIGN §3)."""
    problem = check_list_name(name)
    if problem:
        raise ListError(f"cannot create list {name!r}: {problem}")
    if subscription not in SUBSCRIPTION_POLICIES:
        raise ListError(f"unknown subscription policy {subscription!r}; "
                        f"choose one of {', '.join(SUBSCRIPTION_POLICIES)}")
    if posting not in POSTING_POLICIES:
        raise ListError(f"unknown posting policy {posting!r}; "
                        f"choose one of {', '.join(POSTING_POLICIES)}")
    if language not in LANGUAGES:
        raise ListError(f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}")
    problem = rawmail.header_unsafe(display_name)
    if problem is not None:
        raise ListError(f"the display name of {name!r} cannot be used: {problem}")
    if session.scalar(select(MailingList.id).where(MailingList.name == name)):
        raise ListError(f"list {name!r} already exists")
    mailing_list = MailingList(name=name, display_name=display_name or name,
                               subscription_policy=subscription, posting_policy=posting,
                               language=language, subject_prefix=f"[{name}]",
                               created_at=time.time(),
                               # An open list's archive starts public; the owner decides.
                               public_archive=subscription == "confirm")
    session.add(mailing_list)
    session.flush()
    return mailing_list


def find(session: Session, name: str) -> MailingList:
    """The list of that name, or ListError."""
    found = session.scalar(select(MailingList).where(MailingList.name == name.lower()))
    if found is None:
        raise ListError(f"no list named {name!r}")
    return found


def checked(address: str) -> str:
    """The normalised address, or ListError saying what is wrong with it."""
    try:
        return normalize(address.strip())
    except AddressError as error:
        raise ListError(str(error)) from None


def add_members(session: Session, mailing_list: MailingList, addresses: Iterable[str], *,
                role: str = "member", own_domain: str = "") -> tuple[list[str], list[str]]:
    """Give addresses a role; returns (added, already there). Bad addresses, and members
    at `own_domain` (the list itself, or another of our robots: a loop), are ListError."""
    if role not in ROLES:
        raise ListError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    wanted = [checked(text) for text in addresses]
    ours = [address for address in wanted
            if own_domain and address.endswith("@" + own_domain.lower())]
    if ours and role == "member":
        raise ListError(f"{ours[0]} is an address of this service: a list cannot have "
                        "itself, or another of our addresses, as a member")
    existing = set(session.scalars(select(Member.address).where(
        Member.list_id == mailing_list.id, Member.role == role, Member.address.in_(wanted))))
    added = []
    now = time.time()
    for address in dict.fromkeys(wanted):
        if address not in existing:
            session.add(Member(list_id=mailing_list.id, address=address, role=role,
                               joined_at=now, joined_by="owner"))
            added.append(address)
    return added, sorted(existing)


def subscribe(session: Session, mailing_list: MailingList, address: str, *,
              display_name: str = "", language: str = "",
              joined_by: str = "self") -> tuple[Member, bool]:
    """Make the address a member; returns the member and whether it is new. `joined_by`
    records how (Member.joined_by); a member already there keeps theirs."""
    existing = member(session, mailing_list.id, address)
    if existing is not None:
        return existing, False
    made = Member(list_id=mailing_list.id, address=checked(address), role="member",
                  display_name=display_name[:200], language=language, joined_at=time.time(),
                  joined_by=joined_by)
    session.add(made)
    session.flush()
    return made, True


def member(session: Session, list_id: int, address: str,
           role: str = "member") -> Member | None:
    return session.scalar(select(Member).where(Member.list_id == list_id,
                                               Member.role == role,
                                               Member.address == address.strip().lower()))


def remove_member(session: Session, mailing_list: MailingList, address: str, *,
                  role: str = "member") -> Member:
    found = member(session, mailing_list.id, address, role)
    if found is None:
        noun = "a member" if role == "member" else f"an {role}" if role[0] in "aeiou" \
            else f"a {role}"
        raise ListError(f"{address} is not {noun} of {mailing_list.name}")
    session.delete(found)
    return found


def members(session: Session, mailing_list: MailingList,
            role: str = "member") -> Iterator[Member]:
    """Members in address order, streamed in batches (lists can be large)."""
    query = (select(Member).where(Member.list_id == mailing_list.id, Member.role == role)
             .order_by(Member.address).execution_options(yield_per=1000))
    yield from session.scalars(query)


def has_role(session: Session, list_id: int, addresses: Iterable[str],
             roles: tuple[str, ...] = ("member",)) -> bool:
    """Whether any of the addresses holds any of the roles on the list."""
    candidates = [a.lower() for a in addresses if a]
    if not candidates:
        return False
    count = session.scalar(select(func.count()).select_from(Member).where(
        Member.list_id == list_id, Member.role.in_(roles), Member.address.in_(candidates)))
    return bool(count)


def is_member(session: Session, list_id: int, addresses: Iterable[str]) -> bool:
    return has_role(session, list_id, addresses, ("member",))


def moderators(session: Session, list_id: int) -> list[str]:
    """Addresses of the owners and moderators, who get the list's notices."""
    return sorted(set(session.scalars(select(Member.address).where(
        Member.list_id == list_id, Member.role.in_(("owner", "moderator"))))))


def held(session: Session, mailing_list: MailingList) -> list[Held]:
    """Posts waiting for a moderator, oldest first."""
    return list(session.scalars(select(Held).where(Held.list_id == mailing_list.id,
                                                   Held.state == "held")
                                .order_by(Held.id)))
