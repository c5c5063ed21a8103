"""A seated delegate who leaves their body's list: the coordinators are told.

The list side calls `left_list` (through the hook `lists.list_site.ListSite.on_leave`,
wired by the composition root) when a member leaves by a confirmed mail command or the
web's one-click unsubscribe. If the person holds a seat in the body whose list it is, the
coordinators get one notice in the same transaction: the seat stays (only they can take
it), but the delegate no longer reads the body's mail.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists.models import MailingList
from meetings import coordination
from meetings.meeting_site import MeetingSite
from meetings.models import Body, Delegate, Party, Seat


def left_list(session: Session, site: MeetingSite, mailing_list: MailingList,
              address: str) -> int:
    """Notify the coordinators if `address` holds a seat in the list's body; the number
    of notices queued (0: no seat, or no coordination contact)."""
    found = session.execute(
        select(Body, Seat, Delegate, Party).join(Seat, Seat.body_id == Body.id)
        .join(Delegate, Seat.delegate_id == Delegate.id)
        .join(Party, Seat.party_id == Party.id)
        .where(Body.list_id == mailing_list.id, Delegate.address == address.lower())).first()
    if found is None:
        return 0
    body, seat, delegate, party = found
    return coordination.notify(
        session, site, "delegate_left_list",
        {"site_name": site.name, "address": delegate.address, "name": delegate.name,
         "party": party.name, "body": body.name, "slug": body.slug, "role": seat.role,
         "list_address": site.address(mailing_list.name)}, kind="notice")
