"""Record the question in the user's history and return their recent history and preferences.

The write happens once per step even when the step runs again: the history row carries the
step's idempotency key under a UNIQUE constraint, and the preferences update shares its
transaction, so a duplicate key rolls both back together.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, String, Text, create_engine, func, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ezgraph import StepContext, current_step
from ezgraph.errors import StepError

DEFAULT_DATABASE_URL = "sqlite:///ezgraph.db"
HISTORY_LIMIT = 5
NAME_MAX_CHARS = 255
# Two steps of different runs may create the same new user's preferences row at once; the
# loser's transaction fails on the primary key and is simply tried again.
WRITE_ATTEMPTS = 3


class ExampleBase(DeclarativeBase):
    """Declarative base of the example tables, kept apart from ezgraph's own metadata."""


class UserHistory(ExampleBase):
    """One question a user asked; ``idempotency_key`` makes each step write at most one."""

    __tablename__ = "example_user_history"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), index=True)
    projeto: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    question: Mapped[str] = mapped_column(Text)
    intent: Mapped[str | None] = mapped_column(String(32))
    entity: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), unique=True)


class UserPreferences(ExampleBase):
    """What we know about a user, updated with each question they ask."""

    __tablename__ = "example_user_preferences"

    username: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), primary_key=True)
    language: Mapped[str | None] = mapped_column(String(8))
    favorite_entity: Mapped[str | None] = mapped_column(String(32))
    questions_count: Mapped[int] = mapped_column(default=0)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def process(data: dict[str, Any]) -> dict[str, Any]:
    """Record this question once, then return the user's previous questions and preferences."""
    username = _required_name(data, "username")
    question = data.get("question", data.get("pergunta"))
    if not isinstance(question, str) or not question:
        raise ValueError("missing question: 'question' must be a non-empty string")
    projeto = data.get("projeto")
    if projeto is not None:
        projeto = _required_name(data, "projeto")

    step = _running_step()
    url = step.database_url if step else os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    key = step.idempotency_key if step else _input_key(data)
    fields = {
        "username": username,
        "projeto": projeto,
        "question": question,
        "intent": data.get("intent"),
        "entity": data.get("entity"),
        "created_at": datetime.now(UTC),
        "idempotency_key": key,
    }
    with Session(get_engine(url)) as session:
        _record_once(session, fields, data.get("language"))
        return _summary(session, username, key)


def get_engine(url: str) -> Engine:
    """Return the engine for ``url``, creating it and the example tables on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url)
            _create_tables(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close and forget every cached engine (for tests and shutdown)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _forget_inherited_connections() -> None:
    # A forked child (RQ's work-horse) must not share the parent's pooled connections, nor
    # inherit a lock some other parent thread held at the instant of the fork.
    global _engines_lock
    _engines_lock = threading.Lock()
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def _create_tables(engine: Engine) -> None:
    try:
        ExampleBase.metadata.create_all(engine)
    except (IntegrityError, OperationalError, ProgrammingError):
        # Another worker process created the tables between our existence check and our
        # CREATE TABLE; the second pass finds them and does nothing.
        ExampleBase.metadata.create_all(engine)


def _record_once(session: Session, fields: dict[str, Any], language: str | None) -> None:
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with session.begin():
                # A fresh object each attempt: the rollback leaves the last one unusable.
                entry = UserHistory(**fields)
                session.add(entry)
                session.flush()
                _update_preferences(session, entry, language)
            return
        except IntegrityError:
            if _already_recorded(session, fields["idempotency_key"]):
                return
            if attempt == WRITE_ATTEMPTS:
                raise


def _update_preferences(session: Session, entry: UserHistory, language: str | None) -> None:
    # Lock first, so the favourite below counts every history row committed before ours.
    preferences = session.get(UserPreferences, entry.username, with_for_update=True)
    favorite = session.execute(
        select(UserHistory.entity)
        .where(UserHistory.username == entry.username, UserHistory.entity.is_not(None))
        .group_by(UserHistory.entity)
        # Ties go to the entity asked about most recently.
        .order_by(func.count().desc(), func.max(UserHistory.id).desc())
        .limit(1)
    ).scalar_one_or_none()
    if preferences is None:
        session.add(
            UserPreferences(
                username=entry.username,
                language=language,
                favorite_entity=favorite,
                questions_count=1,
            )
        )
    else:
        preferences.questions_count += 1
        preferences.favorite_entity = favorite
        if language is not None:
            preferences.language = language
    session.flush()


def _already_recorded(session: Session, key: str) -> bool:
    with session.begin():
        found = session.execute(
            select(UserHistory.id).where(UserHistory.idempotency_key == key)
        ).first()
    return found is not None


def _summary(session: Session, username: str, key: str) -> dict[str, Any]:
    with session.begin():
        own_id = session.execute(
            select(UserHistory.id).where(UserHistory.idempotency_key == key)
        ).scalar_one()
        # "Previous" means written before this step's row, so a re-run returns the same list.
        rows = session.scalars(
            select(UserHistory)
            .where(UserHistory.username == username, UserHistory.id < own_id)
            .order_by(UserHistory.id.desc())
            .limit(HISTORY_LIMIT)
        ).all()
        preferences = session.get(UserPreferences, username)
    return {
        "history": [
            {
                "question": row.question,
                "intent": row.intent,
                "entity": row.entity,
                "created_at": _as_utc(row.created_at).isoformat(),
            }
            for row in rows
        ],
        "preferences": {
            "language": preferences.language if preferences else None,
            "favorite_entity": preferences.favorite_entity if preferences else None,
            "questions_count": preferences.questions_count if preferences else 0,
        },
    }


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; we stored UTC.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _running_step() -> StepContext | None:
    try:
        return current_step()
    except StepError:
        return None


def _input_key(data: dict[str, Any]) -> str:
    # Outside a step there is no run to name the write after: the same input is the same write.
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return f"local:{digest}"


def _required_name(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"missing {field}: {field!r} must be a non-empty string")
    if len(value) > NAME_MAX_CHARS:
        raise ValueError(f"{field!r} has {len(value)} characters; the limit is {NAME_MAX_CHARS}")
    return value
