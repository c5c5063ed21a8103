"""Addresses: strict checks on any address, and the table of what ours mean (DESIGN §3).

CPython's parser decodes RFC 2047 words and drops source routes in envelope addresses
(reference/reliability.md §2.1), so we check the raw text ourselves and fail closed.

Routing is data: `ROUTES` is an ordered table of local-part patterns, and `resolve` is one
pure function that RCPT and DATA handling both call. The first pattern that matches wins.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses

_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_DOMAIN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                     r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class AddressError(ValueError):
    """An address that is not a plain, well-formed addr-spec."""


def normalize(text: str) -> str:
    """The address in lower case, or AddressError if it is not a plain addr-spec.

    >>> normalize("Alice@Example.ORG")
    'alice@example.org'
    >>> normalize("=?utf-8?q?owner?=@example.org")
    Traceback (most recent call last):
    ...
    mailer.addresses.AddressError: encoded word in address: '=?utf-8?q?owner?=@example.org'
    >>> normalize("a@b@example.org")
    Traceback (most recent call last):
    ...
    mailer.addresses.AddressError: not an address: 'a@b@example.org'
    """
    if "=?" in text:
        raise AddressError(f"encoded word in address: {text!r}")
    local, sep, domain = text.rpartition("@")
    if not sep or not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise AddressError(f"not an address: {text!r}")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError(f"not an address: {text!r}")
    return f"{local}@{domain}".lower()


def named_addresses(message: EmailMessage, field: str = "from") -> list[tuple[str, str]]:
    """(display name, address) pairs of a header field, [] where CPython's parser fails.

    The standard library raises IndexError or ValueError on some malformed fields; one
    odd From must not make a post fail its processing.
    """
    try:
        return getaddresses([str(value) for value in message.get_all(field, [])])
    except (IndexError, ValueError, TypeError):
        return []


# -- the address table ------------------------------------------------------------

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
    ADMIN = "admin"          # postmaster@ (RFC 5321 §4.5.1), abuse@ (RFC 2142): site.admin


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
    (r"postmaster|abuse", Role.ADMIN),
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
    >>> resolve("PostMaster@lists.example.org", "lists.example.org")
    Route(role=<Role.ADMIN: 'admin'>, list=None, token=None)
    >>> resolve("abuse@lists.example.org", "lists.example.org").role
    <Role.ADMIN: 'admin'>
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
