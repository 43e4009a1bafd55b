"""The coordinator's checks on each reply, in the order DESIGN §4 fixes.

:func:`verify_round` turns a round's replies into ledger entries (accepted or rejected,
each rejection with its stable reason) plus the accepted tensors. It is pure: no ledger
call, no Flower runtime, so it is unit-tested and benchmarked on its own.

One deliberate refinement of the DESIGN §4 order: ``duplicate`` is decided among replies
that passed the digest and signature checks, and rejects *every* authenticated reply of
a participant that sent more than one. Deciding it earlier would let any node knock an
honest participant out by sending a forged reply in its name first, and would make the
record depend on arrival order.

Nothing a participant sends can stop the round: undecodable, mistyped or oversized
content is recorded as ``malformed`` and the round goes on.

:func:`verify_evaluations` does the same for the evaluate replies about the model a round
committed: reply error → malformed → wrong federation / round / model → unknown, not
admitted, revoked, expired or node bound to another participant → bad signature →
duplicate (among authenticated replies, for the reason given above).
"""

from __future__ import annotations

import datetime as dt
import statistics
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fl.records import to_arrays
from fl.signing import AUDIT_KEY
from ledger.aggregate import WeightedUpdate
from ledger.formats import (
    MAX_SIGNATURE_B64,
    EvaluationManifest,
    FormatError,
    Manifest,
    SignatureError,
    public_key_of,
    update_digest,
    verify,
)
from ledger.records import EvaluationEntry, Participant, RoundEntry

__all__ = ["RoundContext", "RoundVerdict", "UpdateRejected", "verify_round", "entry_order", "KeyCache",
           "EvaluationContext", "verify_evaluations"]

log = structlog.get_logger("fedledger.coordinator")


