"""The coordinator's checks on each reply, in the order DESIGN §4 fixes.

:func:`verify_round` turns a round's replies into ledger entries (accepted or rejected,
each rejection with its stable reason) plus the accepted tensors. It is pure: no ledger
call, no Flower runtime, so it is unit-tested and benchmarked on its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Message

from fl.records import to_arrays
from fl.signing import AUDIT_KEY
from ledger.aggregate import WeightedUpdate
from ledger.formats import FormatError, Manifest, SignatureError, public_key_of, update_digest, verify
from ledger.records import Participant, RoundEntry

__all__ = ["RoundContext", "RoundVerdict", "UpdateRejected", "verify_round", "KeyCache"]


class UpdateRejected(Exception):
    """A reply failed a check; ``reason`` is the stable code recorded on the ledger."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KeyCache:
    """Parsed public keys by certificate PEM, so each certificate is parsed once."""

    def __init__(self) -> None:
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}

    def key(self, cert_pem: str) -> ec.EllipticCurvePublicKey:
        """The P-256 public key in ``cert_pem``."""
        key = self._keys.get(cert_pem)
        if key is None:
            key = public_key_of(cert_pem)
            self._keys[cert_pem] = key
        return key


@dataclass(frozen=True)
class RoundContext:
    """What a reply is checked against in one round."""

    federation: str
    round: int
    base_model: str
    base_arrays: Mapping[str, np.ndarray]
    participants: Mapping[str, Participant]
    # Maps a reply's transport node (Flower node id) to the participant it authenticated
    # as; None where the transport does not authenticate nodes (simulation).
    node_owner: Callable[[str], str | None] | None = None
    max_norm_ratio: float = 10.0


@dataclass
class RoundVerdict:
    """Entries for ``RecordRound`` and the accepted updates for aggregation."""

    entries: list[RoundEntry] = field(default_factory=list)
    accepted: list[WeightedUpdate] = field(default_factory=list)

    def rejected(self) -> list[RoundEntry]:
        """The rejected entries."""
        return [e for e in self.entries if e.status == "rejected"]


@dataclass
class _Candidate:
    node: str
    participant: str = "(unknown)"
    manifest: Manifest | None = None
    manifest_text: str | None = None
    signature: str | None = None
    arrays: dict[str, np.ndarray] | None = None


