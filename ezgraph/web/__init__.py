"""The dashboard: ezgraph's pages beside rq-dashboard and /metrics (``ezgraph dashboard``)."""
