"""The robot addresses of a list: `-join`, `-leave`, `-request` and `-confirm+TOKEN`.

Automatic mail is never answered (RFC 3834), nor mail that has been through this list
already; replies are rate-limited per address and per source. Results of commands come
back in one reply, in the sender's language.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy.orm import Session

from lists import moderation, robot, service, subscriptions
from lists.automail import automatic
from lists.commands import Command, first_command, read
from lists.handler import ListHandler
from lists.list_site import ListSite
from lists.models import MailingList
from lists.subscriptions import RequestOutcome
from mailer import outbox, rawmail
from mailer.addresses import AddressError, Role, named_addresses, normalize
from mailer.inbound import Inbound

log = logging.getLogger(__name__)
WHO_LIMIT = 5000


def sender_of(inbound: Inbound) -> tuple[str, str]:
    """(address, display name) of whoever sent the message: From, else the envelope."""
    for name, address in named_addresses(inbound.message):
        try:
            return normalize(address), name
        except AddressError:
            continue
    try:
        return normalize(inbound.mail_from), ""
    except AddressError:
        return "", ""


def source_of(inbound: Inbound) -> str:
    """Who caused this message, for the per-source rate limits.

    The client address, when a client spoke to us directly. Behind a local MTA (LMTP from
    Postfix, or any loopback peer) every message comes from 127.0.0.1, so the client is
    taken from the Received: field that MTA added, the one just below ours; failing
    that, the envelope sender. Only that one field is trusted: those below it are the
    sender's to write.
    """
    if inbound.peer and not inbound.peer.startswith(("127.", "::1", "unknown")):
        return inbound.peer
    trace = inbound.message.get_all("received", [])
    if len(trace) > 1:
        found = _BRACKETED_IP.search(str(trace[1]))
        if found and not found.group(1).startswith("127."):
            return found.group(1)
    return inbound.mail_from or "unknown"


_BRACKETED_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{3,45})\]")


def why_not_answer(inbound: Inbound, site: ListSite, mailing_list: MailingList) -> str | None:
    """Why this message gets no automatic answer at all, or None."""
    reason = automatic(inbound.message, inbound.mail_from)
    if reason:
        return reason
    ours = site.address(mailing_list.name)
    for value in inbound.message.get_all("x-loop", []):
        if ours in str(value).lower():
            return "X-Loop of this list"
    return None


class ListRobot(ListHandler):
    """Shared by the list robot roles: which list, and may we answer."""

    def _list(self, session: Session, inbound: Inbound) -> MailingList | None:
        mailing_list = service.find(session, inbound.route.list or "")
        reason = why_not_answer(inbound, self.site, mailing_list)
        if reason:
            log.info("no answer to message %d for %s: %s", inbound.message_id,
                     inbound.recipient, reason)
            return None
        return mailing_list


class RequestHandler(ListRobot):
    """`-join@`, `-leave@` and `-request@` (commands in the Subject or the body)."""

    def handle(self, session: Session, inbound: Inbound) -> None:
        mailing_list = self._list(session, inbound)
        if mailing_list is None:
            return
        address, name = sender_of(inbound)
        if not address:
            return
        if inbound.route.role == Role.JOIN:
            commands = [Command("subscribe", (), "subscribe")]
        elif inbound.route.role == Role.LEAVE:
            commands = [Command("unsubscribe", (), "unsubscribe")]
        else:
            commands = read(inbound.message) or [Command("help", (), "")]
        source, in_reply_to = source_of(inbound), message_id(inbound)
        results = [self.run(session, mailing_list, command, address, name, source,
                            in_reply_to) for command in commands]
        reply(session, self.site, mailing_list, address, inbound, commands, results)

    def run(self, session: Session, mailing_list: MailingList, command: Command,
            address: str, name: str, source: str, in_reply_to: str | None) -> RequestOutcome:
        """Carry out one command for the sender."""
        site = self.site
        if command.verb == "subscribe":
            return subscriptions.request_join(session, site, mailing_list, address,
                                              display_name=name, source=source,
                                              in_reply_to=in_reply_to)
        if command.verb == "unsubscribe":
            return subscriptions.request_leave(session, site, mailing_list, address,
                                               source=source, in_reply_to=in_reply_to)
        if command.verb == "confirm":
            token = command.args[0] if command.args else ""
            return confirm_token(session, site, mailing_list, token, address, [])
        if command.verb == "set":
            member = service.member(session, mailing_list.id, address)
            if member is None:
                return RequestOutcome("not_member", address)
            option = command.args[0].lower() if command.args else ""
            value = command.args[1].lower() if len(command.args) > 1 else ""
            return subscriptions.set_option(session, site, mailing_list, member, option, value)
        if command.verb == "who":
            if not service.has_role(session, mailing_list.id, [address],
                                    ("owner", "moderator")):
                return RequestOutcome("who_refused")
            roster = [m.address for m in service.members(session, mailing_list)]
            detail = "\n".join(roster[:WHO_LIMIT])
            return RequestOutcome("who", detail)
        if command.verb == "help":
            return RequestOutcome("help")
        return RequestOutcome("unknown", command.line[:200])


def message_id(inbound: Inbound) -> str | None:
    """The Message-ID a robot's answer refers to (In-Reply-To), if there is one."""
    return str(inbound.message.get("message-id", "")) or None