def _check(
    reply: Message, ctx: RoundContext, seen: set[str], keys: KeyCache, cand: _Candidate
) -> None:
    """Run the per-reply checks in order; raise UpdateRejected at the first failure."""
    if reply.has_error():
        raise UpdateRejected("reply_error", f"client error: {reply.error.reason}"[:500])
    content = reply.content
    # -- malformed ---------------------------------------------------------------------
    try:
        audit = content[AUDIT_KEY]
        cand.manifest_text = str(audit["manifest"])
        signature = audit["signature"]
        if not isinstance(signature, str):
            raise UpdateRejected("malformed", "audit signature is not a string")
        cand.signature = signature
        cand.manifest = Manifest.parse(cand.manifest_text)
        cand.participant = cand.manifest.participant
        if len(content.array_records) != 1 or "arrays" not in content:
            raise UpdateRejected("malformed", "reply must carry exactly one ArrayRecord 'arrays'")
        cand.arrays = to_arrays(content["arrays"])
        num_examples = content["metrics"]["num-examples"]
    except UpdateRejected:
        raise
    except FormatError as exc:
        raise UpdateRejected("malformed", f"manifest: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejected("malformed", f"reply content: {exc}") from exc
    manifest = cand.manifest
    if num_examples != manifest.num_examples:
        raise UpdateRejected("malformed", "metrics num-examples differs from the signed manifest")
    # -- replay: wrong federation / round / base model ----------------------------------
    if manifest.federation != ctx.federation:
        raise UpdateRejected("wrong_federation", f"manifest federation {manifest.federation}")
    if manifest.round != ctx.round:
        raise UpdateRejected("wrong_round", f"manifest round {manifest.round}, expected {ctx.round}")
    if manifest.base_model != ctx.base_model:
        raise UpdateRejected("wrong_base_model", f"trained from {manifest.base_model[:16]}…")
    # -- who ---------------------------------------------------------------------------
    participant = ctx.participants.get(manifest.participant)
    if participant is None:
        raise UpdateRejected("unknown_participant", f"{manifest.participant} is not registered")
    if participant.status == "pending":
        raise UpdateRejected("not_admitted", f"{manifest.participant} is registered, not admitted")
    if participant.status == "revoked":
        raise UpdateRejected("revoked", f"{manifest.participant} was revoked")
    if ctx.node_owner is not None:
        owner = ctx.node_owner(cand.node)
        if owner != manifest.participant:
            raise UpdateRejected(
                "node_mismatch", f"node {cand.node} authenticated as {owner}, not {manifest.participant}"
            )
    if manifest.participant in seen:
        raise UpdateRejected("duplicate", f"second reply from {manifest.participant}")
    seen.add(manifest.participant)
    # -- content -----------------------------------------------------------------------
    actual = update_digest(cand.arrays)
    if actual != manifest.update:
        raise UpdateRejected("digest_mismatch", f"tensors hash to {actual[:16]}…, manifest says {manifest.update[:16]}…")
    try:
        verify(manifest.to_bytes(), signature, keys.key(participant.cert_pem))
    except SignatureError as exc:
        raise UpdateRejected(exc.reason, str(exc)) from exc
    except FormatError as exc:
        raise UpdateRejected("bad_signature", f"registered certificate unusable: {exc}") from exc
    for name, tensor in cand.arrays.items():
        if tensor.dtype.kind in "fc" and not np.all(np.isfinite(tensor)):
            raise UpdateRejected("non_finite", f"tensor {name!r} has NaN or infinite values")
    expected = ctx.base_arrays
    if sorted(cand.arrays) != sorted(expected):
        raise UpdateRejected("wrong_shape", "tensor names differ from the global model")
    for name, tensor in cand.arrays.items():
        ref = expected[name]
        if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
            raise UpdateRejected(
                "wrong_shape", f"tensor {name!r} is {tensor.dtype}{list(tensor.shape)}, expected {ref.dtype}{list(ref.shape)}"
            )


def _entry(cand: _Candidate, status: str, reason: str | None = None, detail: str | None = None) -> RoundEntry:
    manifest = cand.manifest
    return RoundEntry(
        participant=cand.participant[:128],
        status=status,  # type: ignore[arg-type]
        reason=reason,
        detail=detail[:512] if detail else None,
        node=cand.node,
        manifest=cand.manifest_text if manifest is not None else None,
        manifest_hash=manifest.hash() if manifest is not None else None,
        signature=cand.signature if manifest is not None else None,
        update=manifest.update if manifest is not None else None,
        num_examples=manifest.num_examples if manifest is not None else None,
    )


def _outliers(cands: list[_Candidate], ctx: RoundContext) -> dict[str, str]:
    """Updates whose change is far larger than the median change (norm ratio test)."""
    if len(cands) < 3:
        return {}
    names = sorted(ctx.base_arrays)
    norms = {}
    for cand in cands:
        assert cand.arrays is not None
        sq = sum(
            float(np.sum((cand.arrays[n].astype(np.float64) - ctx.base_arrays[n].astype(np.float64)) ** 2))
            for n in names
        )
        norms[cand.participant] = sq**0.5
    median = statistics.median(norms.values())
    limit = ctx.max_norm_ratio * median
    return {
        p: f"update norm {n:.4g} exceeds {ctx.max_norm_ratio:g}× the median {median:.4g}"
        for p, n in norms.items()
        if median > 0 and n > limit
    }


def verify_round(
    replies: Iterable[Message], ctx: RoundContext, keys: KeyCache | None = None
) -> RoundVerdict:
    """Check every reply of a round; return ledger entries and accepted updates.

    Entries come sorted by (participant, node) so the recorded round does not depend on
    the order in which replies arrived.
    """
    keys = keys or KeyCache()
    seen: set[str] = set()
    verdict = RoundVerdict()
    passed: list[_Candidate] = []
    for reply in replies:
        cand = _Candidate(node=str(reply.metadata.src_node_id))
        try:
            _check(reply, ctx, seen, keys, cand)
        except UpdateRejected as exc:
            verdict.entries.append(_entry(cand, "rejected", exc.reason, exc.detail))
            continue
        passed.append(cand)
    outliers = _outliers(passed, ctx)
    for cand in passed:
        if cand.participant in outliers:
            verdict.entries.append(_entry(cand, "rejected", "outlier", outliers[cand.participant]))
            continue
        verdict.entries.append(_entry(cand, "accepted"))
        assert cand.manifest is not None and cand.arrays is not None
        verdict.accepted.append(
            WeightedUpdate(cand.participant, cand.manifest.num_examples, cand.arrays)
        )
    verdict.entries.sort(key=lambda e: (e.participant, e.node or ""))
    verdict.accepted.sort(key=lambda u: u.participant)
    return verdict
