"""Alembic migrations of ezgraph's own tables (``ezgraph_runs``, ``ezgraph_steps``)."""
