"""Operations: what an operator reads about runs, queues and workers.

The views behind ``ezgraph dashboard``, ``ezgraph metrics``, ``runs``, ``top`` and
``diagnose``: read-only, built from Redis (runs in flight, RQ's queues and workers) and SQL
(the history), never changing either.
"""
