"""What a payload or a step's output may be: a JSON object of bounded size."""

from __future__ import annotations

import json
from typing import Any

from ..errors import PayloadError


def to_json(value: Any, what: str, limit: int | None = None) -> str:
    """``value`` as compact JSON, refusing what JSON cannot hold (NaN, bytes that were not
    UTF-8, nesting too deep) and, with ``limit``, what exceeds that many bytes.

    Raises:
        PayloadError: naming ``what`` ("payload", "step 'a': output").
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode()) if limit is not None else 0  # a lone surrogate fails here
    except (TypeError, ValueError, RecursionError) as error:
        raise PayloadError(f"{what} is not JSON-serializable: {error}") from None
    if limit is not None and size > limit:
        raise PayloadError(
            f"{what} is {size} bytes, over the {limit}-byte limit (EZGRAPH_MAX_PAYLOAD)"
        )
    return text


def to_json_or_repr(value: Any) -> str:
    """``value`` as JSON, or its repr as a JSON string (to keep what a failed step received)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(repr(value))
