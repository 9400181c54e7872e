"""Unit tests of settings: environment precedence and URL redaction."""

from __future__ import annotations

import importlib.metadata

import pytest

import ezgraph
from ezgraph.errors import UsageError
from ezgraph.settings import Settings, redact_url


def test_nothing_configured_means_embedded_sqlite_and_modules() -> None:
    settings = Settings.from_env({})
    assert settings.embedded
    assert settings.database_url == "sqlite:///ezgraph.db"
    assert settings.modules_package is None


def test_seed_redis_host_port_db_password_build_a_url() -> None:
    env = {
        "REDIS_HOST": "10.0.0.5",
        "REDIS_PORT": "6380",
        "REDIS_DB": "3",
        "REDIS_PASSWORD": "p@ss",
    }
    assert Settings.from_env(env).redis_url == "redis://:p%40ss@10.0.0.5:6380/3"


def test_redis_url_wins_over_host_and_flags_win_over_env() -> None:
    env = {"REDIS_URL": "redis://a:1/2", "REDIS_HOST": "b", "EZGRAPH_MODULES": "x"}
    assert Settings.from_env(env).redis_url == "redis://a:1/2"
    assert Settings.from_env(env, modules_package="y").modules_package == "y"


def test_bad_integer_variable_names_itself() -> None:
    with pytest.raises(UsageError, match="EZGRAPH_JOB_TIMEOUT must be an integer"):
        Settings.from_env({"EZGRAPH_JOB_TIMEOUT": "soon"})


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("postgresql://pg@h/db") == "postgresql://pg@h/db"


def test_the_version_is_the_installed_distributions() -> None:
    assert ezgraph.__version__ == importlib.metadata.version("ezgraph")
