"""Tables of the meetings side: the organisation of the charter, meetings, invitations.

Times a machine compares (send times, reply stamps) are epoch seconds; a meeting's own
times are kept as the organiser gave them, a local wall time plus an IANA zone, with the
UTC instant beside them for queries (RFC 5545 §3.3.5 form 3).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, validates

from mailer.models import Base
from meetings.names import name_key

REGIONS = ("asia", "africa", "middle-east", "europe", "latin-america", "north-america")
BODY_KINDS = ("board", "steering", "conference", "custom")
PARTSTATS = ("NEEDS-ACTION", "ACCEPTED", "DECLINED", "TENTATIVE", "DELEGATED")
# The answers the coordinators may record for an invitee who gave it by phone or in words.
BY_HAND = ("ACCEPTED", "TENTATIVE", "DECLINED")


class Party(Base):
    """A member party of the network (charter: parties from six regions).

    `name_key` is the name as names are compared (meetings.names), kept with the name.
    """

    __tablename__ = "parties"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    country: Mapped[str] = mapped_column(String(2))
    region: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)

    @validates("name")
    def _keyed(self, _: str, name: str) -> str:
        self.name_key = name_key(name)
        return name


class Body(Base):
    """A body that meets: the Board, the Steering Committee, the Conference, or a custom one.

    `max_parties` (Board: 30), `one_delegate_per_party` (Steering Committee) and
    `meetings_per_year` (Board 1, Steering Committee 2, Conference 1) carry the charter's
    rules; `list_id` is the body's distribution list, to which its delegates belong.
    `name_key` is the name as names are compared (meetings.names), kept with the name;
    `names` its name in the other languages invitations are written in.
    """

    __tablename__ = "bodies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(12))
    list_id: Mapped[int | None] = mapped_column(ForeignKey("lists.id"))
    max_parties: Mapped[int | None] = mapped_column(Integer)
    one_delegate_per_party: Mapped[bool] = mapped_column(Boolean, default=False)
    meetings_per_year: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    # The name in other languages, by template language ({"fr": "Comité directeur"});
    # `name` is the English one, and stands in for any language not given.
    names: Mapped[dict[str, str] | None] = mapped_column(JSON)

    @validates("name")
    def _keyed(self, _: str, name: str) -> str:
        self.name_key = name_key(name)
        return name


class Delegate(Base):
    """A person who may be invited: name, address, party, language."""

    __tablename__ = "delegates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), index=True)
    language: Mapped[str] = mapped_column(String(8), default="en")
    created_at: Mapped[float] = mapped_column(Float)


class Seat(Base):
    """A delegate's place in a body: the party's `delegate`, or its named `substitute`."""

    __tablename__ = "seats"
    __table_args__ = (UniqueConstraint("body_id", "delegate_id"),
                      Index("ix_seats_body_party", "body_id", "party_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body_id: Mapped[int] = mapped_column(ForeignKey("bodies.id"))
    delegate_id: Mapped[int] = mapped_column(ForeignKey("delegates.id"))
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    role: Mapped[str] = mapped_column(String(12), default="delegate")
    created_at: Mapped[float] = mapped_column(Float)


class Meeting(Base):
    """A meeting of a body, with its stable UID and its SEQUENCE (RFC 5545 §3.8.7.4)."""

    __tablename__ = "meetings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(200), unique=True)
    body_id: Mapped[int] = mapped_column(ForeignKey("bodies.id"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    location: Mapped[str] = mapped_column(String(300), default="")
    tz: Mapped[str] = mapped_column(String(64))
    start_local: Mapped[str] = mapped_column(String(19))   # 2027-03-14T09:00:00
    end_local: Mapped[str] = mapped_column(String(19))
    starts_at: Mapped[float] = mapped_column(Float, index=True)  # UTC instant
    ends_at: Mapped[float] = mapped_column(Float)
    host_party_id: Mapped[int | None] = mapped_column(ForeignKey("parties.id"))
    alongside: Mapped[str] = mapped_column(String(300), default="")
    agenda_url: Mapped[str] = mapped_column(String(1000), default="")
    send_at: Mapped[float | None] = mapped_column(Float)  # None: a draft
    status: Mapped[str] = mapped_column(String(12), default="CONFIRMED")
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Invitation(Base):
    """One invitee of one meeting: what we sent them and what they answered.

    `sent_sequence` is the SEQUENCE of the last REQUEST or CANCEL sent (None: nothing yet),
    so sending twice never invites twice. `reply_sequence`/`reply_stamp` are those of the
    last REPLY applied, and `reset_sequence` the SEQUENCE at which PARTSTAT was last reset:
    together they decide whether a reply is stale (RFC 5546 §2.1.5).
    """

    __tablename__ = "invitations"
    __table_args__ = (UniqueConstraint("meeting_id", "address"),
                      {"sqlite_autoincrement": True})  # ids are signed into rsvp+ tokens
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    meeting_id: Mapped[int] = mapped_column(ForeignKey("meetings.id"), index=True)
    delegate_id: Mapped[int | None] = mapped_column(ForeignKey("delegates.id"))
    address: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    state: Mapped[str] = mapped_column(String(16), default="active")  # removed, undeliverable
    partstat: Mapped[str] = mapped_column(String(16), default="NEEDS-ACTION")
    comment: Mapped[str] = mapped_column(Text, default="")
    replied_at: Mapped[float | None] = mapped_column(Float)
    reply_sequence: Mapped[int | None] = mapped_column(Integer)
    reply_stamp: Mapped[float | None] = mapped_column(Float)
    reset_sequence: Mapped[int] = mapped_column(Integer, default=0)
    sent_sequence: Mapped[int | None] = mapped_column(Integer)
    delegated_from_id: Mapped[int | None] = mapped_column(Integer)
    delegated_to: Mapped[str] = mapped_column(String(320), default="")
    reminded: Mapped[str] = mapped_column(String(64), default="")  # offsets sent, "14,3"
    # Delivery (meetings.reachability): the last failed message, and the failures of the
    # address, one a day; at three the invitation is undeliverable.
    problem: Mapped[str] = mapped_column(Text, default="")
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0)
    last_bounce_at: Mapped[float | None] = mapped_column(Float)
    by_hand: Mapped[bool] = mapped_column(Boolean, default=False)  # answer set by a person


class RsvpEvent(Base):
    """A change to an invitation (reply, counter, delegation), for the daily summary."""

    __tablename__ = "rsvp_events"
    __table_args__ = (Index("ix_rsvp_events_reported", "reported", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    meeting_id: Mapped[int] = mapped_column(ForeignKey("meetings.id"))
    invitation_id: Mapped[int] = mapped_column(ForeignKey("invitations.id"))
    kind: Mapped[str] = mapped_column(String(16))  # reply, counter, delegated, bounce
    partstat: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[float] = mapped_column(Float)
    reported: Mapped[bool] = mapped_column(Boolean, default=False)


class CoordinationTerm(Base):
    """Which party coordinates, from one conference to the next (charter: rotation)."""

    __tablename__ = "coordination_terms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    contact: Mapped[str] = mapped_column(String(320), default="")