class UpdateRejected(Exception):
    """A reply failed a check; ``reason`` is the stable code recorded on the ledger."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KeyCache:
    """Parsed certificates and their public keys by PEM, so each is parsed once."""

    def __init__(self) -> None:
        self._certs: dict[str, tuple[x509.Certificate, ec.EllipticCurvePublicKey]] = {}

    def _entry(self, cert_pem: str) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
        entry = self._certs.get(cert_pem)
        if entry is None:
            cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
            entry = (cert, public_key_of(cert))
            self._certs[cert_pem] = entry
        return entry

    def key(self, cert_pem: str) -> ec.EllipticCurvePublicKey:
        """The P-256 public key in ``cert_pem``."""
        return self._entry(cert_pem)[1]

    def valid_at(self, cert_pem: str, moment: dt.datetime) -> bool:
        """Whether ``cert_pem`` is within its validity window at ``moment``."""
        cert = self._entry(cert_pem)[0]
        return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


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
    max_num_examples: int = 1_000_000
    # When certificates are checked for validity (default: now).
    now: dt.datetime | None = None


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


# What decoding hostile bytes can raise (numpy's loader, zip, JSON nesting, bad types).
_DECODE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, EOFError, OSError,
                  zipfile.BadZipFile, RecursionError, UnicodeError)


def _decode(reply: Message, ctx: RoundContext, cand: _Candidate) -> None:
    """reply_error and malformed: fill ``cand`` from the reply or raise UpdateRejected."""
    if reply.has_error():
        # The client's error text can hold its local paths: only the code goes on the ledger.
        log.warning("reply_error", node=cand.node, code=reply.error.code, reason=str(reply.error.reason)[:500])
        raise UpdateRejected("reply_error", f"client error code {reply.error.code}")
    content = reply.content
    try:
        audit = content[AUDIT_KEY]
        if not isinstance(audit, ConfigRecord):
            raise UpdateRejected("malformed", "'audit' is not a ConfigRecord")
        manifest_text, signature = audit["manifest"], audit["signature"]
        if not isinstance(manifest_text, str) or not isinstance(signature, str):
            raise UpdateRejected("malformed", "audit manifest and signature must be strings")
        if len(signature) > MAX_SIGNATURE_B64:
            raise UpdateRejected("malformed", f"signature longer than {MAX_SIGNATURE_B64} characters")
        cand.manifest = Manifest.parse(manifest_text)  # refuses > MAX_MANIFEST_BYTES unparsed
        cand.manifest_text, cand.signature = manifest_text, signature
        cand.participant = cand.manifest.participant
        if len(content.array_records) != 1 or not isinstance(content["arrays"], ArrayRecord):
            raise UpdateRejected("malformed", "reply must carry exactly one ArrayRecord 'arrays'")
        metrics = content["metrics"]
        if not isinstance(metrics, MetricRecord):
            raise UpdateRejected("malformed", "'metrics' is not a MetricRecord")
        num_examples = metrics["num-examples"]
        cand.arrays = to_arrays(content["arrays"])
    except UpdateRejected:
        raise
    except FormatError as exc:
        raise UpdateRejected("malformed", f"manifest: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise UpdateRejected("malformed", f"reply content: {type(exc).__name__}: {exc}"[:500]) from exc
    manifest = cand.manifest
    if num_examples != manifest.num_examples:
        raise UpdateRejected("malformed", "metrics num-examples differs from the signed manifest")
    if not 1 <= manifest.num_examples <= ctx.max_num_examples:
        raise UpdateRejected(
            "malformed", f"num_examples {manifest.num_examples} outside 1..{ctx.max_num_examples}"
        )


def _signer_of(pid: str, ctx: RoundContext | EvaluationContext, keys: KeyCache, node: str | None) -> Participant:
    """The registered participant that may sign this reply, in DESIGN §4 order: known,
    admitted, not revoked, certificate valid now, and (with node binding) the owner of
    the node that sent it."""
    participant = ctx.participants.get(pid)
    if participant is None:
        raise UpdateRejected("unknown_participant", f"{pid} is not registered")
    if participant.status == "pending":
        raise UpdateRejected("not_admitted", f"{pid} is registered, not admitted")
    if participant.status == "revoked":
        raise UpdateRejected("revoked", f"{pid} was revoked")
    try:
        in_validity = keys.valid_at(participant.cert_pem, ctx.now or dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise UpdateRejected("bad_signature", f"registered certificate unusable: {exc}") from exc
    if not in_validity:
        raise UpdateRejected("cert_expired", f"the registered certificate of {pid} is not valid now")
    if ctx.node_owner is not None:
        owner = ctx.node_owner(node)
        if owner != pid:
            raise UpdateRejected("node_mismatch", f"node {node} authenticated as {owner}, not {pid}")
    return participant


def _authenticate(reply: Message, ctx: RoundContext, keys: KeyCache, cand: _Candidate) -> None:
    """Decode, then replay / identity / digest / signature checks, in DESIGN §4 order."""
    _decode(reply, ctx, cand)
    manifest = cand.manifest
    assert manifest is not None and cand.arrays is not None and cand.signature is not None
    if manifest.federation != ctx.federation:
        raise UpdateRejected("wrong_federation", f"manifest federation {manifest.federation}")
    if manifest.round != ctx.round:
        raise UpdateRejected("wrong_round", f"manifest round {manifest.round}, expected {ctx.round}")
    if manifest.base_model != ctx.base_model:
        raise UpdateRejected("wrong_base_model", f"trained from {manifest.base_model[:16]}…")
    participant = _signer_of(manifest.participant, ctx, keys, cand.node)
    actual = update_digest(cand.arrays)
    if actual != manifest.update:
        raise UpdateRejected(
            "digest_mismatch", f"tensors hash to {actual[:16]}…, manifest says {manifest.update[:16]}…"
        )
    try:
        verify(manifest.to_bytes(), cand.signature, keys.key(participant.cert_pem))
    except SignatureError as exc:
        raise UpdateRejected(exc.reason, str(exc)) from exc
    except FormatError as exc:
        raise UpdateRejected("bad_signature", f"registered certificate unusable: {exc}") from exc


def _check_content(cand: _Candidate, ctx: RoundContext) -> None:
    """non_finite and wrong_shape: the tensors must be usable in the aggregate."""
    assert cand.arrays is not None
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
                "wrong_shape",
                f"tensor {name!r} is {tensor.dtype}{list(tensor.shape)}, expected {ref.dtype}{list(ref.shape)}",
            )


def _entry(cand: _Candidate, status: str, reason: str | None = None, detail: str | None = None) -> RoundEntry:
    manifest = cand.manifest
    return RoundEntry(
        participant=cand.participant[:128],
        status=status,  # type: ignore[arg-type]
        reason=reason,
        detail=detail[:512] if detail else None,
        node=cand.node[:64],
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


def entry_order(entry: RoundEntry) -> tuple[str, str, str, str]:
    """The order of entries in a round record: independent of reply arrival."""
    return (entry.participant, entry.node or "", entry.manifest_hash or "", entry.reason or "")


def verify_round(
    replies: Iterable[Message], ctx: RoundContext, keys: KeyCache | None = None
) -> RoundVerdict:
    """Check every reply of a round; return ledger entries and accepted updates.

    Entries come sorted by (participant, node, manifest hash) so the recorded round does
    not depend on the order in which replies arrived.
    """
    keys = keys or KeyCache()
    verdict = RoundVerdict()
    authentic: list[_Candidate] = []
    for reply in replies:
        cand = _Candidate(node=str(reply.metadata.src_node_id))
        try:
            _authenticate(reply, ctx, keys, cand)
        except UpdateRejected as exc:
            verdict.entries.append(_entry(cand, "rejected", exc.reason, exc.detail))
            continue
        authentic.append(cand)
    counts: dict[str, int] = {}
    for cand in authentic:
        counts[cand.participant] = counts.get(cand.participant, 0) + 1
    passed: list[_Candidate] = []
    for cand in authentic:
        if counts[cand.participant] > 1:
            verdict.entries.append(_entry(cand, "rejected", "duplicate",
                                          f"{counts[cand.participant]} signed replies from {cand.participant}"))
            continue
        try:
            _check_content(cand, ctx)
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
    verdict.entries.sort(key=entry_order)
    verdict.accepted.sort(key=lambda u: u.participant)
    return verdict


# --- evaluation replies ---------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationContext:
    """What an evaluate reply is checked against: the round and the model it committed."""

    federation: str
    round: int
    model: str
    participants: Mapping[str, Participant]
    node_owner: Callable[[str], str | None] | None = None
    max_num_examples: int = 1_000_000
    now: dt.datetime | None = None


@dataclass
class _Evaluation:
    node: str
    participant: str = "(unknown)"
    manifest: EvaluationManifest | None = None
    manifest_text: str | None = None
    signature: str | None = None


_METRIC_KEYS = {"num-examples": "num_examples", "accuracy-ppm": "accuracy_ppm", "auc-ppm": "auc_ppm",
                "log-loss-ppm": "log_loss_ppm"}


def _decode_evaluation(reply: Message, ctx: EvaluationContext, cand: _Evaluation) -> None:
    """reply_error and malformed for an evaluate reply."""
    if reply.has_error():
        log.warning("evaluation_reply_error", node=cand.node, code=reply.error.code,
                    reason=str(reply.error.reason)[:500])
        raise UpdateRejected("reply_error", f"client error code {reply.error.code}")
    content = reply.content
    try:
        audit = content[AUDIT_KEY]
        if not isinstance(audit, ConfigRecord):
            raise UpdateRejected("malformed", "'audit' is not a ConfigRecord")
        manifest_text, signature = audit["manifest"], audit["signature"]
        if not isinstance(manifest_text, str) or not isinstance(signature, str):
            raise UpdateRejected("malformed", "audit manifest and signature must be strings")
        if len(signature) > MAX_SIGNATURE_B64:
            raise UpdateRejected("malformed", f"signature longer than {MAX_SIGNATURE_B64} characters")
        cand.manifest = EvaluationManifest.parse(manifest_text)
        cand.manifest_text, cand.signature = manifest_text, signature
        cand.participant = cand.manifest.participant
        metrics = content["metrics"]
        if not isinstance(metrics, MetricRecord):
            raise UpdateRejected("malformed", "'metrics' is not a MetricRecord")
        reported = {field: metrics.get(key) for key, field in _METRIC_KEYS.items()}
    except UpdateRejected:
        raise
    except FormatError as exc:
        raise UpdateRejected("malformed", f"evaluation manifest: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise UpdateRejected("malformed", f"reply content: {type(exc).__name__}: {exc}"[:500]) from exc
    manifest = cand.manifest
    signed = {"num_examples": manifest.num_examples, **manifest.metrics()}
    if reported != signed:
        raise UpdateRejected("malformed", "the reply's metrics differ from the signed evaluation manifest")
    if manifest.num_examples > ctx.max_num_examples:
        raise UpdateRejected("malformed", f"num_examples {manifest.num_examples} above {ctx.max_num_examples}")


def _authenticate_evaluation(reply: Message, ctx: EvaluationContext, keys: KeyCache, cand: _Evaluation) -> None:
    _decode_evaluation(reply, ctx, cand)
    manifest = cand.manifest
    assert manifest is not None and cand.signature is not None
    if manifest.federation != ctx.federation:
        raise UpdateRejected("wrong_federation", f"manifest federation {manifest.federation}")
    if manifest.round != ctx.round:
        raise UpdateRejected("wrong_round", f"manifest round {manifest.round}, expected {ctx.round}")
    if manifest.model != ctx.model:
        raise UpdateRejected("wrong_model", f"evaluated {manifest.model[:16]}…, committed {ctx.model[:16]}…")
    participant = _signer_of(manifest.participant, ctx, keys, cand.node)
    try:
        verify(manifest.to_bytes(), cand.signature, keys.key(participant.cert_pem))
    except SignatureError as exc:
        raise UpdateRejected(exc.reason, str(exc)) from exc
    except FormatError as exc:
        raise UpdateRejected("bad_signature", f"registered certificate unusable: {exc}") from exc


def _evaluation_entry(cand: _Evaluation, status: str, reason: str | None = None,
                      detail: str | None = None) -> EvaluationEntry:
    manifest = cand.manifest
    return EvaluationEntry(
        participant=cand.participant[:128],
        status=status,  # type: ignore[arg-type]
        reason=reason,
        detail=detail[:512] if detail else None,
        node=cand.node[:64],
        manifest=cand.manifest_text if manifest is not None else None,
        manifest_hash=manifest.hash() if manifest is not None else None,
        signature=cand.signature if manifest is not None else None,
        num_examples=manifest.num_examples if manifest is not None else None,
        accuracy_ppm=manifest.accuracy_ppm if manifest is not None else None,
        auc_ppm=manifest.auc_ppm if manifest is not None else None,
        log_loss_ppm=manifest.log_loss_ppm if manifest is not None else None,
    )


def evaluation_order(entry: EvaluationEntry) -> tuple[str, str, str, str]:
    """The order of entries in an evaluation record: independent of reply arrival."""
    return (entry.participant, entry.node or "", entry.manifest_hash or "", entry.reason or "")


def verify_evaluations(
    replies: Iterable[Message], ctx: EvaluationContext, keys: KeyCache | None = None
) -> list[EvaluationEntry]:
    """Check every evaluate reply about a round's committed model; entries for the ledger.

    Every reply becomes an entry, accepted or rejected with its reason, sorted so the
    record does not depend on arrival order.
    """
    keys = keys or KeyCache()
    entries: list[EvaluationEntry] = []
    authentic: list[_Evaluation] = []
    for reply in replies:
        cand = _Evaluation(node=str(reply.metadata.src_node_id))
        try:
            _authenticate_evaluation(reply, ctx, keys, cand)
        except UpdateRejected as exc:
            entries.append(_evaluation_entry(cand, "rejected", exc.reason, exc.detail))
            continue
        authentic.append(cand)
    counts: dict[str, int] = {}
    for cand in authentic:
        counts[cand.participant] = counts.get(cand.participant, 0) + 1
    for cand in authentic:
        if counts[cand.participant] > 1:
            entries.append(_evaluation_entry(cand, "rejected", "duplicate",
                                             f"{counts[cand.participant]} signed evaluations from {cand.participant}"))
        else:
            entries.append(_evaluation_entry(cand, "accepted"))
    entries.sort(key=evaluation_order)
    return entries
