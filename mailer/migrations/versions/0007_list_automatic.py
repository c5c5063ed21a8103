"""lists: what happens to automatic posts, and a post rate per sender

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        batch.add_column(sa.Column("automatic_action", sa.String(12), nullable=False,
                                   server_default="hold"))
        batch.add_column(sa.Column("member_posts_per_hour", sa.Integer(), nullable=False,
                                   server_default="20"))
    op.create_index("ix_archive_sender", "archive", ["list_id", "sender", "archived_at"])


def downgrade() -> None:
    op.drop_index("ix_archive_sender", "archive")
    with op.batch_alter_table("lists") as batch:
        batch.drop_column("member_posts_per_hour")
        batch.drop_column("automatic_action")
