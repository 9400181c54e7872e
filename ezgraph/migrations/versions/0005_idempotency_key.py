"""Idempotency keys: ``ezgraph_idempotency_keys`` (key, run id), the key its primary key.

A table of its own rather than a column of ``ezgraph_runs``: the hand-over writes a key with
insert-or-ignore, so a key some other run holds never fails the batch of runs it is written in.
A table that exists already (made with ``metadata.create_all``) is kept.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "ezgraph_idempotency_keys"


def upgrade() -> None:
    """Create the table unless it exists."""
    if TABLE not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            TABLE,
            sa.Column("idempotency_key", sa.String(200), primary_key=True),
            sa.Column("run_id", sa.String(64), nullable=False),
        )


def downgrade() -> None:
    """Drop it."""
    op.drop_table(TABLE)
