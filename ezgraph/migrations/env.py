"""Alembic environment: ezgraph runs it programmatically (see ``ezgraph.state.sql.migrate``)."""

from __future__ import annotations

from alembic import context

from ezgraph.state.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="ezgraph_alembic_version",  # clear of the user's own Alembic history
)
with context.begin_transaction():
    context.run_migrations()
