"""The audit's own check of every participant's certificate chain and declared size.

Independently of the contract that accepted them, for each registered participant:
its org registered a CA (before the participant), the CA's key signed the participant's
certificate (not just a matching issuer name or key id), both were valid when the
participant was registered, and the recorded ``declared_examples`` is the one the
participant's key signed. A participant a dishonest coordinator or org slipped onto
the ledger without a valid chain is reported, whichever backend served it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ledger.errors import LedgerError
from ledger.formats import SignatureError, verify
from ledger.protocol import Ledger
from ledger.records import OrgCA, Participant

__all__ = ["check_chains", "chain_problems"]


def _load(pem: str) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None


def _valid_at(cert: x509.Certificate, at_ms: int) -> bool:
    at = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _declaration_problems(who: str, participant: Participant) -> list[str]:
    if participant.declared_examples is None or participant.declaration is None or \
            participant.declaration_signature is None:
        return [f"{who}: declared no dataset size at registration"]
    try:
        verify(participant.declaration.encode("utf-8"), participant.declaration_signature, participant.cert_pem)
    except SignatureError as exc:
        return [f"{who}: the declaration of its dataset size is not signed by its key ({exc})"]
    try:
        statement = json.loads(participant.declaration)
    except ValueError:
        return [f"{who}: the declaration of its dataset size is not JSON"]
    expected = {"declared_examples": participant.declared_examples, "federation": participant.federation,
                "kind": "declaration", "participant": participant.id, "v": 1}
    if statement != expected:
        return [f"{who}: the signed declaration {participant.declaration} does not match the recorded "
                f"declared_examples {participant.declared_examples}"]
    return []


def chain_problems(participant: Participant, org_ca: OrgCA | None) -> list[str]:
    """What is wrong with one participant's chain to its org CA and its declaration."""
    who = f"participant {participant.id} ({participant.msp_id})"
    if org_ca is None:
        return [f"{who}: its organisation registered no CA certificate"]
    ca, cert = _load(org_ca.ca_cert_pem), _load(participant.cert_pem)
    if ca is None:
        return [f"{who}: the CA certificate of {participant.msp_id} cannot be read"]
    if cert is None:
        return [f"{who}: its certificate cannot be read"]
    problems = []
    if org_ca.registered_ms > participant.registered_ms:
        problems.append(f"{who}: registered before its organisation registered its CA")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        problems.append(f"{who}: its certificate was not signed by the CA of {participant.msp_id}")
    if not _valid_at(cert, participant.registered_ms):
        problems.append(f"{who}: its certificate was not valid when it was registered")
    if not _valid_at(ca, participant.registered_ms):
        problems.append(f"{who}: the CA of {participant.msp_id} was not valid when it was registered")
    return problems + _declaration_problems(who, participant)


def check_chains(ledger: Ledger, federation: str, participants: Mapping[str, Participant]) -> list[str]:
    """Every participant's chain to its org's registered CA, re-checked (see the module doc)."""
    try:
        cas = {ca.msp_id: ca for ca in ledger.org_cas(federation)}
    except LedgerError as exc:
        return [f"org CAs cannot be read: {exc}"]
    problems = []
    for pid in sorted(participants):
        participant = participants[pid]
        problems += chain_problems(participant, cas.get(participant.msp_id))
    return problems
