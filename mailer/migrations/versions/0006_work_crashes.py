"""work: failures and crashes counted apart, and whether a unit is handled alone

A unit is quarantined for crashing the process only when it crashed it while handled
alone; units in flight beside it are retried, uncharged (issue 10).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("work") as batch:
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("crashes", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("alone", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("work") as batch:
        batch.drop_column("alone")
        batch.drop_column("crashes")
        batch.drop_column("failures")
