"""sign-in links for the web pages, one-time and short-lived (issue 13, item 4)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_ins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.Column("next_path", sa.String(300), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_ins")))
    op.create_index("ix_sign_ins_address_created", "sign_ins", ["address", "created_at"])
    op.create_index("ix_sign_ins_client_created", "sign_ins", ["client", "created_at"])


def downgrade() -> None:
    op.drop_table("sign_ins")
