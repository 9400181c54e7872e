"""Answer a question the validator could not classify with a polite "please rephrase"."""

from __future__ import annotations

from typing import Any

_MESSAGES = {
    "pt": {
        "intro": "Desculpe, não consegui entender a sua pergunta.",
        "intent": "Diga o que devo calcular: contar, somar, listar ou comparar.",
        "entity": "Diga sobre o que é: pedidos, clientes, produtos, vendas ou usuários.",
        "example": 'Por exemplo: "Quantos pedidos tivemos hoje?"',
    },
    "en": {
        "intro": "Sorry, I could not understand your question.",
        "intent": "Tell me what to compute: count, sum, list or compare.",
        "entity": "Tell me what it is about: orders, customers, products, sales or users.",
        "example": 'For example: "How many orders did we get today?"',
    },
}


def process(data: dict[str, Any]) -> dict[str, Any]:
    """Return a rejection message in the question's language, saying what was missing."""
    language = data.get("language")
    messages = _MESSAGES[language if language in _MESSAGES else "en"]
    parts = [messages["intro"]]
    if data.get("intent") == "unknown":
        parts.append(messages["intent"])
    if "entity" in data and data["entity"] is None:
        parts.append(messages["entity"])
    parts.append(messages["example"])
    return {"answer": " ".join(parts), "status": "rejected"}
