"""Alembic environment: runs on the connection that `Database.upgrade` hands it."""

from alembic import context

import lists.models  # noqa: F401  (registers the list tables on Base.metadata)
import meetings.models  # noqa: F401  (and the meeting tables)
from mailer.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
