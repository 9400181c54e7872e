"""Modules that try to take their worker down, each alone before a plain step."""

GRAPH_CONNECTIONS = {
    "exits": ["after"],
    "raises_exit": ["after"],
    "interrupts": ["after"],
    "forks": ["after"],
    "stubborn": ["after"],
    "holds": ["after"],
    "after": [],
}
MODULES = {
    "exits": "tests.steps:call_sys_exit",
    "raises_exit": "tests.steps:raise_system_exit",
    "interrupts": "tests.steps:raise_keyboard_interrupt",
    "forks": "tests.steps:fork_and_return",
    "stubborn": "tests.steps:ignore_the_timeout",
    "holds": "tests.steps:ignore_the_timeout",  # with the default timeout (600 s in its test)
    "after": "tests.steps:mark",
}
POLICIES = {"stubborn": {"timeout": 1}}
