"""The role handler of `NAME@`: a post to a list, decided by the rules, then sent through
the pipeline, held for a moderator or refused.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from lists import dmarc, moderation, service
from lists.handler import ListHandler
from lists.pipeline import distribute
from lists.post import PostFacts, make_post
from lists.rules import decide
from mailer.inbound import Inbound

log = logging.getLogger(__name__)


class PostHandler(ListHandler):
    """The role handler for `NAME@`: posting to a list."""

    async def prepare(self, inbound: Inbound) -> PostFacts:
        domain = dmarc.from_domain(inbound.raw)
        if self.site.dmarc is None or domain is None:
            return PostFacts()
        return PostFacts(await self.site.dmarc.policy(domain))

    def handle(self, session: Session, inbound: Inbound) -> None:
        mailing_list = service.find(session, inbound.route.list or "")
        post = make_post(self.site, mailing_list, inbound)
        decision = decide(session, post)
        if decision.action == "accept":
            distribute(session, post)
        elif decision.action == "hold":
            moderation.hold(session, self.site, post, decision)
        elif decision.action == "reject":
            moderation.refuse(session, self.site, post, decision)
        else:
            log.info("post %d to %s discarded: %s", inbound.message_id, mailing_list.name,
                     decision.reason)
