"""A participant's signed declaration of its dataset size, checked at registration.

The statement is canonical JSON (DESIGN §3)::

    {"declared_examples":35,"federation":"<fed>","kind":"declaration",
     "participant":"<pid>","v":1}

signed (ECDSA-P256-SHA256, DER, low-S, base64) with the key of the certificate being
registered. The contract records ``declared_examples`` with the participant; an accepted
update later claiming more examples than that is refused, so a participant cannot buy
FedAvg weight (or rewards) by over-claiming after registration.
"""

from __future__ import annotations

from typing import Any

from chaincode.canonical import canonical_json, parse_json
from chaincode.certs import verify_p256_signature
from chaincode.errors import ContractError, Invalid

__all__ = ["DECLARATION_FIELDS", "MAX_DECLARATION_BYTES", "check_declaration"]

DECLARATION_FIELDS = frozenset({"declared_examples", "federation", "kind", "participant", "v"})
MAX_DECLARATION_BYTES = 1024


def check_declaration(
    statement: str, signature: str, federation: str, participant: str, cert_pem: str, max_num_examples: int
) -> int:
    """The declared example count, once the statement is well formed and signed by ``cert_pem``'s key."""
    if not isinstance(statement, str) or len(statement.encode("utf-8")) > MAX_DECLARATION_BYTES:
        raise Invalid(f"declaration must be canonical JSON of at most {MAX_DECLARATION_BYTES} bytes")
    try:
        parsed: Any = parse_json(statement, "declaration")
    except ContractError as exc:
        raise Invalid(exc.message) from exc
    if not isinstance(parsed, dict) or set(parsed) != DECLARATION_FIELDS:
        raise Invalid(f"declaration must have exactly the fields {sorted(DECLARATION_FIELDS)}")
    if canonical_json(parsed) != statement:
        raise Invalid("declaration is not in canonical form")
    expected = {"federation": federation, "kind": "declaration", "participant": participant, "v": 1}
    for field, value in expected.items():
        if parsed[field] != value or type(parsed[field]) is not type(value):
            raise Invalid(f"declaration {field} {parsed[field]!r} does not match {value!r}")
    declared = parsed["declared_examples"]
    if type(declared) is not int or not 1 <= declared <= max_num_examples:
        raise Invalid(f"declaration declared_examples {declared!r} must be an integer from 1 to {max_num_examples}")
    problem = verify_p256_signature(statement.encode("utf-8"), signature, cert_pem)
    if problem is not None:
        raise Invalid(f"declaration: {problem.replace('registered certificate', 'participant certificate')}")
    return declared
