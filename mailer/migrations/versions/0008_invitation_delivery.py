"""invitations: the last delivery problem, failures of the address, answers set by hand

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases: a batch would rebuild the SQLite table, and the
    # table keeps its AUTOINCREMENT (0005) only if nothing rebuilds it without that flag.
    op.add_column("invitations", sa.Column("problem", sa.Text(), nullable=False,
                                           server_default=""))
    op.add_column("invitations", sa.Column("bounce_score", sa.Float(), nullable=False,
                                           server_default="0"))
    op.add_column("invitations", sa.Column("last_bounce_at", sa.Float(), nullable=True))
    op.add_column("invitations", sa.Column("by_hand", sa.Boolean(), nullable=False,
                                           server_default=sa.false()))
    # The old rule marked an invitation undeliverable at its first hard bounce: those get
    # mail again, their failure kept as one of the address's.
    op.execute("UPDATE invitations SET state = 'active', bounce_score = 1, "
               "problem = 'a hard bounce, recorded before details were kept' "
               "WHERE state = 'undeliverable'")


def downgrade() -> None:
    with op.batch_alter_table("invitations",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("by_hand")
        batch.drop_column("last_bounce_at")
        batch.drop_column("bounce_score")
        batch.drop_column("problem")