def reply(session: Session, site: ListSite, mailing_list: MailingList, address: str,
          inbound: Inbound, commands: list[Command], results: list[RequestOutcome]) -> None:
    """One answer with every result that no dedicated mail has already given."""
    dedicated = {"confirm_sent", "unsubscribe_confirm_sent", "closed", "subscribed",
                 "unsubscribed", "awaiting_approval", "limited", "reenabled"}
    lines = [{"command": c.line, "code": r.code, "detail": r.detail}
             for c, r in zip(commands, results, strict=True) if r.code not in dedicated]
    if not lines:
        return
    source = source_of(inbound)
    if not robot.allowed(session, site, kind="reply", target=address, sources=(source,)):
        log.warning("reply to %s not sent: rate limit", address)
        return
    member = service.member(session, mailing_list.id, address)
    robot.send(session, site, mailing_list, "command_results", to=address,
               language=member.language if member else "", kind="reply", source=source,
               in_reply_to=message_id(inbound),
               context={"results": lines,
                        "help": any(r.code in ("help", "unknown") for r in results)})


def confirm_token(session: Session, site: ListSite, mailing_list: MailingList, token: str,
                  actor: str, words: list[str]) -> RequestOutcome:
    """A token came back: confirm what it stands for, or moderate the post it names."""
    held = subscriptions.find_held(session, mailing_list, token)
    if held is not None:
        return moderation.by_mail(session, site, mailing_list, held, actor, words)
    pending = subscriptions.find_pending(session, site, mailing_list, token)
    if pending is None:
        return RequestOutcome("bad_token", token[:80])
    rejected = bool(words) and words[0] == "reject"
    return subscriptions.confirm(session, site, mailing_list, pending, rejected=rejected)


class ConfirmHandler(ListRobot):
    """`-confirm+TOKEN@`: a reply to a confirmation, an approval or a moderation notice."""

    def handle(self, session: Session, inbound: Inbound) -> None:
        mailing_list = self._list(session, inbound)
        if mailing_list is None:
            return
        address, _ = sender_of(inbound)
        words = first_command(inbound.message)
        outcome = confirm_token(session, self.site, mailing_list,
                                inbound.route.token or "", address, words)
        if outcome.code in ("bad_token", "moderation_help") and address:
            command = Command("confirm", (inbound.route.token or "",), "confirm")
            reply(session, self.site, mailing_list, address, inbound, [command], [outcome])


class OwnerHandler(ListRobot):
    """`-owner@`: passed on, as it came, to every owner and moderator of the list."""

    def handle(self, session: Session, inbound: Inbound) -> None:
        mailing_list = service.find(session, inbound.route.list or "")
        moderators = service.moderators(session, mailing_list.id)
        if not moderators:
            self.site.contact.forward(
                session, inbound, cause=f"owner:{mailing_list.name}",
                why=f"mail to {mailing_list.name}-owner@{self.site.domain}, a list with no "
                    f"owner (alliance list add {mailing_list.name} ADDRESS --role owner)")
            return
        data = rawmail.rewrite(inbound.raw, set(),
                               [("X-Loop", self.site.address(f"{mailing_list.name}-owner"))])
        outbox.enqueue(session, sender=self.site.address(f"{mailing_list.name}-bounces"),
                       recipients=[(address, None) for address in moderators], data=data,
                       kind="owner", source_id=inbound.message_id)
