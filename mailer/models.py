"""The daemon's own tables: what came in, what goes out, and the settings it keeps.

Times are seconds since the epoch (floats): they are compared on every queue scan, and a
float compares the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Setting(Base):
    """A value the site keeps for itself, such as the generated token secret."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Message(Base):
    """A message as it was received: the raw bytes and the envelope, stored once."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[float] = mapped_column(Float)
    protocol: Mapped[str] = mapped_column(String(8))
    peer: Mapped[str] = mapped_column(String(100))
    mail_from: Mapped[str] = mapped_column(String(320))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class Work(Base):
    """One accepted recipient of a message: a unit of routing work (pending until handled).

    `due_at` is when the row may next be taken; while a router holds it (state
    `working`) it is the end of that router's lease. `attempts` counts the leases taken,
    `failures` the handler's errors (a transient fault is not one), `crashes` the times the
    process died while handling the unit `alone`. After `router.max_attempts` failures or
    crashes the row is `quarantined` with the error, for an operator to list and replay.
    """

    __tablename__ = "work"
    __table_args__ = (Index("ix_work_state_due", "state", "due_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    list_name: Mapped[str | None] = mapped_column(String(64))
    token: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    alone: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    due_at: Mapped[float] = mapped_column(Float)
    done_at: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class Outgoing(Base):
    """A message to send, rendered once; its recipients are Delivery rows.

    `sender` is the envelope sender; when it holds `{token}` each delivery gets its own
    (VERP, the token signed over the delivery's member).
    """

    __tablename__ = "outgoing"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    sender: Mapped[str] = mapped_column(String(320))
    source_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Delivery(Base):
    """One recipient of an Outgoing message: done only after the smarthost's 250.

    States: `pending` (due at `due_at`), `sending` (leased until `due_at`), `done`,
    `failed` (a 5xx, or retries ran out; `code` and `error` say why).
    """

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_state_due", "state", "due_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outgoing_id: Mapped[int] = mapped_column(ForeignKey("outgoing.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    member_id: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    due_at: Mapped[float] = mapped_column(Float)
    done_at: Mapped[float | None] = mapped_column(Float)
    code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class SignIn(Base):
    """A sign-in link mailed to an address (mailer.webauth): good once, for a short while.

    The link carries the row's id signed with the site secret; `used_at` makes it one-time,
    and the rows of the last quarter hour are what sign-in requests are counted against
    (per address and per client address), across every daemon of the site.
    """

    __tablename__ = "sign_ins"
    __table_args__ = (Index("ix_sign_ins_address_created", "address", "created_at"),
                      Index("ix_sign_ins_client_created", "client", "created_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    client: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)
    next_path: Mapped[str] = mapped_column(String(300), default="/")
