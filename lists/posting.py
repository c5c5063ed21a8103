"""The role handler of `NAME@`: a post to a list, decided by the rules, then sent through
the pipeline, held for a moderator or refused.

A post is read (parsed) before its transaction, off the event loop. A large one is first
read in a worker process, whose memory is capped (`router.worker_memory_mb`): a message
that a parser cannot read within that, or that kills the worker, is held for a moderator
with the reason, and never parsed whole in the daemon. Intake's caps (mailer.screen) have
already refused the shapes known to make the parser run away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from email.message import EmailMessage

from sqlalchemy.orm import Session

from lists import dmarc, moderation, service
from lists.handler import ListHandler
from lists.list_site import ListSite
from lists.models import MailingList
from lists.pipeline import distribute
from lists.post import Decision, Post, PostFacts, make_post, senders_of
from lists.rules import decide
from mailer import events
from mailer.inbound import HandlerOptions, Inbound, Offload, WorkerDied, parse, unreadable_fields

log = logging.getLogger(__name__)

READ_IN_WORKER = 256 * 1024   # posts from this size on are read in a worker process first


def read_posts(raws: Sequence[bytes]) -> list[str]:
    """In a worker process: read each post whole, as the daemon will; for each, "" when
    it reads, else why it does not. Never raises for one post."""
    return [_unreadable(raw) for raw in raws]


def _unreadable(raw: bytes) -> str:
    try:
        return reading_problem(parse(raw))        # every field of every part is read
    except MemoryError:
        return "reading it needs more memory than a worker process may use"
    except Exception as error:
        return f"it cannot be read ({type(error).__name__})"


def reading_problem(message: EmailMessage) -> str:
    """Why a parsed post cannot be read as its sender meant, or "": a field (in any
    part) that the parser fails on is kept only as text (mailer.inbound.ReadingPolicy),
    and a post is not passed on to members half-read."""
    names = unreadable_fields(message)
    if not names:
        return ""
    return f"the parser cannot read its {', '.join(dict.fromkeys(names))} field"


class PostHandler(ListHandler):
    """The role handler for `NAME@`: posting to a list."""

    options = HandlerOptions(lazy=True)      # read in `prepare`, not by the router

    def __init__(self, site: ListSite, workers: Offload | None = None) -> None:
        super().__init__(site)
        self._read = workers.batched(read_posts) if workers is not None else None

    async def prepare(self, inbound: Inbound) -> PostFacts:
        """Read the post (a large one in a worker first), look up the poster's DMARC
        policy, and check the ARC chain it came with; none holds the write transaction."""
        if self._read is not None and len(inbound.raw) >= READ_IN_WORKER:
            try:
                problem = await self._read(inbound.raw)
            except WorkerDied as error:
                problem = f"reading it ended a worker process ({error})"
            if problem:
                return PostFacts(unreadable=problem)
        problem = await asyncio.to_thread(lambda: reading_problem(inbound.message))
        if problem:                                           # parsed once, cached
            return PostFacts(unreadable=problem)
        arc = await self.site.arc.assess(inbound.raw, inbound.protocol) \
            if self.site.arc is not None else None
        domain = dmarc.from_domain(inbound.raw)
        if self.site.dmarc is None or domain is None:
            return PostFacts(arc=arc)
        return PostFacts(await self.site.dmarc.policy(domain), arc=arc)

    def handle(self, session: Session, inbound: Inbound) -> None:
        mailing_list = service.find(session, inbound.route.list or "")
        facts = inbound.prepared if isinstance(inbound.prepared, PostFacts) else PostFacts()
        if facts.unreadable:
            hold_unreadable(session, self.site, mailing_list, inbound, facts)
            return
        post = make_post(self.site, mailing_list, inbound)
        decision = decide(session, post)
        if decision.action == "accept":
            distribute(session, post)
        elif decision.action == "hold":
            moderation.hold(session, self.site, post, decision)
        elif decision.action == "reject":
            moderation.refuse(session, self.site, post, decision)
        outcome = {"accept": "distributed", "hold": "held", "reject": "rejected"}.get(
            decision.action, "discarded")
        events.note(session, "post", outcome)
        log.info("post %d to %s %s: %s", inbound.message_id, mailing_list.name, outcome,
                 decision.reason or "-",
                 extra={"event": "post", "outcome": outcome, "list": mailing_list.name,
                        "message_id": str(post.message.get("message-id", "")).strip(),
                        "stored_id": inbound.message_id, "reason": decision.reason})


def hold_unreadable(session: Session, site: ListSite, mailing_list: MailingList,
                    inbound: Inbound, facts: PostFacts) -> None:
    """A post that could not be read safely goes to a person, with the reason; only its
    header block is read here (bounded by intake's caps)."""
    headers = parse(inbound.raw, headersonly=True)
    events.note(session, "post", "held")
    post = Post(mailing_list, site, headers, inbound.raw, inbound.message_id,
                inbound.mail_from, senders_of(headers, inbound.mail_from), facts)
    log.warning("post %d to %s held: %s", inbound.message_id, mailing_list.name,
                facts.unreadable,
                extra={"event": "post", "outcome": "held", "list": mailing_list.name,
                       "message_id": str(headers.get("message-id", "")).strip(),
                       "stored_id": inbound.message_id, "reason": facts.unreadable})
    moderation.hold(session, site, post, Decision(
        "hold", f"the message could not be read safely: {facts.unreadable}", "unreadable"))
