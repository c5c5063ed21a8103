"""What the list side needs to know about the site, handed in by the composition root."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2

from lists.dmarc import DmarcLookup
from mailer.config import Lists as ListLimits
from mailer.tokens import Signer


@dataclass(frozen=True)
class ListSite:
    domain: str
    name: str
    templates: jinja2.Environment
    member_tokens: Signer          # VERP: which member a bounce is about
    unsubscribe_tokens: Signer     # RFC 8058 one-click unsubscribe links
    base_url: str                  # "" when no HTTP listener is published
    limits: ListLimits = field(default_factory=ListLimits)
    clock: Callable[[], float] = time.time
    dmarc: DmarcLookup | None = None

    def address(self, local: str) -> str:
        return f"{local}@{self.domain}"
