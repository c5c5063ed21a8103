"""A post to a list: what the rules and the pipeline are given, and what a rule decides."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from lists.list_site import ListSite
from lists.models import MailingList
from mailer.addresses import AddressError, named_addresses, normalize
from mailer.arc import Assessment
from mailer.inbound import Inbound, UnreadableField

Action = Literal["accept", "hold", "reject", "discard"]


@dataclass(frozen=True)
class Decision:
    """What a rule decided, why in English (for owners' tools), and a code templates translate."""

    action: Action
    reason: str
    code: str = ""


@dataclass(frozen=True)
class PostFacts:
    """What was found before the transaction: the poster's DMARC policy (RFC 7489), why
    the post could not be read, if it could not, and the ARC set its copies get (RFC 8617)."""

    dmarc_policy: str | None = None
    unreadable: str = ""
    arc: Assessment | None = None


@dataclass(frozen=True)
class Post:
    """Everything the rules and steps need about one post to one list."""

    mailing_list: MailingList
    site: ListSite
    message: EmailMessage
    raw: bytes
    message_id: int
    mail_from: str
    senders: tuple[str, ...]
    facts: PostFacts = PostFacts()

    @property
    def name(self) -> str:
        return self.mailing_list.name

    @property
    def list_id_header(self) -> str:
        return list_id(self.site, self.mailing_list)

    def address(self, suffix: str = "") -> str:
        return self.site.address(f"{self.name}{suffix}")


def senders_of(message: EmailMessage, mail_from: str) -> tuple[str, ...]:
    """The From: addresses and the envelope sender, normalised, the valid ones only. A
    From field that parsers read differently (CVE-2023-27043) names nobody."""
    try:
        ambiguous = any(isinstance(field, UnreadableField)
                        or any(str(defect).startswith("invalid address")
                               for defect in getattr(field, "defects", ()))
                        for field in message.get_all("from", []))
    except (ValueError, IndexError, TypeError):     # unreadable: the sender rule holds it
        ambiguous = True
    found = [] if ambiguous else [address for _, address in named_addresses(message)]
    found.append(mail_from)
    valid = []
    for address in found:
        try:
            valid.append(normalize(address))
        except AddressError:
            continue
    return tuple(dict.fromkeys(valid))


def make_post(site: ListSite, mailing_list: MailingList, inbound: Inbound) -> Post:
    facts = inbound.prepared if isinstance(inbound.prepared, PostFacts) else PostFacts()
    return Post(mailing_list, site, inbound.message, inbound.raw, inbound.message_id,
                inbound.mail_from, senders_of(inbound.message, inbound.mail_from), facts)


def list_id(site: ListSite, mailing_list: MailingList) -> str:
    """RFC 2919 list identifier: the posting address with '@' turned into '.'."""
    return f"{mailing_list.name}.{site.domain}"
