"""meetings: a draft has no send-at time yet (issue 11, item 2)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Meetings made before drafts keep their send-at time: they were scheduled or sent.
    with op.batch_alter_table("meetings") as batch:
        batch.alter_column("send_at", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # A draft becomes a meeting sent at once, as `meeting create` made it before.
    op.execute("UPDATE meetings SET send_at = created_at WHERE send_at IS NULL")
    with op.batch_alter_table("meetings") as batch:
        batch.alter_column("send_at", existing_type=sa.Float(), nullable=False)
