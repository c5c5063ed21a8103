"""party and body names compared by Unicode case folding; how a membership came about

Revision ID: 0009
Revises: 0008
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def name_key(name: str) -> str:
    """meetings.names.name_key as of this revision (a migration keeps its own copy)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


def fill_keys(table: str) -> None:
    """Each row's key; a name whose key an older row has already (SQLite's lower() let
    "SPÖ" and "spö" both in) gets " #ID" after it, which `party rename` accepts."""
    connection = op.get_bind()
    seen: set[str] = set()
    for ident, name in connection.execute(sa.text(f"SELECT id, name FROM {table} ORDER BY id")):
        key = name_key(name)
        if key in seen:
            key = f"{key} #{ident}"
        seen.add(key)
        connection.execute(sa.text(f"UPDATE {table} SET name_key = :key WHERE id = :id"),
                           {"key": key, "id": ident})


def upgrade() -> None:
    for table in ("parties", "bodies"):
        op.add_column(table, sa.Column("name_key", sa.String(200), nullable=True))
        fill_keys(table)
        with op.batch_alter_table(table) as batch:
            batch.alter_column("name_key", existing_type=sa.String(200), nullable=False)
            batch.create_unique_constraint(f"uq_{table}_name_key", ["name_key"])
    # Plain ADD COLUMN: members keeps its AUTOINCREMENT (0005) only if nothing rebuilds it.
    op.add_column("members", sa.Column("joined_by", sa.String(8), nullable=False,
                                       server_default=""))
    # A member of a body's list who joined it when (or after) they were seated in that
    # body was subscribed by the seat; anyone who was a member before kept their own.
    op.execute("UPDATE members SET joined_by = 'seat' WHERE role = 'member' AND EXISTS ("
               "SELECT 1 FROM seats JOIN bodies ON bodies.id = seats.body_id "
               "JOIN delegates ON delegates.id = seats.delegate_id "
               "WHERE bodies.list_id = members.list_id "
               "AND delegates.address = members.address "
               "AND members.joined_at >= seats.created_at)")


def downgrade() -> None:
    with op.batch_alter_table("members", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("joined_by")
    for table in ("bodies", "parties"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_name_key", type_="unique")
            batch.drop_column("name_key")
