"""``ezgraph chaos``: a fault audit anyone can run.

It starts ezgraph worker processes on the chaos graph (or the configured graph, with
``--graph``), submits runs and strikes at them with one nemesis after another: SIGKILL a busy
worker, SIGSTOP one past its heartbeat, stall or crash-restart Redis (a private server the
audit starts; never the user's), lock the database's tables. Then it reports per nemesis:
runs, lost, stuck, failed, duplicated SQL rows, duplicate and missing side effects, and the
time until the work each fault held moved again.
"""

from .audit import CHAOS_GRAPH, Chaos
from .nemeses import NEMESES, Nemesis
from .report import ChaosReport, Tally

__all__ = ["CHAOS_GRAPH", "NEMESES", "Chaos", "ChaosReport", "Nemesis", "Tally"]
