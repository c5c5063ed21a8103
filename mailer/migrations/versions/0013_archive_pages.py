"""archive: threads, months, text and a full-text index; public_archive an owner's setting
(issue 13, item 3)

Revision ID: 0013
Revises: 0012

The full-text index is the database's own: on SQLite an FTS5 table over `archive`
(external content, kept by triggers, so every way a row is written keeps it right); on
PostgreSQL a GIN index on the expression the search query uses (the `simple`
configuration: posts come in five languages, and no stemming is better than a wrong one).
A later batch migration of `archive` on SQLite rebuilds the table: it must create the
three triggers again.

Posts archived before this revision are read here once (Message-ID, References, text),
in id order, with this revision's own copy of the rules in lists/threads.py.
"""

import re
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SEARCHED = "coalesce(subject, '') || ' ' || coalesce(body, '')"
TRIGGERS = (
    "CREATE TRIGGER archive_search_insert AFTER INSERT ON archive BEGIN "
    "INSERT INTO archive_search (rowid, subject, body) VALUES (new.id, new.subject, new.body); "
    "END",
    "CREATE TRIGGER archive_search_delete AFTER DELETE ON archive BEGIN "
    "INSERT INTO archive_search (archive_search, rowid, subject, body) "
    "VALUES ('delete', old.id, old.subject, old.body); END",
    "CREATE TRIGGER archive_search_update AFTER UPDATE OF subject, body ON archive BEGIN "
    "INSERT INTO archive_search (archive_search, rowid, subject, body) "
    "VALUES ('delete', old.id, old.subject, old.body); "
    "INSERT INTO archive_search (rowid, subject, body) VALUES (new.id, new.subject, new.body); "
    "END",
)
_ID = re.compile(r"<[^<>\s]{1,248}>")


def upgrade() -> None:
    op.add_column("lists", sa.Column("public_archive", sa.Boolean(), nullable=False,
                                     server_default=sa.false()))
    lists = sa.table("lists", sa.column("public_archive", sa.Boolean),
                     sa.column("subscription_policy", sa.String))
    # Until now an archive was public exactly when anyone could join: keep each as it was.
    op.execute(lists.update().where(lists.c.subscription_policy == "confirm")
               .values(public_archive=True))
    op.add_column("archive", sa.Column("message_id", sa.String(250), nullable=False,
                                       server_default=""))
    op.add_column("archive", sa.Column("thread_id", sa.Integer(), nullable=True))
    op.add_column("archive", sa.Column("month", sa.Integer(), nullable=False,
                                       server_default="0"))
    op.add_column("archive", sa.Column("body", sa.Text(), nullable=False, server_default=""))
    _read_old_posts()
    op.create_index("ix_archive_message_id", "archive", ["list_id", "message_id"])
    op.create_index("ix_archive_thread", "archive", ["list_id", "thread_id", "id"])
    op.create_index("ix_archive_month", "archive", ["list_id", "month", "id"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE VIRTUAL TABLE archive_search USING fts5(subject, body, "
                   "content='archive', content_rowid='id', "
                   "tokenize='unicode61 remove_diacritics 2')")
        for trigger in TRIGGERS:
            op.execute(trigger)
        op.execute("INSERT INTO archive_search (archive_search) VALUES ('rebuild')")
    else:
        op.execute(f"CREATE INDEX ix_archive_search ON archive "
                   f"USING gin (to_tsvector('simple', {SEARCHED}))")


def _read_old_posts() -> None:
    bind = op.get_bind()
    archive = sa.table("archive", sa.column("id", sa.Integer), sa.column("list_id", sa.Integer),
                       sa.column("archived_at", sa.Float), sa.column("data", sa.LargeBinary),
                       sa.column("message_id", sa.String), sa.column("thread_id", sa.Integer),
                       sa.column("month", sa.Integer), sa.column("body", sa.Text))
    threads: dict[tuple[int, str], int] = {}
    last = 0
    while True:
        rows = bind.execute(sa.select(archive.c.id, archive.c.list_id, archive.c.archived_at,
                                      archive.c.data).where(archive.c.id > last)
                            .order_by(archive.c.id).limit(200)).all()
        if not rows:
            return
        for ident, list_id, archived_at, data in rows:
            values = _read(ident, list_id, archived_at, bytes(data), threads)
            bind.execute(archive.update().where(archive.c.id == ident).values(**values))
            last = ident


def _read(ident: int, list_id: int, archived_at: float, data: bytes,
          threads: dict[tuple[int, str], int]) -> dict[str, object]:
    try:
        message = BytesParser(policy=default).parsebytes(data)
        own = [m.lower() for m in _ID.findall(str(message.get("message-id", "")))]
        named = [m.lower() for m in _ID.findall(str(message.get("in-reply-to", "")))]
        named += reversed([m.lower() for m in
                           _ID.findall(str(message.get("references", "")))][-20:])
        body = message.get_body(preferencelist=("plain",))
        text = str(body.get_content())[:200_000] if body else ""
    except Exception:
        own, named, text = [], [], ""
    text = text.replace("\r\n", "\n").replace("\x00", "")
    thread = next((threads[(list_id, m)] for m in named if (list_id, m) in threads), ident)
    if own:
        threads[(list_id, own[0][:250])] = thread
    moment = datetime.fromtimestamp(archived_at, UTC)
    return {"message_id": own[0][:250] if own else "", "thread_id": thread,
            "month": moment.year * 100 + moment.month, "body": text}


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER archive_search_{name}")
        op.execute("DROP TABLE archive_search")
    else:
        op.execute("DROP INDEX ix_archive_search")
    for name in ("message_id", "thread", "month"):
        op.drop_index(f"ix_archive_{name}", "archive")
    with op.batch_alter_table("archive") as batch:
        for column in ("message_id", "thread_id", "month", "body"):
            batch.drop_column(column)
    with op.batch_alter_table("lists") as batch:
        batch.drop_column("public_archive")
