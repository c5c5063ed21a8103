"""Strict checks on e-mail addresses, applied to raw text before anything trusts it.

CPython's parser decodes RFC 2047 words and drops source routes in envelope addresses
(reference/reliability.md §2.1), so we check the raw text ourselves and fail closed.
"""

from __future__ import annotations

import re
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
