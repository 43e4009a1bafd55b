"""Checks on an *accepted* round entry: its signed manifest must back what is recorded.

The coordinator verified each accepted update before recording it (DESIGN §4); the
contract verifies again, so a coordinator cannot record an update that the participant
never signed. The manifest must be canonical JSON (DESIGN §3) naming this federation,
round, base model, participant, update digest and example count; its SHA-256 must be the
entry's ``manifest_hash``; its signature (DER, low-S, base64) must verify with the
participant's registered P-256 certificate.

A version 2 manifest also carries the participant's signed training claim, which must
say what the federation's policy requires (algorithm, FedProx μ, compression, and under
differential privacy the clipping norm and δ, with an ε within the per-round budget);
the entry's ``epsilon_ppm`` must be the signed ε. A version 1 manifest means plain
FedAvg, uncompressed, without DP, and is accepted only under such a policy.
"""

from __future__ import annotations

import hashlib
from typing import Any

from chaincode.canonical import canonical_json, parse_json
from chaincode.certs import P256_ORDER, verify_p256_signature
from chaincode.errors import ContractError, Invalid
from chaincode.schema import policy_training

__all__ = ["P256_ORDER", "check_accepted_entry"]

_MANIFEST_FIELDS = {"base_model", "federation", "num_examples", "participant", "round", "update", "v"}
_TRAINING_FIELDS = {"algorithm", "compression", "dp", "mu_ppm"}
_DP_FIELDS = {"delta_ppb", "epsilon_ppm", "max_grad_norm_ppm", "noise_multiplier_ppm", "sample_rate_ppm", "steps"}
_PLAIN = {"algorithm": "fedavg", "compression": "none", "dp": None, "mu_ppm": 0}


def _check_training(who: str, training: Any, policy: dict[str, Any]) -> int | None:
    """The signed claim must be the policy's training; return the signed ε (None without DP)."""
    if not isinstance(training, dict) or set(training) != _TRAINING_FIELDS:
        raise Invalid(f"{who}: manifest training must have exactly the fields {sorted(_TRAINING_FIELDS)}")
    required = policy_training(policy)
    for field in ("algorithm", "compression", "mu_ppm"):
        if training[field] != required[field] or type(training[field]) is not type(required[field]):
            raise Invalid(f"{who}: signed training {field} {training[field]!r} is not the policy's {required[field]!r}")
    dp, rule = training["dp"], required["dp"]
    if rule is None:
        if dp is not None:
            raise Invalid(f"{who}: signed a DP claim, the policy has no differential privacy")
        return None
    if not isinstance(dp, dict) or set(dp) != _DP_FIELDS or any(type(v) is not int for v in dp.values()):
        raise Invalid(f"{who}: the policy requires DP and the signed claim has no valid dp object")
    for field in ("delta_ppb", "max_grad_norm_ppm"):
        if dp[field] != rule[field]:
            raise Invalid(f"{who}: signed dp {field} {dp[field]} is not the policy's {rule[field]}")
    if not 0 <= dp["epsilon_ppm"] <= rule["epsilon_round_ppm"]:
        raise Invalid(f"{who}: signed ε {dp['epsilon_ppm']} ppm is outside 0..{rule['epsilon_round_ppm']}")
    return dp["epsilon_ppm"]


def check_accepted_entry(
    entry: dict[str, Any],
    federation: str,
    round_no: int,
    base_model: str,
    cert_pem: str,
    policy: dict[str, Any],
) -> None:
    """Raise ``INVALID`` unless the accepted ``entry`` is backed by a valid signed manifest
    whose training claim is the policy's."""
    max_num_examples = policy["max_num_examples"]
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
    version = manifest.get("v") if isinstance(manifest, dict) else None
    fields = _MANIFEST_FIELDS | {"training"} if version == 2 else _MANIFEST_FIELDS
    if not isinstance(manifest, dict) or set(manifest) != fields:
        raise Invalid(f"{who}: manifest must have exactly the fields {sorted(fields)}")
    if canonical_json(manifest) != raw:
        raise Invalid(f"{who}: manifest is not in canonical form")
    expected = {
        "base_model": base_model,
        "federation": federation,
        "num_examples": entry["num_examples"],
        "participant": entry["participant"],
        "round": round_no,
        "update": entry["update"],
        "v": 2 if version == 2 else 1,
    }
    for field, value in expected.items():
        if manifest[field] != value or type(manifest[field]) is not type(value):
            raise Invalid(f"{who}: manifest {field} {manifest[field]!r} does not match {value!r}")
    epsilon = _check_training(who, manifest["training"] if version == 2 else _PLAIN, policy)
    if entry.get("epsilon_ppm") != epsilon:
        raise Invalid(f"{who}: epsilon_ppm {entry.get('epsilon_ppm')} is not the signed {epsilon}")
    data = raw.encode("utf-8")
    if hashlib.sha256(data).hexdigest() != entry["manifest_hash"]:
        raise Invalid(f"{who}: manifest_hash is not the SHA-256 of the manifest")
    problem = verify_p256_signature(data, entry["signature"], cert_pem)
    if problem is not None:
        raise Invalid(f"{who}: {problem}")
