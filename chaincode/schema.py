"""Strict shapes of the values the contract reads and stores.

These mirror the pydantic records in ``ledger/records.py`` field for field (names,
types, defaults), so that a value stored here parses with ``Record.parse`` and
re-serialises to the same canonical bytes. They are stricter where the contract must
be: unknown fields, wrong types (``true`` is not an integer) and out-of-range numbers
are refused with ``INVALID``. Round entries are held to exactly the records' limits and no
tighter, since a rejected entry carries whatever a participant sent: a tighter limit here
would let one participant make a whole round's record fail. Validation returns a new dict with every default filled in,
which is what gets stored.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from chaincode.errors import Invalid

__all__ = [
    "ID_RE",
    "HEX64_RE",
    "MSP_RE",
    "MAX_AMOUNT",
    "MAX_ROUND",
    "REASONS",
    "SCORER",
    "POLICY",
    "TRAINING",
    "PRIVACY",
    "policy_training",
    "ENTRY",
    "RECORD",
    "COMMIT",
    "EVALUATION_REASONS",
    "EVALUATION_ENTRY",
    "EVALUATION",
    "PPM",
    "MAX_LOG_LOSS_PPM",
    "META",
    "REWARDS",
    "parse_round",
    "parse_amount",
    "check_id",
    "check_msp",
]

ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
MSP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Token amounts and balances are signed-64-bit safe, like Fabric's own token samples.
MAX_AMOUNT = 2**63 - 1
# Rounds are zero-padded to 8 digits in state keys, so they sort in round order.
MAX_ROUND = 99_999_999
_ROUND_ARG = re.compile(r"[1-9][0-9]{0,7}")
_AMOUNT_ARG = re.compile(r"[1-9][0-9]{0,18}")

# Copy of ledger.records.REASONS (a test keeps them equal): stable rejection reasons.
REASONS: tuple[str, ...] = (
    "no_reply",
    "reply_error",
    "malformed",
    "examples_over_declared",
    "wrong_federation",
    "wrong_round",
    "wrong_base_model",
    "unknown_participant",
    "not_admitted",
    "revoked",
    "cert_expired",
    "node_mismatch",
    "digest_mismatch",
    "bad_signature",
    "high_s",
    "duplicate",
    "training_mismatch",
    "bad_privacy_claim",
    "privacy_budget_exceeded",
    "bad_compression",
    "non_finite",
    "wrong_shape",
    "no_training",
    "copied_update",
    "outlier",
    "robust_discarded",
)

# Copy of ledger.records.EVALUATION_REASONS (a test keeps them equal).
EVALUATION_REASONS: tuple[str, ...] = (
    "no_reply",
    "reply_error",
    "malformed",
    "wrong_federation",
    "wrong_round",
    "wrong_model",
    "unknown_participant",
    "not_admitted",
    "revoked",
    "cert_expired",
    "node_mismatch",
    "bad_signature",
    "high_s",
    "duplicate",
)
# Evaluation metrics are integers in millionths (ledger.formats.PPM, MAX_LOG_LOSS_PPM).
PPM = 1_000_000
MAX_LOG_LOSS_PPM = 100 * PPM

Check = Callable[[Any, str], Any]
_REQUIRED = object()


def parse_round(text: str) -> int:
    """A round argument: a decimal integer 1..99999999 with no sign, spaces or leading zero."""
    if not isinstance(text, str) or _ROUND_ARG.fullmatch(text) is None:
        raise Invalid(f"round {text!r} must be an integer from 1 to {MAX_ROUND}")
    return int(text)


def parse_amount(text: str) -> int:
    """A token amount argument: a positive decimal integer no larger than MAX_AMOUNT."""
    if not isinstance(text, str) or _AMOUNT_ARG.fullmatch(text) is None or int(text) > MAX_AMOUNT:
        raise Invalid(f"amount {text!r} must be an integer from 1 to {MAX_AMOUNT}")
    return int(text)


def check_id(value: Any, what: str) -> str:
    """A federation or participant id (DESIGN §3)."""
    if not isinstance(value, str) or ID_RE.fullmatch(value) is None:
        raise Invalid(f"{what} {value!r} must match [a-z0-9][a-z0-9-]{{0,63}}")
    return value


def check_msp(value: Any, what: str) -> str:
    """An MSP id argument (``MSP_RE``), before it goes into a state key."""
    if not isinstance(value, str) or MSP_RE.fullmatch(value) is None:
        raise Invalid(f"{what} {value!r} must match {MSP_RE.pattern}")
    return value


# --- checks ---------------------------------------------------------------------------


def text(*, max_len: int | None = None, min_len: int = 0, pattern: re.Pattern[str] | None = None) -> Check:
    def check(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise Invalid(f"{where} must be a string")
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            raise Invalid(f"{where} must be {min_len} to {max_len} characters long")
        if pattern is not None and pattern.fullmatch(value) is None:
            raise Invalid(f"{where} {value!r} does not match {pattern.pattern}")
        return value

    return check


def integer(*, lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any, where: str) -> int:
        if type(value) is not int:  # bool is an int subclass and is refused
            raise Invalid(f"{where} must be an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(f"{where} must be between {lo} and {hi}")
        return value

    return check


def optional(inner: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)

    return check


def one_of(*allowed: str) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in allowed or not isinstance(value, str):
            raise Invalid(f"{where} must be one of {list(allowed)}, not {value!r}")
        return value

    return check


def any_json(value: Any, where: str) -> Any:
    """Any JSON value (already parsed strictly), copied."""
    return copy.deepcopy(value)


def list_of(inner: Check, *, max_items: int = 10_000, unique: bool = False) -> Check:
    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid(f"{where} must be a list")
        if len(value) > max_items:
            raise Invalid(f"{where} has more than {max_items} items")
        items = [inner(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if unique and len(set(items)) != len(items):
            raise Invalid(f"{where} has duplicate items")
        return items

    return check


def dict_of(key: Check, inner: Check, *, max_items: int = 10_000) -> Check:
    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid(f"{where} must be a JSON object")
        if len(value) > max_items:
            raise Invalid(f"{where} has more than {max_items} entries")
        return {key(k, f"{where} key"): inner(v, f"{where}[{k!r}]") for k, v in value.items()}

    return check


def obj(name: str, fields: dict[str, tuple[Check, Any]]) -> Check:
    """A JSON object with exactly these fields; defaults (values or factories) fill gaps."""

    def check(value: Any, where: str) -> dict[str, Any]:
        where = where or name
        if not isinstance(value, dict):
            raise Invalid(f"{where} must be a JSON object")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise Invalid(f"{where} has unknown fields {unknown}")
        result: dict[str, Any] = {}
        for field, (inner, default) in fields.items():
            if field in value:
                result[field] = inner(value[field], f"{where}.{field}")
            elif default is _REQUIRED:
                raise Invalid(f"{where}.{field} is required")
            else:
                result[field] = default() if callable(default) else copy.deepcopy(default)
        return result

    return check


# --- shapes (mirror ledger/records.py) ---------------------------------------------------

_hex64 = text(max_len=64, pattern=HEX64_RE)
_pid = text(max_len=64, pattern=ID_RE)

SCORER = obj(
    "scorer",
    {
        "name": (text(min_len=1, max_len=64), "cosine"),
        "params": (dict_of(text(max_len=128), any_json, max_items=256), dict),
        "seed": (integer(), 0),
        "validation_digest": (optional(text(max_len=256)), None),
    },
)

PRIVACY = obj(
    "dp",
    {
        "epsilon_round_ppm": (integer(lo=1, hi=10**12), _REQUIRED),
        "epsilon_total_ppm": (integer(lo=1, hi=10**15), _REQUIRED),
        "delta_ppb": (integer(lo=1, hi=10**9 - 1), _REQUIRED),
        "max_grad_norm_ppm": (integer(lo=1, hi=10**12), _REQUIRED),
    },
)

TRAINING = obj(
    "training",
    {
        "algorithm": (one_of("fedavg", "fedprox"), "fedavg"),
        "mu_ppm": (integer(lo=0, hi=10**12), 0),
        "compression": (one_of("none", "int8"), "none"),
        "dp": (optional(PRIVACY), None),
    },
)

def policy_training(policy: dict[str, Any]) -> dict[str, Any]:
    """A stored policy's training rule; a policy stored before training claims existed has
    none and means plain FedAvg, uncompressed, without DP (what ``TRAINING`` defaults to)."""
    return TRAINING(policy.get("training") or {}, "policy.training")


POLICY = obj(
    "policy",
    {
        "auditor_msps": (list_of(text(max_len=128, pattern=MSP_RE), max_items=64, unique=True), list),
        "reward_budget": (integer(lo=0, hi=MAX_AMOUNT), 1000),
        "max_num_examples": (integer(lo=1, hi=MAX_AMOUNT), 1_000_000),
        "scorer": (SCORER, lambda: SCORER({}, "policy.scorer")),
        "aggregation": (text(min_len=1, max_len=64), "fedavg"),
        "aggregation_params": (dict_of(text(min_len=1, max_len=64), integer(), max_items=16), dict),
        "training": (TRAINING, lambda: TRAINING({}, "policy.training")),
        "data_schema_digest": (optional(text(max_len=256)), None),
        "model": (text(max_len=256), ""),
        "validation_digest": (optional(text(max_len=256)), None),
        "eval_fraction_ppm": (integer(lo=0, hi=900_000), 200_000),
        "max_weight_share_ppm": (integer(lo=1, hi=PPM), PPM),
        "outlier_norm_ratio_ppm": (integer(lo=PPM + 1, hi=1_000 * PPM), 10 * PPM),
        "outlier_weight_ratio_ppm": (integer(lo=PPM + 1, hi=1_000_000 * PPM), 10 * PPM),
        "no_training_ppm": (optional(integer(lo=0, hi=PPM)), None),
        "copy_cosine_ppm": (optional(integer(lo=1, hi=PPM)), None),
    },
)

ENTRY = obj(
    "entry",
    {
        "participant": (text(max_len=128), _REQUIRED),
        "status": (one_of("accepted", "rejected"), _REQUIRED),
        "reason": (optional(one_of(*REASONS)), None),
        "detail": (optional(text(max_len=512)), None),
        "node": (optional(text(max_len=64)), None),
        "manifest": (optional(text(max_len=1024)), None),
        "manifest_hash": (optional(_hex64), None),
        "signature": (optional(text(max_len=96)), None),
        "update": (optional(_hex64), None),
        "num_examples": (optional(integer(lo=0)), None),
        "score_ppm": (optional(integer(lo=-1_000_000, hi=1_000_000)), None),
        "epsilon_ppm": (optional(integer()), None),
    },
)

RECORD = obj(
    "record",
    {
        "round": (integer(lo=1, hi=MAX_ROUND), _REQUIRED),
        "base_model": (_hex64, _REQUIRED),
        "scorer": (SCORER, _REQUIRED),
        "entries": (list_of(ENTRY, max_items=100_000), _REQUIRED),
    },
)

COMMIT = obj(
    "commit",
    {
        "round": (integer(lo=1, hi=MAX_ROUND), _REQUIRED),
        "base_model": (_hex64, _REQUIRED),
        "model": (_hex64, _REQUIRED),
        "accepted": (list_of(_pid, unique=True), _REQUIRED),
        "weights": (dict_of(_pid, integer(lo=0)), _REQUIRED),
        "aggregation": (text(min_len=1, max_len=64), "fedavg"),
    },
)

EVALUATION_ENTRY = obj(
    "entry",
    {
        "participant": (text(max_len=128), _REQUIRED),
        "status": (one_of("accepted", "rejected"), _REQUIRED),
        "reason": (optional(one_of(*EVALUATION_REASONS)), None),
        "detail": (optional(text(max_len=512)), None),
        "node": (optional(text(max_len=64)), None),
        "manifest": (optional(text(max_len=1024)), None),
        "manifest_hash": (optional(_hex64), None),
        "signature": (optional(text(max_len=96)), None),
        "num_examples": (optional(integer(lo=0)), None),
        "accuracy_ppm": (optional(integer(lo=0, hi=PPM)), None),
        "auc_ppm": (optional(integer(lo=0, hi=PPM)), None),
        "log_loss_ppm": (optional(integer(lo=0, hi=MAX_LOG_LOSS_PPM)), None),
    },
)

EVALUATION = obj(
    "evaluation",
    {
        "round": (integer(lo=1, hi=MAX_ROUND), _REQUIRED),
        "model": (_hex64, _REQUIRED),
        "entries": (list_of(EVALUATION_ENTRY, max_items=100_000), _REQUIRED),
    },
)

META = dict_of(text(max_len=128), any_json, max_items=64)
REWARDS = dict_of(_pid, integer(lo=0, hi=MAX_AMOUNT))
