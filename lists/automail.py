"""Recognising mail that a machine sent, so that no robot of ours ever answers it.

RFC 3834 §2 and §5: no automatic reply to a message with `Auto-Submitted` other than `no`,
to `Precedence: bulk`, `junk` or `list`, to an empty envelope sender, or to a mailer
daemon. List mail (a `List-Id`) is also never answered.
"""

from __future__ import annotations

from email.message import EmailMessage

ROBOT_LOCALS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply",
                "donotreply", "bounce", "bounces")


def automatic(message: EmailMessage, mail_from: str) -> str | None:
    """Why a message must not be answered automatically, or None if a person sent it.

    >>> from email.message import EmailMessage
    >>> message = EmailMessage()
    >>> automatic(message, "ana@example.org") is None
    True
    >>> message["Auto-Submitted"] = "auto-replied"
    >>> automatic(message, "ana@example.org")
    'Auto-Submitted: auto-replied'
    >>> automatic(EmailMessage(), "")
    'empty envelope sender'
    """
    if not mail_from:
        return "empty envelope sender"
    local = mail_from.rpartition("@")[0].lower()
    if local in ROBOT_LOCALS or local.startswith(("mailer-daemon", "owner-")) \
            or local.endswith(("-bounces", "-request")) or "-bounces+" in local:
        return f"sent by a robot address ({mail_from})"
    why = automatic_post(message, mail_from)
    if why is not None:
        return why
    if message.get("list-id") is not None:
        return "list mail (List-Id)"
    for name in ("x-autoreply", "x-autorespond", "x-auto-response-suppress"):
        value = str(message.get(name, "")).strip().lower()
        if value and (name != "x-auto-response-suppress" or "all" in value):
            return f"{name}: {value}"
    return None


def automatic_post(message: EmailMessage, mail_from: str) -> str | None:
    """Why a post to a list was sent by a machine, or None (RFC 3834 §2, §3.1.8): an
    empty envelope sender (a bounce), `Auto-Submitted` other than `no`, or `Precedence:
    bulk`, `junk` or `list`.

    >>> message = EmailMessage()
    >>> message["Precedence"] = "bulk"
    >>> automatic_post(message, "ana@example.org")
    'Precedence: bulk'
    >>> automatic_post(EmailMessage(), "ana@example.org") is None
    True
    """
    if not mail_from:
        return "empty envelope sender"
    submitted = str(message.get("auto-submitted", "no")).split(";")[0].strip().lower()
    if submitted != "no":
        return f"Auto-Submitted: {submitted}"
    precedence = str(message.get("precedence", "")).strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"Precedence: {precedence}"
    return None
