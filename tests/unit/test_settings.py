"""Unit tests of settings: environment precedence and URL redaction."""

from __future__ import annotations

import importlib.metadata
from urllib.parse import quote

import pytest

import ezgraph
from ezgraph.errors import UsageError
from ezgraph.model.module_api import StepContext
from ezgraph.settings import Settings, redact_text, redact_url


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


# Each URL with its password, in letters that the rest of the URL does not hold.
NASTY_URLS = {
    "redis://:QX#ZJ@h:6379/0": "QX#ZJ",
    "redis://:QX?ZJ@h:6379/0": "QX?ZJ",
    "redis://:QX/ZJ@h:6379/0": "QX/ZJ",
    "redis://user:QX@ZJ@h:6379/0": "QX@ZJ",
    "redis://user:QX:ZJ@h:6379/0": "QX:ZJ",
    "redis://user:QX%40ZJ%2F%3A%25@h:6379/0": "QX@ZJ/:%",
    "rediss://user:QXZJ@h:6380/0?ssl_cert_reqs=required": "QXZJ",
    "unix:///tmp/r.sock?db=0&password=QXZJ": "QXZJ",
    "unix://:QXZJ@/tmp/r.sock?db=0": "QXZJ",
    "redis://h:6379/0?password=QX@ZJ&db=1": "QX@ZJ",
    "redis://h:6379/0?password=QX&ZJ&db=1": "QX&ZJ",
    "redis://:QXZJ@[::1]:6379/0": "QXZJ",
    "redis://:QXZJ@h:notaport/0": "QXZJ",
    "redis://u:QX?pwd=ZJ@h/0": "QX?pwd=ZJ",
    "postgresql+psycopg2://u:Q/X#Z?J@h:5432/db": "Q/X#Z?J",
    "postgresql://h/db?sslpassword=QXZJ": "QXZJ",
}


@pytest.mark.parametrize("url", list(NASTY_URLS))
def test_redact_url_shows_no_piece_of_the_password(url: str) -> None:
    password = NASTY_URLS[url]
    shown = redact_url(url)
    assert "***" in shown
    for form in (password, quote(password, safe="")):
        assert not any(form[i : i + 2] in shown for i in range(len(form) - 1)), shown


def test_redact_url_keeps_the_rest() -> None:
    assert redact_url("redis://:s@[::1]:6379/0?db=1") == "redis://:***@[::1]:6379/0?db=1"
    assert (
        redact_url("unix:///r.sock?db=0&password=s&x=1") == "unix:///r.sock?db=0&password=***&x=1"
    )
    assert redact_url("sqlite:////tmp/ezgraph.db") == "sqlite:////tmp/ezgraph.db"


def test_redact_text_hides_the_password_decoded_encoded_and_in_pieces() -> None:
    url = "redis://u:QX?ZJ%40K@h/0"
    text = "QX?ZJ@K, QX?ZJ%40K, QX%3FZJ%40K, value as 'QX'"
    assert redact_text(text, url) == "***, ***, ***, value as '***'"


def test_the_settings_repr_hides_the_passwords() -> None:
    settings = Settings(redis_url="redis://u:QX%40ZJ@h/0", database_url="postgresql://u:QXZJ@h/db")
    shown = repr(settings)
    assert "QX" not in shown
    assert "redis_url='redis://u:***@h/0'" in shown and "postgresql://u:***@h/db" in shown


def test_a_steps_context_repr_hides_the_database_url() -> None:
    context = StepContext("r", "n", None, 1, "postgresql://u:QXZJ@h/db")
    assert "QXZJ" not in repr(context)


def test_the_seeds_orchestration_url_is_where_runs_are_posted() -> None:
    url = "https://hooks.example.com/runs?token=s3cret"
    settings = Settings.from_env({"FLOW_ORCHESTRATION_URL": url})
    assert settings.notify_url == url
    assert "s3cret" not in repr(settings)
    assert Settings.from_env({}).notify_url is None
    with pytest.raises(UsageError, match="FLOW_ORCHESTRATION_URL must be an http"):
        Settings.from_env({"FLOW_ORCHESTRATION_URL": "ftp://user:pw@host/x"})


@pytest.mark.parametrize(
    ("raw", "mode"), [("", "off"), ("0", "off"), ("1", "on"), ("ON", "on"), ("console", "console")]
)
def test_tracing_is_off_unless_asked_for(raw: str, mode: str) -> None:
    assert Settings.from_env({"EZGRAPH_TRACING": raw}).tracing == mode


def test_a_bad_tracing_mode_names_the_choices() -> None:
    with pytest.raises(UsageError, match="EZGRAPH_TRACING must be one of off, on, console"):
        Settings.from_env({"EZGRAPH_TRACING": "jaeger"})
