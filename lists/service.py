"""What owners do to lists: create them, add and remove members, look at held posts.

Each function takes a session and leaves committing to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists.models import (
    POSTING_POLICIES,
    SUBSCRIPTION_POLICIES,
    Held,
    MailingList,
    Member,
)
from mailer.addresses import AddressError, normalize
from mailer.routing import check_list_name


class ListError(Exception):
    """A request about a list that cannot be done, said in one line."""


def create(session: Session, name: str, *, display_name: str = "",
           subscription: str = "confirm", posting: str = "members") -> MailingList:
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
    if session.scalar(select(MailingList.id).where(MailingList.name == name)):
        raise ListError(f"list {name!r} already exists")
    mailing_list = MailingList(name=name, display_name=display_name or name,
                               subscription_policy=subscription, posting_policy=posting,
                               created_at=time.time())
    session.add(mailing_list)
    session.flush()
    return mailing_list


def find(session: Session, name: str) -> MailingList:
    """The list of that name, or ListError."""
    found = session.scalar(select(MailingList).where(MailingList.name == name.lower()))
    if found is None:
        raise ListError(f"no list named {name!r}")
    return found


def add_members(session: Session, mailing_list: MailingList,
                addresses: Iterable[str]) -> tuple[list[str], list[str]]:
    """Subscribe addresses; returns (added, already members). Bad addresses: ListError."""
    wanted = []
    for text in addresses:
        try:
            wanted.append(normalize(text.strip()))
        except AddressError as error:
            raise ListError(str(error)) from None
    existing = set(session.scalars(select(Member.address).where(
        Member.list_id == mailing_list.id, Member.address.in_(wanted))))
    added = []
    now = time.time()
    for address in dict.fromkeys(wanted):
        if address not in existing:
            session.add(Member(list_id=mailing_list.id, address=address, joined_at=now))
            added.append(address)
    return added, sorted(existing)


def remove_member(session: Session, mailing_list: MailingList, address: str) -> None:
    member = session.scalar(select(Member).where(Member.list_id == mailing_list.id,
                                                 Member.address == address.strip().lower()))
    if member is None:
        raise ListError(f"{address} is not a member of {mailing_list.name}")
    session.delete(member)


def members(session: Session, mailing_list: MailingList) -> Iterator[Member]:
    """Members in address order, streamed in batches (lists can be large)."""
    query = (select(Member).where(Member.list_id == mailing_list.id)
             .order_by(Member.address).execution_options(yield_per=1000))
    yield from session.scalars(query)


def is_member(session: Session, list_id: int, addresses: Iterable[str]) -> bool:
    candidates = [a.lower() for a in addresses if a]
    if not candidates:
        return False
    count = session.scalar(select(func.count()).select_from(Member).where(
        Member.list_id == list_id, Member.address.in_(candidates)))
    return bool(count)


def held(session: Session, mailing_list: MailingList) -> list[Held]:
    """Posts waiting for a moderator, oldest first."""
    return list(session.scalars(select(Held).where(Held.list_id == mailing_list.id,
                                                   Held.state == "held")
                                .order_by(Held.id)))
