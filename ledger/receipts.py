"""Signed receipts: the coordinator's word, given to each institution, on how its reply was recorded.

After ``RecordRound`` commits, the coordinator signs one receipt per decided reply and
sends it to the node that sent the reply (with the next message that node gets). The
institution keeps it; if the ledger later says something else about that reply — or
nothing — the receipt proves that the coordinator said otherwise, so censorship or a
false reason becomes provable by the victim.

**Format** (normative for receipts; DESIGN §3 conventions). The receipt is the canonical
JSON (keys sorted, ``,``/``:`` separators, UTF-8) of::

    {"decision":"accepted"|"rejected","federation":"<id>","manifest_hash":"<hex>"|null,
     "participant":"<id claimed by the reply>","reason":"<reason>"|null,
     "record_tx":"<tx id of RecordRound>","round":7,"v":1}

``signature`` = ECDSA-P256-SHA256 over those bytes, DER, low-S, base64 — the same
signature form as a manifest's.

**Which key.** The coordinator signs with its *ledger identity*: the key of the
certificate it writes ``RecordRound`` with (``CoordinatorMSP``). It is the one key the
coordinator must hold anyway, and it does not depend on any participant. The signed
receipt carries that certificate (``cert_pem``) and its MSP (``msp_id``), so anyone
holding the receipt can check it without asking the coordinator; an institution's
signer pins the first coordinator certificate it accepts (trust on first use, in its
journal) unless it was told the certificate up front (see :mod:`fl.signer.service`).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Literal

from pydantic import Field

from ledger.formats import FormatError, SignatureError, verify
from ledger.identity import Credentials
from ledger.records import Record, RoundEntry, RoundRecord

__all__ = ["RECEIPT_VERSION", "RECEIPT_RECORD", "Receipt", "SignedReceipt", "ReceiptError", "sign_receipt", "verify_receipt",
           "round_receipts"]

RECEIPT_VERSION = 1
# The ConfigRecord of a Flower message that carries the node's signed receipt (the
# fields of :class:`SignedReceipt`, all strings).
RECEIPT_RECORD = "receipt"
_HEX64 = r"^[0-9a-f]{64}$"


class ReceiptError(ValueError):
    """A receipt that is malformed, or whose signature does not hold (``reason`` says which)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Receipt(Record):
    """What the coordinator attests about one reply of one round."""

    v: Literal[1] = RECEIPT_VERSION
    federation: str = Field(min_length=1, max_length=64)
    round: int = Field(ge=1)
    participant: str = Field(max_length=128)
    manifest_hash: str | None = Field(default=None, pattern=_HEX64)
    decision: Literal["accepted", "rejected"]
    reason: str | None = Field(default=None, max_length=64)
    record_tx: str = Field(min_length=1, max_length=256)

    @classmethod
    def of(cls, federation: str, round: int, entry: RoundEntry, record_tx: str) -> Receipt:
        """The receipt for one recorded entry."""
        return cls(federation=federation, round=round, participant=entry.participant,
                   manifest_hash=entry.manifest_hash, decision=entry.status, reason=entry.reason,
                   record_tx=record_tx)


class SignedReceipt(Record):
    """A receipt as sent: its canonical bytes (as text), the signature and the signer's certificate."""

    receipt: str = Field(max_length=4096)
    signature: str = Field(max_length=128)
    cert_pem: str = Field(max_length=16_384)
    msp_id: str = Field(max_length=128)


def sign_receipt(receipt: Receipt, credentials: Credentials) -> SignedReceipt:
    """Sign ``receipt`` as ``credentials`` (the coordinator's ledger identity); fails closed
    without a signer."""
    if credentials.signer is None:
        raise ReceiptError("no_signer", f"{credentials.msp_id}: no key to sign receipts with")
    data = receipt.canonical()
    der = credentials.signer(hashlib.sha256(data).digest())
    return SignedReceipt(receipt=data.decode("utf-8"), signature=base64.b64encode(der).decode("ascii"),
                         cert_pem=credentials.identity.cert_pem, msp_id=credentials.msp_id)


def verify_receipt(signed: SignedReceipt, cert_pem: str | None = None) -> Receipt:
    """The receipt inside ``signed`` once its signature holds.

    ``cert_pem`` is the coordinator certificate the caller trusts; None trusts the one
    the receipt carries (the caller then pins it). Raises :class:`ReceiptError`.
    """
    trusted = signed.cert_pem if cert_pem is None else cert_pem
    if cert_pem is not None and signed.cert_pem.strip() != cert_pem.strip():
        raise ReceiptError("unknown_coordinator", "the receipt is signed by another certificate than the "
                                                  "coordinator's one this institution knows")
    try:
        receipt = Receipt.parse(signed.receipt)
    except ValueError as exc:
        raise ReceiptError("malformed", f"receipt: {exc}"[:500]) from exc
    if receipt.canonical() != signed.receipt.encode("utf-8"):
        raise ReceiptError("malformed", "receipt is not in canonical form")
    try:
        verify(signed.receipt.encode("utf-8"), signed.signature, trusted)
    except SignatureError as exc:
        raise ReceiptError(exc.reason, f"receipt signature: {exc}") from exc
    except FormatError as exc:
        raise ReceiptError("bad_signature", f"receipt certificate unusable: {exc}") from exc
    return receipt


def round_receipts(federation: str, record: RoundRecord, record_tx: str,
                   credentials: Credentials) -> dict[str, SignedReceipt]:
    """One signed receipt per node that sent a reply in ``record`` (by node id).

    Entries with no node (no transport sender known) get none: there is nobody to give
    it to. A node recorded as ``no_reply`` gets one too: if it did reply, that receipt is
    its proof of being recorded as silent.
    """
    receipts: dict[str, SignedReceipt] = {}
    for entry in record.entries:
        if entry.node is None or entry.node in receipts:
            continue
        receipts[entry.node] = sign_receipt(Receipt.of(federation, record.round, entry, record_tx), credentials)
    return receipts
