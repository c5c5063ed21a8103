"""TLS both ways: the certificate the SMTP listener offers with STARTTLS (RFC 3207), and how
we reach the smarthost (STARTTLS or implicit TLS, RFC 8314) with the credentials for AUTH.

Everything here is read once, at start-up, so that a missing certificate, an unreadable CA
file or a password file anyone can read stops `alliance serve` with one line naming the key.
Credentials come from a file or the environment, never from config.toml itself.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailer.config import Config, ConfigError, parse_smarthost

USER_VARIABLE = "ALLIANCE_SMARTHOST_USER"
PASSWORD_VARIABLE = "ALLIANCE_SMARTHOST_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    """A user and password for AUTH at the smarthost (RFC 4954)."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Smarthost:
    """Where outbound mail goes and how: TLS mode, the client TLS context, AUTH."""

    host: str
    port: int
    implicit_tls: bool
    require_starttls: bool
    tls: ssl.SSLContext
    credentials: Credentials | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


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


def smarthost_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """The client side: the system's CAs or `ca_file`; certificate and name checked unless
    `verify` is off."""
    if ca_file is not None:
        _readable(ca_file, "outbound.tls_ca_file")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as error:
        raise ConfigError(f"outbound.tls_ca_file: {ca_file} holds no PEM certificate "
                          f"({error.reason or error})") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def credentials(auth_file: Path | None, environ: Mapping[str, str]) -> Credentials | None:
    """AUTH credentials from `outbound.auth_file` (user:password, one line) or from the
    environment; None when neither is given."""
    in_environment = USER_VARIABLE in environ or PASSWORD_VARIABLE in environ
    if auth_file is None:
        if not in_environment:
            return None
        user, password = environ.get(USER_VARIABLE, ""), environ.get(PASSWORD_VARIABLE, "")
        if not user or not password:
            missing = USER_VARIABLE if not user else PASSWORD_VARIABLE
            raise ConfigError(f"${missing} is not set: the smarthost's AUTH needs "
                              f"${USER_VARIABLE} and ${PASSWORD_VARIABLE} both")
        return Credentials(user, password)
    if in_environment:
        raise ConfigError(f"outbound.auth_file: ${USER_VARIABLE} or ${PASSWORD_VARIABLE} is "
                          "set too: keep one place for the credentials")
    return _read_auth_file(auth_file)


def _read_auth_file(path: Path) -> Credentials:
    try:
        mode = os.stat(path).st_mode
        if mode & stat.S_IRWXO:
            raise ConfigError(f"outbound.auth_file: {path} is open to every user (mode "
                              f"{stat.S_IMODE(mode):04o}): chmod 600 {path}")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"outbound.auth_file: cannot read {path}: {reason}") from None
    lines = text.splitlines()
    user, colon, password = (lines[0] if len(lines) == 1 else "").partition(":")
    if not (user and colon and password):
        # The file's content is never echoed: it is a password.
        raise ConfigError(f"outbound.auth_file: {path} must hold one line, user:password")
    return Credentials(user, password)


def smarthost(config: Config, environ: Mapping[str, str] = os.environ) -> Smarthost:
    """The smarthost `outbound.url` names, with its TLS context and credentials."""
    outbound = config.outbound
    url = parse_smarthost(outbound.url)
    ca_file = config.path(outbound.tls_ca_file) if outbound.tls_ca_file else None
    auth_file = config.path(outbound.auth_file) if outbound.auth_file else None
    return Smarthost(url.host, url.port, url.implicit_tls, url.require_starttls,
                     smarthost_context(ca_file, outbound.tls_verify),
                     credentials(auth_file, environ))
