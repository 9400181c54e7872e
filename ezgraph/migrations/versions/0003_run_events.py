"""The events runs' steps emitted (progress, events): ``ezgraph_run_events``.

A table that exists already (made by ``metadata.create_all``) is kept.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table unless it exists."""
    if "ezgraph_run_events" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "ezgraph_run_events",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("ms", sa.BigInteger, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("step", sa.String(220), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("body", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("ezgraph_run_events")
