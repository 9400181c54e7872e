"""The first schema: ezgraph_runs and ezgraph_steps.

Tables that exist already (made by ``metadata.create_all`` before migrations existed) are kept.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the tables that do not exist yet."""
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "ezgraph_runs" not in existing:
        op.create_table(
            "ezgraph_runs",
            sa.Column("run_id", sa.String(64), primary_key=True),
            sa.Column("package", sa.String(200), nullable=False),
            sa.Column("start_node", sa.String(200), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("input", sa.JSON, nullable=True),
            sa.Column("result", sa.JSON, nullable=True),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        )
        op.create_index("ix_ezgraph_runs_status", "ezgraph_runs", ["status"])
    if "ezgraph_steps" not in existing:
        op.create_table(
            "ezgraph_steps",
            sa.Column("run_id", sa.String(64), primary_key=True),
            sa.Column("step", sa.String(220), primary_key=True),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("node", sa.String(200), nullable=False),
            sa.Column("item_index", sa.Integer, nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("input", sa.JSON, nullable=True),
            sa.Column("output", sa.JSON, nullable=True),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("worker", sa.String(200), nullable=True),
        )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("ezgraph_steps")
    op.drop_table("ezgraph_runs")
