"""Join the planner's and the history's outputs into one sentence saying what will be computed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ezgraph import current_step
from ezgraph.errors import StepError

# entity -> (article, noun) in Portuguese; the article agrees with the noun's gender.
PORTUGUESE_ENTITIES = {
    "orders": ("os", "pedidos"),
    "customers": ("os", "clientes"),
    "products": ("os", "produtos"),
    "sales": ("as", "vendas"),
    "users": ("os", "usuários"),
}
PORTUGUESE_PERIODS = {
    "today": "de hoje",
    "yesterday": "de ontem",
    "this_week": "desta semana",
    "last_week": "da semana passada",
    "this_month": "deste mês",
    "last_month": "do mês passado",
    "this_year": "deste ano",
    "last_year": "do ano passado",
}
ENGLISH_PERIODS = {
    "today": "today's",
    "yesterday": "yesterday's",
    "this_week": "this week's",
    "last_week": "last week's",
    "this_month": "this month's",
    "last_month": "last month's",
    "this_year": "this year's",
    "last_year": "last year's",
}
_LAST_DAYS = re.compile(r"last_([0-9]+)_days")


def process(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"answer": sentence, "status": "answered"}`` in the question's language."""
    state = _merged_state(data)
    plan = state.get("plan") or {}
    action = _action(plan, state.get("intent"))
    entity = plan.get("table") or state.get("entity")
    if entity is None:
        raise ValueError("answer needs an entity: run it after 'planner' or pass 'entity'")
    if not isinstance(entity, str):
        raise TypeError(f"'entity' must be a string, got {type(entity).__name__}")
    period = plan.get("period", state.get("period"))
    sql = plan.get("sql")
    preferences = state.get("preferences") or {}
    # On a first question the favourite is just this question's entity: not worth saying.
    favorite = preferences.get("favorite_entity") if state.get("history") else None

    if state.get("language") == "pt":
        sentence = _portuguese(action, entity, period, sql, favorite)
    else:
        sentence = _english(action, entity, period, sql, favorite)
    return {"answer": sentence, "status": "answered"}


def _merged_state(data: dict[str, Any]) -> dict[str, Any]:
    try:
        outputs: Mapping[str, Any] = current_step().outputs
    except StepError:
        return data
    state = dict(data)
    # The join's own record of each predecessor wins over whatever the merge left in ``data``.
    for output in outputs.values():
        if isinstance(output, Mapping):
            state.update(output)
    return state


def _action(plan: Mapping[str, Any], intent: object) -> str:
    if intent == "compare":
        return "compare"
    if plan:
        # The plan may have turned a sum into a count (nothing to add up), so it decides.
        aggregate = plan.get("aggregate")
        return aggregate if isinstance(aggregate, str) else "list"
    if intent in ("count", "sum", "list"):
        return str(intent)
    raise ValueError(f"answer cannot describe intent {intent!r} without a plan")


def _portuguese(action: str, entity: str, period: object, sql: object, favorite: object) -> str:
    article, noun = PORTUGUESE_ENTITIES.get(entity, ("os", entity))
    what = f"{article} {noun}"
    when = _portuguese_period(period)
    if action == "count":
        sentence = f"Vou contar {what}{when}"
    elif action == "sum":
        sentence = f"Vou somar o valor d{what}{when}"
    elif action == "compare":
        sentence = f"Vou comparar {what}{when} com o período anterior"
    else:
        sentence = f"Vou listar {what}{when}"
    sentence += f" ({sql})." if sql else "."
    if isinstance(favorite, str):
        _, favorite_noun = PORTUGUESE_ENTITIES.get(favorite, ("os", favorite))
        sentence += f" Você costuma perguntar sobre {favorite_noun}."
    return sentence


def _english(action: str, entity: str, period: object, sql: object, favorite: object) -> str:
    what = _english_subject(entity, period)
    if action == "count":
        sentence = f"I will count {what}"
    elif action == "sum":
        sentence = f"I will add up the value of {what}"
    elif action == "compare":
        sentence = f"I will compare {what} with the previous period"
    else:
        sentence = f"I will list {what}"
    sentence += f" ({sql})." if sql else "."
    if isinstance(favorite, str):
        sentence += f" You often ask about {favorite}."
    return sentence


def _portuguese_period(period: object) -> str:
    if not isinstance(period, str):
        return ""
    days = _LAST_DAYS.fullmatch(period)
    if days is not None:
        count = int(days.group(1))
        return " do último dia" if count == 1 else f" dos últimos {count} dias"
    return f" {PORTUGUESE_PERIODS.get(period, period)}"


def _english_subject(entity: str, period: object) -> str:
    if not isinstance(period, str):
        return f"all {entity}"
    days = _LAST_DAYS.fullmatch(period)
    if days is not None:
        count = int(days.group(1))
        return f"the {entity} from the last " + ("day" if count == 1 else f"{count} days")
    if period in ENGLISH_PERIODS:
        return f"{ENGLISH_PERIODS[period]} {entity}"
    return f"the {entity} for {period}"
