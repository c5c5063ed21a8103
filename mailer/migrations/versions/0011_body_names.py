"""bodies: names in the other languages invitations are written in (issue 11, item 9)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The charter bodies' names as meetings.organisation.CHARTER gives them at this revision
# (a migration keeps its own copy); a body renamed since keeps only its own name.
CHARTER = {
    ("board", "Board"): {"fr": "Conseil", "es": "Consejo", "de": "Vorstand",
                         "pt": "Conselho"},
    ("steering", "Steering Committee"): {"fr": "Comité directeur", "es": "Comité Directivo",
                                         "de": "Lenkungsausschuss", "pt": "Comitê Diretor"},
    ("conference", "Conference"): {"fr": "Conférence", "es": "Conferencia",
                                   "de": "Konferenz", "pt": "Conferência"},
}


def upgrade() -> None:
    op.add_column("bodies", sa.Column("names", sa.JSON(), nullable=True))
    bodies = sa.table("bodies", sa.column("slug", sa.String), sa.column("name", sa.String),
                      sa.column("names", sa.JSON))
    for (slug, name), names in CHARTER.items():
        op.execute(bodies.update().where(bodies.c.slug == slug, bodies.c.name == name)
                   .values(names=names))


def downgrade() -> None:
    with op.batch_alter_table("bodies") as batch:
        batch.drop_column("names")
