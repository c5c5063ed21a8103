"""Signed tokens carried in addresses: `steering-bounces+TOKEN@`, `rsvp+TOKEN@`.

A token is `<id>-<mac>`: the row id it names and 128 bits of HMAC-SHA256 over a purpose and
that id, in lower-case base32 so that it survives case-folding MTAs. Verification is in
constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


class Signer:
    """Makes and checks tokens for one purpose ("member", "attendee", ...)."""

    def __init__(self, secret: bytes, purpose: str) -> None:
        self._key = hmac.new(secret, purpose.encode(), hashlib.sha256).digest()

    def _mac(self, ident: int) -> str:
        digest = hmac.digest(self._key, str(ident).encode(), "sha256")[:16]  # OpenSSL's one-shot
        return base64.b32encode(digest).decode().rstrip("=").lower()

    def sign(self, ident: int) -> str:
        """The token for a row id.

        >>> Signer(b"k", "member").sign(42)
        '42-...'
        """
        return f"{ident}-{self._mac(ident)}"

    def verify(self, token: str) -> int | None:
        """The row id a genuine token names, or None.

        >>> signer = Signer(b"k", "member")
        >>> signer.verify(signer.sign(7))
        7
        >>> signer.verify("7-" + "a" * 26) is None
        True
        >>> Signer(b"k", "attendee").verify(signer.sign(7)) is None
        True
        """
        ident, sep, mac = token.lower().partition("-")
        if not sep or not ident.isascii() or not ident.isdigit() or len(ident) > 18:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(int(ident)).encode()):
            return None
        return int(ident)
