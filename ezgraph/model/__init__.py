"""The pure model: the graph, what a module may return, and runs as records (no Redis, no SQL)."""
