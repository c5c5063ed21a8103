"""Tables of the list side: lists, members, confirmations, held posts, archive, bounces."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from mailer.models import Base

SUBSCRIPTION_POLICIES = ("confirm", "moderate", "closed")
POSTING_POLICIES = ("members", "anyone", "moderated", "announce")
NONMEMBER_ACTIONS = ("hold", "reject", "discard")
AUTOMATIC_ACTIONS = ("hold", "discard")
DELIVERY_MODES = ("regular", "digest", "nomail")
DIGEST_FORMATS = ("mime", "plain")
ROLES = ("member", "owner", "moderator", "poster")
REPLY_TO = ("poster", "list")
DMARC_MODES = ("dmarc-policy", "always", "never")
DMARC_POSTER_IN = ("reply-to", "cc")
DIGEST_PERIODS = ("daily", "weekly", "monthly")
LANGUAGES = ("en", "fr", "es", "de", "pt")


class MailingList(Base):
    """A list and its settings (lists/settings.py says what each one means)."""

    __tablename__ = "lists"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    subscription_policy: Mapped[str] = mapped_column(String(16), default="confirm")
    posting_policy: Mapped[str] = mapped_column(String(16), default="members")
    created_at: Mapped[float] = mapped_column(Float)
    language: Mapped[str] = mapped_column(String(8), default="en")
    nonmember_action: Mapped[str] = mapped_column(String(12), default="hold")
    subject_prefix: Mapped[str] = mapped_column(String(64), default="")
    reply_to: Mapped[str] = mapped_column(String(12), default="poster")
    footer: Mapped[bool] = mapped_column(Boolean, default=True)
    dmarc_mode: Mapped[str] = mapped_column(String(16), default="dmarc-policy")
    dmarc_poster_in: Mapped[str] = mapped_column(String(12), default="reply-to")
    hold_days: Mapped[int] = mapped_column(Integer, default=14)
    confirm_days: Mapped[int] = mapped_column(Integer, default=7)
    bounce_threshold: Mapped[float] = mapped_column(Float, default=5.0)
    bounce_decay_days: Mapped[int] = mapped_column(Integer, default=7)
    digest_period: Mapped[str] = mapped_column(String(12), default="daily")
    digest_max_kb: Mapped[int] = mapped_column(Integer, default=30)
    automatic_action: Mapped[str] = mapped_column(String(12), default="hold",
                                                  server_default="hold")
    member_posts_per_hour: Mapped[int] = mapped_column(Integer, default=20,
                                                       server_default="20")

    # The archive on the web (issue 13): the owner's choice; a new open list starts public.
    public_archive: Mapped[bool] = mapped_column(Boolean, default=False,
                                                 server_default="0")


class Member(Base):
    """An address with a role on a list (member, owner, moderator or named poster)."""

    __tablename__ = "members"
    # AUTOINCREMENT: SQLite would otherwise give a departed member's id to the next one,
    # and with it their signed tokens (unsubscribe links, VERP).
    __table_args__ = (UniqueConstraint("list_id", "address", "role"),
                      Index("ix_members_list_role", "list_id", "role"),
                      {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(12), default="member")
    display_name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(8), default="")
    delivery: Mapped[str] = mapped_column(String(8), default="regular")
    digest_format: Mapped[str] = mapped_column(String(8), default="mime")
    joined_at: Mapped[float] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str] = mapped_column(String(32), default="")
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0)
    last_bounce_at: Mapped[float | None] = mapped_column(Float)
    # How the membership came about: "self" (confirmed by mail or on the web), "owner"
    # (added by an owner), "seat" (a delegate's seat in a body; unseating ends it), or
    # "" (before this was recorded).
    joined_by: Mapped[str] = mapped_column(String(8), default="self", server_default="")


class Pending(Base):
    """An action waiting for a reply: a confirmation, an owner's approval, a re-enable."""

    __tablename__ = "pending"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"), index=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    action: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(8), default="")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(12), default="pending")


class Held(Base):
    """A post kept back from the list, with the reason; never delivered, never lost."""

    __tablename__ = "held"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"), index=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    sender: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text)
    held_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(12), default="held")
    token: Mapped[str | None] = mapped_column(String(64), unique=True)
    expires_at: Mapped[float | None] = mapped_column(Float)
    decided_at: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[str] = mapped_column(String(320), default="")
    note: Mapped[str] = mapped_column(Text, default="")


class RobotLog(Base):
    """Automatic mail we sent, for the per-address and per-source rate limits."""

    __tablename__ = "robot_log"
    __table_args__ = (Index("ix_robot_log_target", "target", "sent_at"),
                      Index("ix_robot_log_source", "source", "sent_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    target: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(320))
    sent_at: Mapped[float] = mapped_column(Float)


class Archived(Base):
    """A post as the list distributed it; the archive, and the source of digests."""

    __tablename__ = "archive"
    __table_args__ = (Index("ix_archive_list", "list_id", "id"),
                      Index("ix_archive_sender", "list_id", "sender", "archived_at"),
                      Index("ix_archive_message_id", "list_id", "message_id"),
                      Index("ix_archive_thread", "list_id", "thread_id", "id"),
                      Index("ix_archive_month", "list_id", "month", "id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"))
    archived_at: Mapped[float] = mapped_column(Float)
    sender: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[bytes] = mapped_column(LargeBinary)
    # Read once when the post is kept (lists/threads.py), for the archive's pages: the
    # Message-ID, the archive id of its thread's first post, YYYYMM, and its plain text
    # (which the full-text index covers, with the subject: migration 0013).
    message_id: Mapped[str] = mapped_column(String(250), default="", server_default="")
    thread_id: Mapped[int | None] = mapped_column(Integer)
    month: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    body: Mapped[str] = mapped_column(Text, default="", server_default="")


class DigestState(Base):
    """Where each list's digest stands: the last post it carried and its numbering."""

    __tablename__ = "digest_state"
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"), primary_key=True)
    last_archived_id: Mapped[int] = mapped_column(Integer, default=0)
    last_sent_at: Mapped[float] = mapped_column(Float, default=0.0)
    volume: Mapped[int] = mapped_column(Integer, default=1)
    issue: Mapped[int] = mapped_column(Integer, default=0)


class Bounce(Base):
    """A bounce attributed to a member through the VERP token."""

    __tablename__ = "bounces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"), index=True)
    member_id: Mapped[int] = mapped_column(Integer, index=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    received_at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(12))
