"""The processes that run steps: ezgraph's fast worker, and a stock RQ worker's helpers."""
