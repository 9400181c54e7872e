"""Indexes for the runs list and the metrics: newest first, by status, by start node; steps by
node and status, and by node and duration (an expression index, on SQLite and PostgreSQL).

Indexes that exist already (a database made with ``metadata.create_all``) are kept.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ezgraph.state.history import DURATION_MS

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_ezgraph_runs_created": ("ezgraph_runs", ["created_at", "run_id"]),
    "ix_ezgraph_runs_status_created": ("ezgraph_runs", ["status", "created_at", "run_id"]),
    "ix_ezgraph_runs_start_created": ("ezgraph_runs", ["start_node", "created_at", "run_id"]),
    "ix_ezgraph_runs_start_status": ("ezgraph_runs", ["start_node", "status"]),
    "ix_ezgraph_steps_node_status": ("ezgraph_steps", ["node", "status"]),
}
DURATION_INDEX = "ix_ezgraph_steps_node_duration"


def upgrade() -> None:
    """Create the indexes that do not exist yet."""
    inspector = sa.inspect(op.get_bind())
    existing = {
        index["name"]
        for table in ("ezgraph_runs", "ezgraph_steps")
        for index in inspector.get_indexes(table)
    }
    for name, (table, columns) in INDEXES.items():
        if name not in existing:
            op.create_index(name, table, columns)
    expression = DURATION_MS.get(op.get_bind().dialect.name)
    if expression is not None and DURATION_INDEX not in existing:
        op.create_index(DURATION_INDEX, "ezgraph_steps", [sa.text("node"), sa.text(expression)])


def downgrade() -> None:
    """Drop them."""
    if op.get_bind().dialect.name in DURATION_MS:
        op.drop_index(DURATION_INDEX, table_name="ezgraph_steps")
    for name, (table, _columns) in INDEXES.items():
        op.drop_index(name, table_name=table)
