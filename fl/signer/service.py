"""The signing decision and the journal, behind one lock: what the socket server calls.

:meth:`SigningService.handle` takes one decoded request and returns one reply. Every
manifest request — signed, repeated or refused — is journalled *before* the reply is
sent: a signature that is not in the journal was never handed out. Node-authentication
requests (Flower signs a timestamp on every Fleet request, every few seconds) are
checked for their form and not journalled.

Evaluation manifests (``sign_evaluation``) go through their own policy
(:func:`~fl.signer.policy.decide_evaluation`) and the same journal, their entries marked
``"kind": "evaluation"``; update entries carry no ``kind``.

Receipts (``record_receipt``): the coordinator's signed word on how each reply was
recorded (:mod:`ledger.receipts`), handed over by the node. The signer checks the
signature and that the receipt is about this institution, and journals it
(``"kind": "receipt"``, ``decision`` ``received`` or ``refused``), so ``audit mine`` can
hold the ledger to it. Whose signature counts: the coordinator certificate the signer
was given (``coordinator_cert``), else the one on the first receipt it accepted — kept in
the journal, so it survives restarts (trust on first use; a receipt signed by any other
certificate is journalled as refused, ``unknown_coordinator``). A receipt journalled
already is not journalled again.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization

from fl.signer.journal import Journal
from fl.signer.keys import SigningKey
from fl.signer.policy import (
    LedgerState,
    Refuse,
    Repeat,
    SignedRound,
    SignerPolicy,
    Verdict,
    decide,
    decide_evaluation,
)
from ledger.formats import SignatureError, sha256_hex, verify
from ledger.receipts import ReceiptError, SignedReceipt, verify_receipt

__all__ = ["SigningService", "NODE_AUTH_SKEW", "EVALUATION_KIND", "RECEIPT_KIND"]

log = structlog.get_logger("fedledger.signer")
NODE_AUTH_SKEW = 300.0  # seconds a node-auth timestamp may differ from the signer's clock
# What Flower's node authentication signs: datetime.now(timezone.utc).isoformat().
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?\+00:00")
_MAX_FIELD = 4096
EVALUATION_KIND = "evaluation"  # the journal's ``kind`` of an evaluation decision
RECEIPT_KIND = "receipt"  # the journal's ``kind`` of a coordinator receipt


class SigningService:
    """Policy + key + journal for one institution; thread-safe."""

    def __init__(self, policy: SignerPolicy, key: SigningKey, journal: Journal, ledger: LedgerState,
                 clock: Callable[[], float] = time.time, coordinator_cert: str | None = None) -> None:
        self.policy = policy
        self.key = key
        self.journal = journal
        self.ledger = ledger
        self.clock = clock
        self._lock = threading.Lock()
        self._signed: dict[int, SignedRound] = {}
        self._evaluated: dict[int, SignedRound] = {}
        self.coordinator_cert = coordinator_cert
        self._receipts: set[str] = set()  # SHA-256 of every receipt journalled
        for entry in journal.entries():
            if entry.get("kind") == RECEIPT_KIND:
                self._receipts.add(str(entry.get("receipt_sha256")))
                if entry.get("decision") == "received" and self.coordinator_cert is None:
                    self.coordinator_cert = entry.get("cert_pem")
                continue
            if (entry.get("decision") == "signed" and entry.get("participant") == policy.participant
                    and entry.get("federation") == policy.federation):
                chosen = self._evaluated if entry.get("kind") == EVALUATION_KIND else self._signed
                chosen[int(entry["round"])] = SignedRound(entry["manifest_hash"], entry["signature"])

    @property
    def last_signed_round(self) -> int | None:
        """The latest round signed (from the journal across restarts)."""
        return max(self._signed) if self._signed else None

    def public_key_pem(self) -> str:
        """SubjectPublicKeyInfo PEM of the key."""
        return self.key.public_key.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def handle(self, request: Any, peer: dict[str, int] | None = None) -> dict[str, Any]:
        """One request in, one reply out (never raises for a bad request)."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "reason": "malformed", "detail": "a request is a JSON object with an op"}
        op = request["op"]
        if op == "sign_manifest":
            return self.sign_manifest(request.get("manifest"), request.get("update"), peer)
        if op == "sign_evaluation":
            return self.sign_evaluation(request.get("manifest"), peer)
        if op == "record_receipt":
            return self.record_receipt(request.get("receipt"), peer)
        if op == "node_auth":
            return self.node_auth(request.get("message"))
        if op == "public_key":
            return {"ok": True, "public_key": self.public_key_pem()}
        if op == "status":
            head = None
            for entry in self.journal.entries():
                head = {"seq": entry["seq"], "hash": entry["hash"]}
            return {"ok": True, "participant": self.policy.participant, "federation": self.policy.federation,
                    "max_num_examples": self.policy.max_num_examples, "last_signed_round": self.last_signed_round,
                    "last_evaluated_round": max(self._evaluated) if self._evaluated else None,
                    "key": self.key.describe, "journal_head": head}
        return {"ok": False, "reason": "malformed", "detail": f"unknown op {op[:32]!r}"}

    def sign_manifest(self, manifest: Any, update: Any, peer: dict[str, int] | None = None) -> dict[str, Any]:
        """Sign ``manifest`` if the policy allows; journal the decision either way."""
        text, bad = self._manifest_text(manifest)
        with self._lock:
            verdict: Verdict = Refuse("malformed", bad) if bad else decide(
                self.policy, self._signed, text, update if isinstance(update, str) else "", self.ledger)
            return self._conclude(verdict, text, peer, self._signed, {}, "update_signed")

    def sign_evaluation(self, manifest: Any, peer: dict[str, int] | None = None) -> dict[str, Any]:
        """Sign an evaluation manifest if the evaluation policy allows; journal it either way."""
        text, bad = self._manifest_text(manifest)
        with self._lock:
            verdict: Verdict = Refuse("malformed", bad) if bad else decide_evaluation(
                self.policy, self._evaluated, text, self.ledger)
            return self._conclude(verdict, text, peer, self._evaluated, {"kind": EVALUATION_KIND},
                                  "evaluation_signed")

    def record_receipt(self, receipt: Any, peer: dict[str, int] | None = None) -> dict[str, Any]:
        """Verify the coordinator's receipt and journal it (refused ones too, as evidence)."""
        try:
            signed = SignedReceipt.model_validate(receipt)
        except ValueError as exc:
            return {"ok": False, "reason": "malformed", "detail": f"receipt: {exc}"[:500]}
        digest = sha256_hex(signed.receipt.encode("utf-8"))
        with self._lock:
            if digest in self._receipts:
                return {"ok": True, "repeated": True}
            entry: dict[str, Any] = {"time_ms": int(self.clock() * 1000), "kind": RECEIPT_KIND,
                                     "participant": self.policy.participant, "federation": self.policy.federation,
                                     "peer": peer, "receipt_sha256": digest, **signed.model_dump(mode="json")}
            try:
                parsed = verify_receipt(signed, self.coordinator_cert)
                if (parsed.federation, parsed.participant) != (self.policy.federation, self.policy.participant):
                    raise ReceiptError("wrong_participant", f"the receipt is for {parsed.participant} in "
                                                            f"{parsed.federation}")
            except ReceiptError as exc:
                entry.update(decision="refused", reason=exc.reason, detail=str(exc)[:512])
                self.journal.append(entry)
                self._receipts.add(digest)
                log.warning("receipt_refused", reason=exc.reason, detail=str(exc)[:512])
                return {"ok": False, "reason": exc.reason, "detail": str(exc)}
            entry.update(decision="received", round=parsed.round, manifest_hash=parsed.manifest_hash,
                         status=parsed.decision, status_reason=parsed.reason, record_tx=parsed.record_tx)
            self.journal.append(entry)
            self._receipts.add(digest)
            if self.coordinator_cert is None:
                self.coordinator_cert = signed.cert_pem
            log.info("receipt_recorded", round=parsed.round, decision=parsed.decision, reason=parsed.reason)
            return {"ok": True}

    @staticmethod
    def _manifest_text(manifest: Any) -> tuple[str, str]:
        if not isinstance(manifest, str) or len(manifest) > _MAX_FIELD:
            return "", "the manifest must be a string of at most 4096 characters"
        return manifest, ""

    def _conclude(self, verdict: Verdict, manifest_text: str, peer: dict[str, int] | None,
                  signed: dict[int, SignedRound], extra: dict[str, Any], event: str) -> dict[str, Any]:
        """Journal ``verdict`` (under the lock), sign if approved, and build the reply."""
        entry: dict[str, Any] = {
            "time_ms": int(self.clock() * 1000),
            "participant": self.policy.participant,
            "federation": self.policy.federation,
            "request_sha256": sha256_hex(manifest_text.encode("utf-8")),
            "peer": peer,
            **extra,
        }
        if verdict.manifest is not None:
            entry.update(round=verdict.manifest.round, manifest=verdict.manifest.to_bytes().decode("utf-8"),
                         manifest_hash=verdict.manifest.hash())
        if isinstance(verdict, Refuse):
            entry.update(decision="refused", reason=verdict.reason, detail=verdict.detail[:512])
            self.journal.append(entry)
            log.warning("signature_refused", reason=verdict.reason, detail=verdict.detail[:512],
                        round=entry.get("round"), kind=extra.get("kind", "update"))
            return {"ok": False, "reason": verdict.reason, "detail": verdict.detail}
        if isinstance(verdict, Repeat):
            entry.update(decision="repeated", signature=verdict.signature)
            self.journal.append(entry)
            return {"ok": True, "signature": verdict.signature, "repeated": True}
        data = verdict.manifest.to_bytes()
        signature = base64.b64encode(self.key.sign_digest(hashlib.sha256(data).digest())).decode("ascii")
        try:
            verify(data, signature, self.key.public_key)  # a token that signs wrongly fails here
        except SignatureError as exc:
            entry.update(decision="refused", reason="signing_failed", detail=str(exc))
            self.journal.append(entry)
            return {"ok": False, "reason": "signing_failed", "detail": str(exc)}
        entry.update(decision="signed", signature=signature)
        self.journal.append(entry)
        signed[verdict.manifest.round] = SignedRound(verdict.manifest.hash(), signature)
        log.info(event, round=verdict.manifest.round, manifest_hash=verdict.manifest.hash())
        return {"ok": True, "signature": signature}

    def node_auth(self, message: Any) -> dict[str, Any]:
        """Sign a Flower node-authentication timestamp — and nothing else."""
        if not isinstance(message, str) or _TIMESTAMP.fullmatch(message) is None:
            return {"ok": False, "reason": "not_a_timestamp",
                    "detail": "node authentication signs only an ISO-8601 UTC timestamp"}
        when = dt.datetime.fromisoformat(message).timestamp()
        if abs(when - self.clock()) > NODE_AUTH_SKEW:
            return {"ok": False, "reason": "stale_timestamp",
                    "detail": f"timestamp differs from the signer's clock by more than {NODE_AUTH_SKEW:.0f} s"}
        der = self.key.sign_digest(hashlib.sha256(message.encode("ascii")).digest())
        return {"ok": True, "signature": base64.b64encode(der).decode("ascii")}
