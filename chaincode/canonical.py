"""Canonical JSON for contract state, and a strict JSON reader for transaction arguments.

Canonical JSON is DESIGN §3's: keys sorted, ``,``/``:`` separators, UTF-8 as-is, no
NaN/Infinity. It is re-implemented here (not imported from ``ledger``) because nothing in
``chaincode/`` may import ``ledger`` or ``fl``; a unit test keeps the two byte-identical.
"""

from __future__ import annotations

import json
import math
from typing import Any

from chaincode.errors import Invalid

__all__ = ["MAX_ARG_BYTES", "canonical_json", "canonical_bytes", "parse_json"]

# Largest JSON argument accepted (a round with thousands of signed entries fits easily).
MAX_ARG_BYTES = 8 * 1024 * 1024


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of ``obj``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(obj: Any) -> bytes:
    """Canonical JSON of ``obj`` as UTF-8 bytes (what is stored)."""
    return canonical_json(obj).encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(text: str | bytes, what: str) -> Any:
    """Parse a JSON argument strictly: no NaN/Infinity, no duplicate keys, bounded size."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(f"{what} is not UTF-8") from exc
    if not isinstance(text, str):
        raise Invalid(f"{what} must be a JSON string")
    if len(text) > MAX_ARG_BYTES:
        raise Invalid(f"{what} is larger than {MAX_ARG_BYTES} bytes")
    try:
        return json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError) as exc:
        raise Invalid(f"{what} is not valid JSON: {exc}") from exc
