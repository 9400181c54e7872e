"""ezgraph's SQL tables, as SQLAlchemy Core ``Table`` objects: ``ezgraph_runs``,
``ezgraph_steps``, ``ezgraph_run_events``, ``ezgraph_notifications`` and
``ezgraph_idempotency``. Their shape changes only through a migration
(``ezgraph/migrations/versions``); the typed ORM models over them are ``ezgraph.models``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from ..model.records import MAX_NAME, MAX_RUN_ID

# SQLAlchemy Core tables: workers write through these without importing the ORM (a few MiB of
# resident memory per worker). Typed ORM models over the same tables are in ``ezgraph.models``.
metadata = MetaData()

runs_table = Table(
    "ezgraph_runs",
    metadata,
    Column("run_id", String(MAX_RUN_ID), primary_key=True),
    Column("package", String(MAX_NAME), nullable=False),
    Column("start_node", String(MAX_NAME), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("input", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    # Newest first, whole or by status or start node: the runs list pages by (created_at,
    # run_id) on these (migration 0002), and the metrics count by start node and status.
    Index("ix_ezgraph_runs_created", "created_at", "run_id"),
    Index("ix_ezgraph_runs_status_created", "status", "created_at", "run_id"),
    Index("ix_ezgraph_runs_start_created", "start_node", "created_at", "run_id"),
    Index("ix_ezgraph_runs_start_status", "start_node", "status"),
)

steps_table = Table(
    "ezgraph_steps",
    metadata,
    Column("run_id", String(MAX_RUN_ID), primary_key=True),
    Column("step", String(MAX_NAME + 20), primary_key=True),  # the node, or node-<i> (a map)
    Column("position", Integer, nullable=False, default=0),
    Column("node", String(MAX_NAME), nullable=False),
    Column("item_index", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("input", JSON, nullable=True),
    Column("output", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("worker", String(MAX_NAME), nullable=True),
    Index("ix_ezgraph_steps_node_status", "node", "status"),  # the metrics' steps by node
)

# What a run's steps emitted (progress, events), as its Redis stream held them when the run was
# written: ordered by the stream id (ms, seq); type, step and at are copied out of the body.
events_table = Table(
    "ezgraph_run_events",
    metadata,
    Column("run_id", String(MAX_RUN_ID), primary_key=True),
    Column("ms", BigInteger, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("type", String(MAX_NAME), nullable=False),
    Column("step", String(MAX_NAME + 20), nullable=True),
    Column("at", DateTime(timezone=True), nullable=True),
    Column("body", JSON, nullable=False),
)

# One row per run to POST to FLOW_ORCHESTRATION_URL (migration 0004), written with the run;
# ``ezgraph.notify`` delivers it. ``ended_at`` is the end it tells: a retried run that ends
# again is told again.
notifications_table = Table(
    "ezgraph_notifications",
    metadata,
    Column("run_id", String(MAX_RUN_ID), primary_key=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("state", String(16), nullable=False),  # pending, delivered or failed
    Column("attempts", Integer, nullable=False, default=0),
    # When it is due; while a notifier sends it, when that notifier's lease ends.
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Index("ix_ezgraph_notifications_due", "state", "next_attempt_at"),
)


# A submission's idempotency key and its run (migration 0005): a key is written with its run's
# first write to SQL, and a key that is there already keeps its run (insert or ignore), so a
# duplicate can never fail the batch it is in.
idempotency_table = Table(
    "ezgraph_idempotency_keys",
    metadata,
    Column("idempotency_key", String(MAX_NAME), primary_key=True),
    Column("run_id", String(MAX_RUN_ID), nullable=False),
)
