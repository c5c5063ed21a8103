"""The address table (DESIGN §3): which role an address of our domain plays.

Routing is data: `ROUTES` is an ordered table of local-part patterns, and `resolve` is one
pure function that RCPT and DATA handling both call. The first pattern that matches wins.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Role(enum.StrEnum):
    POST = "post"
    JOIN = "join"
    LEAVE = "leave"
    REQUEST = "request"
    CONFIRM = "confirm"
    OWNER = "owner"
    BOUNCES = "bounces"
    RSVP = "rsvp"
    COORDINATION = "coordination"


@dataclass(frozen=True)
class Route:
    """What an address means: its role, the list it belongs to and any token."""

    role: Role
    list: str | None = None
    token: str | None = None


_NAME = r"(?P<list>[a-z0-9][a-z0-9_.]*(?:-[a-z0-9_.]+)*?)"
_TOKEN = r"(?P<token>[a-z0-9-]{1,80})"

ROUTES: tuple[tuple[str, Role], ...] = (
    (r"rsvp\+" + _TOKEN, Role.RSVP),
    (r"coordination", Role.COORDINATION),
    (_NAME + r"-join", Role.JOIN),
    (_NAME + r"-leave", Role.LEAVE),
    (_NAME + r"-request", Role.REQUEST),
    (_NAME + r"-confirm\+" + _TOKEN, Role.CONFIRM),
    (_NAME + r"-owner", Role.OWNER),
    (_NAME + r"-bounces(?:\+" + _TOKEN + ")?", Role.BOUNCES),
    (_NAME, Role.POST),
)
_COMPILED = tuple((re.compile(pattern), role) for pattern, role in ROUTES)

RESERVED_NAMES = frozenset({"rsvp", "coordination", "postmaster", "abuse", "mailer-daemon"})
_SUFFIXES = ("-join", "-leave", "-request", "-confirm", "-owner", "-bounces")


def resolve(address: str, domain: str) -> Route | None:
    """The route of an address on our domain, or None if it names nothing we serve.

    >>> resolve("steering@lists.example.org", "lists.example.org")
    Route(role=<Role.POST: 'post'>, list='steering', token=None)
    >>> resolve("Steering-Join@LISTS.example.org", "lists.example.org").role
    <Role.JOIN: 'join'>
    >>> resolve("steering-bounces+12-abc@lists.example.org", "lists.example.org")
    Route(role=<Role.BOUNCES: 'bounces'>, list='steering', token='12-abc')
    >>> resolve("steering-bounces@lists.example.org", "lists.example.org").token is None
    True
    >>> resolve("rsvp+5-xyz@lists.example.org", "lists.example.org").token
    '5-xyz'
    >>> resolve("steering@elsewhere.example", "lists.example.org") is None
    True
    """
    local, _, host = address.lower().rpartition("@")
    if host != domain.lower():
        return None
    for pattern, role in _COMPILED:
        match = pattern.fullmatch(local)
        if match:
            groups = match.groupdict()
            return Route(role, groups.get("list"), groups.get("token"))
    return None


def check_list_name(name: str) -> str | None:
    """Why a list name cannot be used (it would shadow a role address), or None.

    >>> check_list_name("steering") is None
    True
    >>> check_list_name("news-join")
    "a list name may not end in '-join'"
    """
    if not re.fullmatch(_NAME, name):
        return "a list name is lower-case letters, digits, '.', '_' and inner '-'"
    if len(name) > 40:
        return "a list name has at most 40 characters"
    if name in RESERVED_NAMES:
        return f"{name!r} is a reserved address"
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return f"a list name may not end in {suffix!r}"
    return None
