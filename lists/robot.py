"""Robot mail of the list side: rendered from templates, rate-limited, queued.

Every message a list robot sends is recorded in `robot_log`; the limits of `[lists]` are
counted there over the last 24 hours, per target address and per source (the sender or
the client address that caused it), so that open subscription cannot be used to bomb a
third party (DESIGN §5).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists.list_site import ListSite
from lists.models import MailingList, RobotLog
from mailer import outbox, robot_mail, templates

DAY = 86_400.0


def sent_recently(session: Session, now: float, *, target: str | None = None,
                  source: str | None = None, kinds: tuple[str, ...]) -> int:
    """How many robot mails of these kinds went to target, or were caused by source."""
    query = select(func.count()).select_from(RobotLog).where(
        RobotLog.sent_at > now - DAY, RobotLog.kind.in_(kinds))
    if target is not None:
        query = query.where(RobotLog.target == target)
    if source is not None:
        query = query.where(RobotLog.source == source)
    return int(session.scalar(query) or 0)


def allowed(session: Session, site: ListSite, *, kind: str, target: str,
            sources: tuple[str, ...]) -> bool:
    """Whether one more robot mail of this kind may go to target for these sources."""
    now = site.clock()
    if kind == "confirm":
        kinds: tuple[str, ...] = ("confirm",)
        per_target, per_source = (site.limits.confirmations_per_address,
                                  site.limits.confirmations_per_source)
    else:
        kinds = ("reply", "confirm")
        per_target = per_source = site.limits.replies_per_address
    if sent_recently(session, now, target=target, kinds=kinds) >= per_target:
        return False
    return all(sent_recently(session, now, source=source, kinds=kinds) < per_source
               for source in sources if source)


def send(session: Session, site: ListSite, mailing_list: MailingList, template: str, *,
         to: str, language: str = "", context: dict[str, Any] | None = None,
         kind: str = "notice", source: str = "", from_local: str = "-request",
         reply_to: str | None = None, in_reply_to: str | None = None,
         member_id: int | None = None) -> None:
    """Render a template for one recipient and queue it from a list robot address."""
    values = {"list": list_view(site, mailing_list), "site_name": site.name,
              **(context or {})}
    language = templates.language_of(language, mailing_list.language)
    subject, body = templates.render(site.templates, template, language, values)
    data = robot_mail.robot_message(
        sender=(f"{mailing_list.display_name}", site.address(mailing_list.name + from_local)),
        to=to, subject=subject, body=body, domain=site.domain, reply_to=reply_to,
        in_reply_to=in_reply_to,
        auto="auto-replied" if in_reply_to else "auto-generated")
    # Mail to a member carries their VERP token, so that its bounce is theirs for sure.
    bounces = "-bounces+{token}" if member_id is not None else "-bounces"
    outbox.enqueue(session, sender=site.address(mailing_list.name + bounces),
                   recipients=[(to, member_id)], data=data, kind=kind)
    session.add(RobotLog(kind=kind, target=to, source=source or to, sent_at=site.clock()))


def list_view(site: ListSite, mailing_list: MailingList) -> dict[str, str]:
    """The list as templates see it: names and role addresses, nothing else."""
    name = mailing_list.name
    return {"name": name, "display_name": mailing_list.display_name,
            "description": mailing_list.description,
            "post": site.address(name), "request": site.address(f"{name}-request"),
            "join": site.address(f"{name}-join"), "leave": site.address(f"{name}-leave"),
            "owner": site.address(f"{name}-owner")}


def notify_moderators(session: Session, site: ListSite, mailing_list: MailingList,
                      template: str, context: dict[str, Any], moderators: list[str],
                      reply_to: str | None = None) -> None:
    """The same notice to each owner and moderator, from the -owner address; to the site
    contact when the list has none (a held post must not wait for nobody)."""
    if not moderators and site.contact.address:
        site.contact.warn_once(f"moderators:{mailing_list.name}",
                               f"notices for the moderators of {mailing_list.name}, a list "
                               f"with no owner (alliance list add {mailing_list.name} "
                               "ADDRESS --role owner)")
        moderators = [site.contact.address]
    for address in moderators:
        send(session, site, mailing_list, template, to=address, context=context,
             kind="notice", from_local="-owner", reply_to=reply_to)


