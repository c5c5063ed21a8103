"""TLS on the SMTP listener: the certificate it offers with STARTTLS (RFC 3207).

Read once, at start-up, so that a missing or unreadable certificate or key stops
`alliance serve` with one line naming the key.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from mailer.config import Config, ConfigError


def _readable(path: Path, key: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror or error}") from None


def listener_context(config: Config) -> ssl.SSLContext | None:
    """The server side of STARTTLS on the SMTP listener, or None when no certificate is set.

    Clients are not asked for a certificate, and the context does not check names: an MX
    takes mail from anyone (RFC 3207 §4.1: a failed check is the client's concern).
    """
    if not config.smtp.tls_cert:
        return None
    cert = config.path(config.smtp.tls_cert)
    key = config.path(config.smtp.tls_key) if config.smtp.tls_key else None
    _readable(cert, "smtp.tls_cert")
    if key is not None:
        _readable(key, "smtp.tls_key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # A key with a passphrase would make OpenSSL prompt on the terminal: refuse it.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"smtp.tls_cert: {cert} and {key or 'its key'} are not a PEM certificate and "
            f"its private key, without a passphrase ({getattr(error, 'reason', None) or error})"
        ) from None
    return context
