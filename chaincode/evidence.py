"""Checks on an *accepted* round entry: its signed manifest must back what is recorded.

The coordinator verified each accepted update before recording it (DESIGN §4); the
contract verifies again, so a coordinator cannot record an update that the participant
never signed. The manifest must be canonical JSON (DESIGN §3) naming this federation,
round, base model, participant, update digest and example count; its SHA-256 must be the
entry's ``manifest_hash``; its signature (DER, low-S, base64) must verify with the
participant's registered P-256 certificate.
"""

from __future__ import annotations

import hashlib
from typing import Any

from chaincode.canonical import canonical_json, parse_json
from chaincode.certs import P256_ORDER, verify_p256_signature
from chaincode.errors import ContractError, Invalid

__all__ = ["P256_ORDER", "check_accepted_entry"]

_MANIFEST_FIELDS = {"base_model", "federation", "num_examples", "participant", "round", "update", "v"}


def check_accepted_entry(
    entry: dict[str, Any],
    federation: str,
    round_no: int,
    base_model: str,
    cert_pem: str,
    max_num_examples: int,
) -> None:
    """Raise ``INVALID`` unless the accepted ``entry`` is backed by a valid signed manifest."""
    who = f"accepted entry of {entry['participant']}"
    if entry["reason"] is not None:
        raise Invalid(f"{who} must not carry a rejection reason")
    for field in ("manifest", "manifest_hash", "signature", "update", "num_examples"):
        if entry[field] is None:
            raise Invalid(f"{who} lacks its {field}")
    if not 1 <= entry["num_examples"] <= max_num_examples:
        raise Invalid(f"{who}: num_examples {entry['num_examples']} is outside 1..{max_num_examples}")
    raw = entry["manifest"]
    try:
        manifest = parse_json(raw, f"{who}: manifest")
    except ContractError as exc:
        raise Invalid(exc.message) from exc
    if not isinstance(manifest, dict) or set(manifest) != _MANIFEST_FIELDS:
        raise Invalid(f"{who}: manifest must have exactly the fields {sorted(_MANIFEST_FIELDS)}")
    if canonical_json(manifest) != raw:
        raise Invalid(f"{who}: manifest is not in canonical form")
    expected = {
        "base_model": base_model,
        "federation": federation,
        "num_examples": entry["num_examples"],
        "participant": entry["participant"],
        "round": round_no,
        "update": entry["update"],
        "v": 1,
    }
    for field, value in expected.items():
        if manifest[field] != value or type(manifest[field]) is not type(value):
            raise Invalid(f"{who}: manifest {field} {manifest[field]!r} does not match {value!r}")
    data = raw.encode("utf-8")
    if hashlib.sha256(data).hexdigest() != entry["manifest_hash"]:
        raise Invalid(f"{who}: manifest_hash is not the SHA-256 of the manifest")
    problem = verify_p256_signature(data, entry["signature"], cert_pem)
    if problem is not None:
        raise Invalid(f"{who}: {problem}")
