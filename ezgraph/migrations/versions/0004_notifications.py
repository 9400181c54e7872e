"""The notifications of ended runs to FLOW_ORCHESTRATION_URL: one row per run, its delivery state.

A table that exists already (a database made with ``metadata.create_all``) is kept.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``ezgraph_notifications`` and its index of the ones due."""
    if "ezgraph_notifications" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "ezgraph_notifications",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_ezgraph_notifications_due", "ezgraph_notifications", ["state", "next_attempt_at"]
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("ezgraph_notifications")
