"""Tables of the list side: lists, their members and the posts held for moderation."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailer.models import Base

SUBSCRIPTION_POLICIES = ("confirm", "moderate", "closed")
POSTING_POLICIES = ("members", "anyone", "moderated", "announce")
DELIVERY_MODES = ("regular", "digest", "nomail")


class MailingList(Base):
    __tablename__ = "lists"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    subscription_policy: Mapped[str] = mapped_column(String(16), default="confirm")
    posting_policy: Mapped[str] = mapped_column(String(16), default="members")
    created_at: Mapped[float] = mapped_column(Float)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("list_id", "address"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    delivery: Mapped[str] = mapped_column(String(8), default="regular")
    joined_at: Mapped[float] = mapped_column(Float)


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
