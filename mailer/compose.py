"""Robot mail: bodies from Jinja2 templates, headers set by code, queued for delivery.

One strict environment (`StrictUndefined`; autoescape for HTML only). A template lives at
`templates/<language>/<name>.txt`; it sets its subject with `{% set subject = ... %}` and
renders the body. Every robot message says it is automatic (RFC 3834 `Auto-Submitted`), so
that no other robot answers it, and nothing we send ever answers one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import Select, insert, literal, select
from sqlalchemy.orm import Session

from mailer.models import Delivery, Outgoing

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LANGUAGES = ("en", "fr", "es", "de")
DEFAULT_LANGUAGE = "en"


def environment(folder: Path = TEMPLATES) -> jinja2.Environment:
    """The one Jinja environment: strict about missing names, escaping only HTML."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(["html"]),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def language_of(*choices: str | None) -> str:
    """The first of the choices that we have templates for, else English.

    >>> language_of("", "pt", "fr")
    'fr'
    >>> language_of(None)
    'en'
    """
    for choice in choices:
        if choice and choice in LANGUAGES:
            return choice
    return DEFAULT_LANGUAGE


def render(env: jinja2.Environment, name: str, language: str,
           context: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of template `name` in `language`."""
    module = render_module(env, name, language, context)
    return subject_of(module), str(module)


def render_module(env: jinja2.Environment, name: str, language: str,
                  context: dict[str, Any]) -> Any:
    """Template `name` in `language`, rendered: its text, and what it sets (`subject`)."""
    return env.get_template(f"{language_of(language)}/{name}.txt").make_module(context)


def subject_of(module: Any) -> str:
    """The `subject` a rendered template set, on one line."""
    return " ".join(str(getattr(module, "subject", "")).split())


def robot_message(*, sender: tuple[str, str], to: str, subject: str, body: str,
                  domain: str, reply_to: str | None = None,
                  in_reply_to: str | None = None, auto: str = "auto-replied",
                  headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A plain-text message from a robot address, with its headers set here."""
    message = EmailMessage()
    message["From"] = formataddr(sender)
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = auto
    message["X-Auto-Response-Suppress"] = "All"
    if reply_to:
        message["Reply-To"] = reply_to
    if in_reply_to and "\n" not in in_reply_to and "\r" not in in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in headers:
        message[name] = value
    message.set_content(body, charset="utf-8")
    return message.as_bytes(policy=SMTP)


def enqueue(session: Session, *, sender: str, recipients: Iterable[tuple[str, int | None]],
            data: bytes, kind: str, source_id: int | None = None) -> Outgoing:
    """Store a message once and one delivery per (address, member id); same transaction."""
    now = time.time()
    outgoing = Outgoing(created_at=now, kind=kind, sender=sender, source_id=source_id,
                        data=data)
    session.add(outgoing)
    session.flush()
    rows = [{"outgoing_id": outgoing.id, "recipient": address, "member_id": member_id,
             "state": "pending", "attempts": 0, "created_at": now, "due_at": now}
            for address, member_id in recipients]
    if rows:
        session.execute(insert(Delivery), rows)
    return outgoing


def enqueue_each(session: Session, outgoing: Outgoing,
                 recipients: Select) -> None:  # type: ignore[type-arg]
    """One delivery of a stored message per row of `recipients` (address, member id),
    made by the database (INSERT … SELECT): a 10,000-member list is never loaded."""
    now = time.time()
    found = recipients.subquery()
    rows = select(literal(outgoing.id), *found.c, literal("pending"), literal(0),
                  literal(now), literal(now))
    session.execute(insert(Delivery).from_select(
        ["outgoing_id", "recipient", "member_id", "state", "attempts", "created_at", "due_at"],
        rows))
