"""A participant's declaration of its dataset size, signed with its key at registration.

Canonical JSON (DESIGN §3), signed like an update manifest (ECDSA-P256-SHA256, DER,
low-S, base64) with the key of the certificate being registered::

    {"declared_examples":35,"federation":"fed","kind":"declaration","participant":"bank-a","v":1}

``RegisterParticipant`` verifies it against that certificate and records
``declared_examples``; an accepted update claiming more examples is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ledger.formats import FormatError, canonical_json, sign, validate_id, verify
from ledger.records import Record

__all__ = ["DECLARATION_VERSION", "ExamplesDeclaration", "SignedDeclaration", "declare_examples"]

DECLARATION_VERSION = 1


@dataclass(frozen=True)
class ExamplesDeclaration:
    """What a participant signs at registration: how many examples it trains on, at most."""

    federation: str
    participant: str
    declared_examples: int

    def __post_init__(self) -> None:
        validate_id(self.federation, "federation")
        validate_id(self.participant, "participant")
        if type(self.declared_examples) is not int or self.declared_examples < 1:
            raise FormatError(f"declared examples must be a positive integer, not {self.declared_examples!r}")

    def to_dict(self) -> dict[str, Any]:
        """The signed fields."""
        return {
            "declared_examples": self.declared_examples,
            "federation": self.federation,
            "kind": "declaration",
            "participant": self.participant,
            "v": DECLARATION_VERSION,
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes that are signed."""
        return canonical_json(self.to_dict())

    def sign(self, private_key: ec.EllipticCurvePrivateKey) -> SignedDeclaration:
        """The declaration signed with the participant's P-256 key."""
        raw = self.to_bytes()
        return SignedDeclaration(statement=raw.decode("utf-8"), signature=sign(raw, private_key))


class SignedDeclaration(Record):
    """A declaration's canonical statement and its base64 signature, as the contract takes them."""

    statement: str
    signature: str

    def verify(self, cert_pem: str) -> None:
        """Raise :class:`~ledger.formats.SignatureError` unless the certificate's key signed it."""
        verify(self.statement.encode("utf-8"), self.signature, cert_pem)


def declare_examples(
    federation: str, participant: str, declared_examples: int, private_key: ec.EllipticCurvePrivateKey
) -> SignedDeclaration:
    """Sign a declaration of ``declared_examples`` for ``participant`` in ``federation``."""
    return ExamplesDeclaration(federation, participant, declared_examples).sign(private_key)
