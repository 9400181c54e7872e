"""The example graph: answer a business question asked in Portuguese or English.

A run starts at ``intent_validator`` with ``{"pergunta" (or "question"), "username",
"projeto"?}``; these are the seed's payload keys, so the seed's submissions run unchanged::

    intent_validator ──► reject                                  (question not understood)
          │
          ├──────────► history_preferences ──┐
          │                                  ├──► answer         (join of both branches)
          └──────────► planner ──────────────┘

``intent_validator`` raises on malformed input (the step fails), and routes a well-formed question
either to ``reject`` or to both ``history_preferences`` and ``planner``; ``answer`` then runs once,
after both, with their outputs merged into its state.
"""

from __future__ import annotations

GRAPH_CONNECTIONS = {
    "intent_validator": ["reject", "history_preferences", "planner"],
    "reject": [],
    "history_preferences": ["answer"],
    "planner": ["answer"],
    "answer": [],
}

# The successors each routing module may choose among with ``Route``; a node not listed here
# always sends its output to every successor in GRAPH_CONNECTIONS.
ROUTES = {
    "intent_validator": ["reject", "history_preferences", "planner"],
}
