"""Validate a question and classify it: language, intent, entity and period, by keyword rules.

Malformed input (no question, an over-long one, no username) raises ``ValueError`` so the step
fails; a well-formed question the rules cannot classify is routed to ``reject`` instead, when
the graph has that node. It routes among the successors the graph gives it, so the seed's
two-node graph (``intent_validator -> history_preferences``) runs it too.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from ezgraph import Route, StepError, current_step

MAX_QUESTION_CHARS = 500

# Matched against the folded text (lower case, no accents, punctuation turned into spaces).
# Order matters: the first intent that matches wins, so the more specific ones come first
# ("compare how many orders..." compares; "how many orders in total" counts).
INTENT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "compare",
        re.compile(
            r"\b(compar\w*|versus|vs|em relacao a[o]?|diferenca entre|difference between)\b"
        ),
    ),
    (
        "count",
        re.compile(
            r"\b(quant[oa]s|quantidade de|numero de|contar|conte|"
            r"how many|number of|count)\b"
        ),
    ),
    (
        "sum",
        re.compile(
            r"\b(total|soma|somar|faturamento|receita|quanto|"
            r"sum|revenue|how much)\b"
        ),
    ),
    (
        "list",
        re.compile(
            r"\b(listar|liste|lista|mostre|mostrar|exiba|exibir|quais|"
            r"list|show|display|which|what are)\b"
        ),
    ),
)

ENTITY_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("orders", re.compile(r"\b(pedidos?|encomendas?|orders?)\b")),
    ("customers", re.compile(r"\b(clientes?|customers?|clients?)\b")),
    ("products", re.compile(r"\b(produtos?|products?)\b")),
    ("sales", re.compile(r"\b(vendas?|vend(emos|eu|eram|idos?|idas?)|sales?|sold|sell)\b")),
    ("users", re.compile(r"\b(usuarios?|users?)\b")),
)

# Money words name no table, but "what was the revenue" can only be about sales.
REVENUE_WORDS = re.compile(r"\b(faturamento|receita|revenue)\b")

LAST_DAYS = re.compile(r"\b(?:ultim[oa]s?|last|past)\s+(\d{1,4})\s+(?:dias?|days?)\b")
PERIOD_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("today", re.compile(r"\b(hoje|today)\b")),
    ("yesterday", re.compile(r"\b(ontem|yesterday)\b")),
    ("last_week", re.compile(r"\b(semana passada|ultima semana|last week|past week)\b")),
    ("this_week", re.compile(r"\b([nd]?(est|ess)a semana|this week)\b")),
    ("last_month", re.compile(r"\b(mes passado|ultimo mes|last month|past month)\b")),
    ("this_month", re.compile(r"\b([nd]?(est|ess)e mes|this month)\b")),
    ("last_year", re.compile(r"\b(ano passado|ultimo ano|last year|past year)\b")),
    ("this_year", re.compile(r"\b([nd]?(est|ess)e ano|this year)\b")),
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that occur in questions of one language and rarely in the other. A question is scored
# by how many of its words fall in each set.
PORTUGUESE_WORDS = _words(
    "o os as de do da dos das no na nos nas em um uma que qual quais quanto quantos quantas "
    "quantidade numero foram foi temos tem ha por para com e sao meu minha mostre liste "
    "listar exiba mostrar contar soma somar faturamento receita comparar entre pedido "
    "pedidos cliente clientes produto produtos venda vendas usuario usuarios hoje ontem "
    "semana mes ano ultimo ultima ultimos ultimas dias passado passada este esta esse essa "
    "neste nesta"
)
ENGLISH_WORDS = _words(
    "the of in on at for by to from how many much what which who is are was were did does we "
    "our my have has show list display count sum number revenue compare between order orders "
    "customer customers product products sale sales user users today yesterday week month "
    "year last past this days"
)
# Portuguese spells with these; English questions almost never contain them.
PORTUGUESE_LETTERS = frozenset("ãõçáéíóúâêôà")


def process(data: dict[str, Any]) -> Route:
    """Validate and classify the question, then route it to planning or to ``reject``."""
    raw_question, key = _question(data)
    _require_username(data)
    projeto = data.get("projeto")
    if projeto is not None and not isinstance(projeto, str):
        raise TypeError(f"'projeto' must be a string when given, got {type(projeto).__name__}")

    question = normalize(raw_question)
    folded = fold(question)
    output: dict[str, Any] = {
        "question": question,
        "language": detect_language(question, default="pt" if key == "pergunta" else "en"),
        "intent": classify_intent(folded),
        "entity": classify_entity(folded),
        "period": classify_period(folded),
    }
    output["valid"] = output["intent"] != "unknown" and output["entity"] is not None
    # Route by what this graph holds: a question not understood goes to `reject` when there
    # is one (the seed's two-node graph has none: it goes on, marked not valid).
    successors = _successors()
    if output["valid"]:
        return Route([s for s in successors if s != "reject"], output)
    output["reason"] = _rejection_reason(output)
    return Route(["reject"] if "reject" in successors else successors, output)


def _successors() -> tuple[str, ...]:
    """This node's successors in the graph it runs in (the example graph's outside a step)."""
    try:
        return current_step().successors
    except StepError:
        return ("reject", "history_preferences", "planner")


def normalize(text: str) -> str:
    """Return ``text`` in NFC with runs of whitespace collapsed to one space and no edges."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def fold(text: str) -> str:
    """Return ``text`` lower-cased, without accents, with punctuation replaced by spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(re.sub(r"[^a-z0-9]+", " ", bare).split())


def detect_language(question: str, default: str = "pt") -> str:
    """Return ``"pt"`` or ``"en"``: the vocabulary the question uses more, else ``default``."""
    words = fold(question).split()
    portuguese = sum(word in PORTUGUESE_WORDS for word in words)
    english = sum(word in ENGLISH_WORDS for word in words)
    # Accents are a strong hint but not a verdict: an English question may name "José".
    if any(char in PORTUGUESE_LETTERS for char in question.casefold()):
        portuguese += 2
    if portuguese == english:
        return default
    return "pt" if portuguese > english else "en"


def classify_intent(folded: str) -> str:
    """Return ``count``, ``sum``, ``list``, ``compare`` or ``unknown`` for a folded question."""
    for intent, pattern in INTENT_RULES:
        if pattern.search(folded):
            return intent
    return "unknown"


def classify_entity(folded: str) -> str | None:
    """Return the entity named first in a folded question, or ``None`` when it names none."""
    found = [
        (match.start(), entity)
        for entity, pattern in ENTITY_RULES
        if (match := pattern.search(folded)) is not None
    ]
    if found:
        return min(found)[1]
    return "sales" if REVENUE_WORDS.search(folded) else None


def classify_period(folded: str) -> str | None:
    """Return the normalized period a folded question mentions first, or ``None``."""
    found = [
        (match.start(), period)
        for period, pattern in PERIOD_RULES
        if (match := pattern.search(folded)) is not None
    ]
    days = LAST_DAYS.search(folded)
    if days is not None and int(days.group(1)) > 0:
        found.append((days.start(), f"last_{int(days.group(1))}_days"))
    # "compare this month with last month" is about this month: the first mention leads.
    return min(found)[1] if found else None


def _question(data: dict[str, Any]) -> tuple[str, str]:
    key = "pergunta" if data.get("pergunta") is not None else "question"
    question = data.get(key)
    if question is None:
        raise ValueError("missing question: send it as 'pergunta' or 'question'")
    if not isinstance(question, str):
        raise TypeError(f"'{key}' must be a string, got {type(question).__name__}")
    length = len(normalize(question))
    if length == 0:
        raise ValueError(f"'{key}' is empty")
    if length > MAX_QUESTION_CHARS:
        raise ValueError(f"'{key}' has {length} characters; the limit is {MAX_QUESTION_CHARS}")
    return question, key


def _require_username(data: dict[str, Any]) -> None:
    username = data.get("username")
    if not isinstance(username, str) or not username.strip():
        raise ValueError("missing username: 'username' must be a non-empty string")


def _rejection_reason(output: dict[str, Any]) -> str:
    missing = []
    if output["intent"] == "unknown":
        missing.append("what to compute (count, sum, list or compare)")
    if output["entity"] is None:
        missing.append("what it is about (orders, customers, products, sales or users)")
    return "could not tell " + " nor ".join(missing)
