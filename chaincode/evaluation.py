"""Checks on an *accepted* evaluation entry: its signed evaluation manifest must back it.

The coordinator verified each evaluation reply before recording it; the contract verifies
again, so a coordinator cannot record metrics in an institution's name that the
institution never signed. The evaluation manifest (DESIGN §3 canonical JSON with
``"kind":"evaluation"``) must name this federation, round, the round's committed model,
the participant, the example count and the entry's metrics; its SHA-256 must be the
entry's ``manifest_hash``; its signature (DER, low-S, base64) must verify with the
participant's registered P-256 certificate. An update manifest never passes: its fields
differ.
"""

from __future__ import annotations

import hashlib
from typing import Any

from chaincode.canonical import canonical_json, parse_json
from chaincode.errors import ContractError, Invalid
from chaincode.certs import verify_p256_signature

__all__ = ["check_accepted_evaluation"]

_FIELDS = {"federation", "kind", "metrics", "model", "num_examples", "participant", "round", "v"}
_METRICS = ("accuracy_ppm", "auc_ppm", "log_loss_ppm")


def check_accepted_evaluation(
    entry: dict[str, Any],
    federation: str,
    round_no: int,
    model: str,
    cert_pem: str,
    max_num_examples: int,
) -> None:
    """Raise ``INVALID`` unless the accepted evaluation ``entry`` is backed by a signed manifest."""
    who = f"accepted evaluation of {entry['participant']}"
    if entry["reason"] is not None:
        raise Invalid(f"{who} must not carry a rejection reason")
    for field in ("manifest", "manifest_hash", "signature", "num_examples", "accuracy_ppm", "log_loss_ppm"):
        if entry[field] is None:
            raise Invalid(f"{who} lacks its {field}")
    if not 1 <= entry["num_examples"] <= max_num_examples:
        raise Invalid(f"{who}: num_examples {entry['num_examples']} is outside 1..{max_num_examples}")
    raw = entry["manifest"]
    try:
        manifest = parse_json(raw, f"{who}: manifest")
    except ContractError as exc:
        raise Invalid(exc.message) from exc
    if not isinstance(manifest, dict) or set(manifest) != _FIELDS:
        raise Invalid(f"{who}: manifest must have exactly the fields {sorted(_FIELDS)}")
    if canonical_json(manifest) != raw:
        raise Invalid(f"{who}: manifest is not in canonical form")
    expected: dict[str, Any] = {
        "federation": federation,
        "kind": "evaluation",
        "model": model,
        "num_examples": entry["num_examples"],
        "participant": entry["participant"],
        "round": round_no,
        "v": 1,
    }
    for field, value in expected.items():
        if manifest[field] != value or type(manifest[field]) is not type(value):
            raise Invalid(f"{who}: manifest {field} {manifest[field]!r} does not match {value!r}")
    metrics = manifest["metrics"]
    if not isinstance(metrics, dict) or set(metrics) != set(_METRICS):
        raise Invalid(f"{who}: manifest metrics must have exactly the fields {list(_METRICS)}")
    for name in _METRICS:
        if metrics[name] != entry[name] or type(metrics[name]) is not type(entry[name]):
            raise Invalid(f"{who}: manifest {name} {metrics[name]!r} does not match {entry[name]!r}")
    data = raw.encode("utf-8")
    if hashlib.sha256(data).hexdigest() != entry["manifest_hash"]:
        raise Invalid(f"{who}: manifest_hash is not the SHA-256 of the manifest")
    problem = verify_p256_signature(data, entry["signature"], cert_pem)
    if problem is not None:
        raise Invalid(f"{who}: {problem}")
