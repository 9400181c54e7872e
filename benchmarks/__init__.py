"""Throughput and latency benchmarks: ezgraph against hand-written RQ and Celery baselines."""
