"""The inbound unit and the role handler: what the router hands the domain packages.

The router gives each handler one `Inbound` (one recipient of one stored message) at a
time; the handler writes its state changes and the mail they cause through the session it
is given. A handler declares how it wants its units (`HandlerOptions`), and inherits from
`RoleHandler` what it does not need to say.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email import errors
from email.headerregistry import BaseHeader, UnstructuredHeader
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import EmailPolicy, Policy
from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session

from mailer.addresses import Route

A = TypeVar("A")
T = TypeVar("T")


class UnreadableField(UnstructuredHeader, BaseHeader):
    """A field that the library's parser for its kind fails on, kept as its plain text."""


class ReadingPolicy(EmailPolicy):
    """The modern policy, for mail from strangers: a field whose structured parser raises
    (CPython's has its bugs: `Content-Type: text/plain; a*` is an IndexError) is read as
    unstructured text (an `UnreadableField`), so that reading a message never fails on one
    field; `unreadable_fields` names them, for a rule to hold the message for a person."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        try:
            return super().header_fetch_parse(name, value)
        except MemoryError:
            raise
        except Exception:
            return UnreadableField(name, re.sub(r"[\r\n]", "", value))


READING = ReadingPolicy()    # what every handler reads with, unless it says otherwise


class UnreadableStructure(errors.MessageDefect):
    """The parser failed on the MIME structure: only the header block was read."""


def unreadable_fields(message: Message) -> list[str]:
    """The fields, in every part, that were read as plain text because their parser failed
    (or whose parameters the library cannot take apart); "MIME structure" when the body
    could not be parsed at all.

    >>> unreadable_fields(parse(b"Content-Type: text/plain; a*\\r\\n\\nhi\\r\\n"))
    ['Content-Type']
    >>> unreadable_fields(parse(b"Content-Type: multipart/mixed; boundary=x; a*0*=1; a*0*=2;"
    ...                         b" a*\\r\\n\\r\\n--x\\r\\n\\r\\nhi\\r\\n--x--\\r\\n"))
    ['MIME structure', 'Content-Type']
    """
    names = ["MIME structure" for defect in message.defects
             if isinstance(defect, UnreadableStructure)]
    for part in message.walk():
        names += [name for name, value in part.items() if isinstance(value, UnreadableField)]
        for name in ("Content-Type", "Content-Disposition"):
            try:
                part.get_params(header=name)     # the old parameter parser (RFC 2231)
            except Exception:
                names.append(name)
    return list(dict.fromkeys(names))


def parse(raw: bytes, policy: Policy = READING, *,
          headersonly: bool = False) -> EmailMessage:
    """Parse stored bytes once, with the reading policy unless told otherwise. Where the
    library's parser fails on the MIME structure (CPython's RFC 2231 code has its bugs),
    the header block alone is read, the body kept as text, and the message carries an
    `UnreadableStructure` defect (see unreadable_fields)."""
    try:
        message = BytesParser(policy=policy).parsebytes(raw, headersonly=headersonly)
    except MemoryError:
        raise
    except Exception as error:
        message = BytesParser(policy=policy).parsebytes(raw, headersonly=True)
        message.defects.append(UnreadableStructure(f"{type(error).__name__}: {error}"))
    assert isinstance(message, EmailMessage)
    return message


@dataclass(frozen=True)
class Inbound:
    """What a handler is given: one recipient of one stored message."""

    work_id: int
    message_id: int
    route: Route
    recipient: str
    mail_from: str
    raw: bytes
    parsed: EmailMessage | None = dataclasses.field(    # `message`, once parsed
        default=None, compare=False, repr=False)
    peer: str = ""
    prepared: Any = None
    protocol: str = ""          # "smtp", or "lmtp": from the MTA in front (mailer.arc trusts)
    policy: Policy = READING

    @property
    def message(self) -> EmailMessage:
        """The message, parsed with `policy` on first use.

        The router parses it early, on a reader thread, unless the handler is `lazy`.
        """
        if self.parsed is None:
            # A cache, not a change: the value follows from `raw` and `policy` alone.
            object.__setattr__(self, "parsed", parse(self.raw, self.policy))
        assert self.parsed is not None
        return self.parsed


@dataclass(frozen=True)
class HandlerOptions:
    """How the router hands a role's units to its handler."""

    batch: int = 1                  # consecutive units of the role per transaction
    policy: Policy = READING  # the email policy its messages are parsed with
    lazy: bool = False              # parse only when `inbound.message` is first asked for

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"a handler's batch is at least 1, not {self.batch}")


class RoleHandler(Protocol):
    """The handler of one role of the address table; subclass it for the defaults."""

    options: HandlerOptions = HandlerOptions()

    def accepts(self, session: Session, route: Route) -> bool:
        """Whether an address of this role exists (asked at RCPT time)."""
        ...

    async def prepare(self, inbound: Inbound) -> Any:
        """What the handling needs that must not hold the write transaction: network
        look-ups (DNS), reading the message. Done outside any transaction.

        What it returns reaches `handle` as `inbound.prepared`; by default, None.
        """
        return None

    def preload(self, session: Session, inbounds: Sequence[Inbound]) -> None:
        """Fetch what a transaction's units share, once, before `handle`; by default,
        nothing."""
        return None

    def handle(self, session: Session, inbound: Inbound) -> None:
        """Act on the message; write state and outgoing mail through the session."""
        ...


class WorkerDied(RuntimeError):
    """The worker process died while doing this, and nothing else was in its hands: the
    item itself killed it (or took too long, or no worker could be had to try it)."""


class Offload(Protocol):
    """Pure CPU work done beside the daemon (its worker processes)."""

    def batched(self, fn: Callable[[Sequence[A]], list[T]]) -> Callable[[A], Awaitable[T]]:
        """An async fn of one item; items asked for together cross in one call of `fn`.
        It raises WorkerDied for an item that killed its worker, and for that one alone."""
        ...
