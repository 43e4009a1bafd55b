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
content is recorded as ``malformed`` and the round goes on. Tensors are decoded only
after their declared names, dtypes, shapes and sizes fit the global model's bound
(:func:`reply_bound`), by a parser that allocates no more than was declared; a round
decodes at most ``max_round_bytes`` in all (replies taken in node order, so the
outcome does not depend on arrival).

A participant's signed ``num_examples`` may not exceed the dataset size it declared at
registration (``examples_over_declared``, checked right after the ``malformed`` bounds).
The outlier test (:func:`ledger.robustness.outliers`) weighs example counts as well as
the size of each change, with the on-ledger policy's parameters, and the accepted
updates carry their FedAvg weights capped by the policy (:func:`ledger.aggregate.capped`).

After the duplicate check, every authenticated update goes through the rules shared with
the auditor (:mod:`ledger.admission`): its signed training claim against the policy
(``training_mismatch``, ``bad_privacy_claim``, ``privacy_budget_exceeded``), its content
decoded from what was sent (``bad_compression``, ``non_finite``, ``wrong_shape``), and the
round-level tests (``no_training``, ``copied_update``, ``outlier``, ``robust_discarded``).

:func:`verify_evaluations` does the same for the evaluate replies about the model a round
committed: reply error → malformed → wrong federation / round / model → unknown, not
admitted, revoked, expired or node bound to another participant → bad signature →
duplicate (among authenticated replies, for the reason given above).
"""

from __future__ import annotations

import datetime as dt
import io
import math
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from numpy.lib import format as npy_format

from fl.signing import AUDIT_KEY
from ledger.aggregate import WeightedUpdate, capped
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
from ledger.formats import PPM
from ledger.admission import claim_rejection, dense_update, round_rejections, signed_epsilon
from ledger.records import EvaluationEntry, FederationPolicy, Participant, RoundEntry

__all__ = ["RoundContext", "RoundVerdict", "UpdateRejected", "verify_round", "entry_order", "KeyCache",
           "EvaluationContext", "verify_evaluations", "reply_bound", "MAX_ROUND_BYTES", "npy_header",
           "NpyVersionError"]

# What one round may decode in all, by default: replies past it are refused unread.
MAX_ROUND_BYTES = 2 << 30
# An .npy header is ~128 bytes; version 1.0 allows 64 KiB, more is not a tensor.
_MAX_NPY_HEADER = 65_546
_NUMERIC_KINDS = "biufc"

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
    # The federation's on-ledger policy: num_examples bound, outlier test, weight cap.
    # Without one (older callers), the two fields below and the policy defaults apply.
    policy: FederationPolicy | None = None
    max_norm_ratio: float = 10.0
    max_num_examples: int = 1_000_000
    # G_{r-1}, the model the previous round trained from (None in round 1): the outlier
    # test's reference when a round has few candidates, and last round's step that a
    # copied update would repeat.
    previous: Mapping[str, np.ndarray] | None = None
    # The ε each participant's accepted updates of earlier rounds signed (DP on).
    privacy_spent: Mapping[str, int] = field(default_factory=dict)
    # Bytes one reply's tensors may declare (default: reply_bound(base_arrays)), and
    # bytes the whole round may decode.
    max_reply_bytes: int | None = None
    max_round_bytes: int = MAX_ROUND_BYTES
    # When certificates are checked for validity (default: now).
    now: dt.datetime | None = None

    def rules(self) -> FederationPolicy:
        """The policy the round is checked under."""
        if self.policy is not None:
            return self.policy
        return FederationPolicy(max_num_examples=self.max_num_examples,
                                outlier_norm_ratio_ppm=round(self.max_norm_ratio * PPM))

    def reply_bytes(self) -> int:
        """The most tensor bytes one reply may declare."""
        return self.max_reply_bytes if self.max_reply_bytes is not None else reply_bound(self.base_arrays)


def reply_bound(base_arrays: Mapping[str, np.ndarray]) -> int:
    """The default bound on one reply's tensor bytes: twice the global model, plus 64 KiB.

    Room for a wrongly shaped but signed update to be decoded and recorded as
    ``wrong_shape`` (evidence the auditor can recompute), none for a memory bomb.
    """
    return 2 * sum(int(np.asarray(a).nbytes) for a in base_arrays.values()) + 65_536


@dataclass
class RoundVerdict:
    """Entries for ``RecordRound`` and the accepted updates for aggregation."""

    entries: list[RoundEntry] = field(default_factory=list)
    accepted: list[WeightedUpdate] = field(default_factory=list)
    # What each accepted participant sent and signed (its manifest's ``update``): the
    # form the artifact store keeps, which ``accepted`` holds decoded (uncompressed).
    sent: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

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
    nbytes: int = 0  # tensor bytes decoded for it (counted against the round's budget)


@dataclass
class _Budget:
    """Tensor bytes the round may still decode."""

    left: int


# What decoding hostile bytes can raise (numpy's loader, zip, JSON nesting, bad types).
_DECODE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, EOFError, OSError,
                  zipfile.BadZipFile, RecursionError, UnicodeError)


def _declared_bytes(record: ArrayRecord, ctx: RoundContext) -> int:
    """The tensor bytes ``record`` declares, checked against the global model before any
    tensor is decoded: plain numeric dtypes, shapes of non-negative sizes, data no longer
    than declared, no more tensors or bytes than the reply bound allows."""
    if len(record) > 2 * len(ctx.base_arrays) + 16:
        raise UpdateRejected("malformed", f"{len(record)} tensors, the global model has {len(ctx.base_arrays)}")
    limit = ctx.reply_bytes()
    total = 0
    for name, array in record.items():
        if not isinstance(array, Array) or array.stype != "numpy.ndarray":
            raise UpdateRejected("malformed", f"tensor {name[:64]!r} is not a numpy array")
        try:
            dtype = np.dtype(array.dtype)
        except (TypeError, ValueError) as exc:
            raise UpdateRejected("malformed", f"tensor {name[:64]!r} declares dtype {str(array.dtype)[:32]!r}") from exc
        shape = array.shape
        if (dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None
                or dtype.subdtype is not None):
            raise UpdateRejected("malformed", f"tensor {name[:64]!r} declares dtype {dtype.str}, not a plain number")
        if not isinstance(shape, (tuple, list)) or len(shape) > 32 or any(
                type(d) is not int or d < 0 for d in shape):
            raise UpdateRejected("malformed", f"tensor {name[:64]!r} declares shape {str(shape)[:64]}")
        nbytes = math.prod(shape) * dtype.itemsize
        total += nbytes
        if total > limit:
            raise UpdateRejected("malformed", f"tensors declare more than {limit} bytes (the reply bound)")
        if not isinstance(array.data, bytes) or len(array.data) > nbytes + _MAX_NPY_HEADER:
            raise UpdateRejected("malformed", f"tensor {name[:64]!r} carries more bytes than it declares")
    return total


class NpyVersionError(ValueError):
    """An ``.npy`` payload of a format version other than 1.0 or 2.0."""

    def __init__(self, version: tuple[int, int]) -> None:
        super().__init__(f".npy version {version}")
        self.version = version


def npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of an ``.npy`` payload, from its
    header alone: nothing is allocated for what the header claims. Raises ValueError
    (:class:`NpyVersionError` for an unknown version), EOFError or SyntaxError."""
    stream = io.BytesIO(data)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise NpyVersionError(version)
    return tuple(shape), bool(fortran), dtype, stream.tell()


def _decode_tensor(name: str, array: Array) -> np.ndarray:
    """Decode one ``.npy`` payload that must hold exactly the declared dtype and shape.

    The header is read and compared first, so nothing larger than declared is allocated
    (``np.load`` would allocate whatever shape a header claims before reading the data).
    """
    data = array.data
    try:
        shape, fortran, dtype, offset = npy_header(data)
    except NpyVersionError as exc:
        raise UpdateRejected("malformed", f"tensor {name[:64]!r} uses .npy version {exc.version}") from exc
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise UpdateRejected("malformed", f"tensor {name[:64]!r} is not an .npy array: {exc}"[:300]) from exc
    if dtype != np.dtype(array.dtype) or tuple(shape) != tuple(array.shape):
        raise UpdateRejected("malformed", f"tensor {name[:64]!r} holds {dtype.str}{list(shape)}, "
                                          f"declares {array.dtype}{list(array.shape)}"[:300])
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise UpdateRejected("malformed", f"tensor {name[:64]!r} has {len(data) - offset} data bytes, "
                                          f"its shape needs {count * dtype.itemsize}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="C")


def _decode(reply: Message, ctx: RoundContext, cand: _Candidate, budget: _Budget) -> None:
    """reply_error, malformed and examples_over_declared: fill ``cand`` from the reply or
    raise UpdateRejected."""
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
        record = content["arrays"]
        declared = _declared_bytes(record, ctx)
        if declared > budget.left:
            raise UpdateRejected("malformed", f"the round's memory bound ({ctx.max_round_bytes} bytes) is "
                                              "reached: the reply was not decoded")
        budget.left -= declared
        cand.nbytes = declared
        cand.arrays = {name: _decode_tensor(name, array) for name, array in record.items()}
    except UpdateRejected:
        raise
    except FormatError as exc:
        raise UpdateRejected("malformed", f"manifest: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise UpdateRejected("malformed", f"reply content: {type(exc).__name__}: {exc}"[:500]) from exc
    manifest = cand.manifest
    if num_examples != manifest.num_examples:
        raise UpdateRejected("malformed", "metrics num-examples differs from the signed manifest")
    bound = ctx.rules().max_num_examples
    if not 1 <= manifest.num_examples <= bound:
        raise UpdateRejected("malformed", f"num_examples {manifest.num_examples} outside 1..{bound}")
    participant = ctx.participants.get(manifest.participant)
    declared_examples = participant.declared_examples if participant is not None else None
    if declared_examples is not None and manifest.num_examples > declared_examples:
        raise UpdateRejected("examples_over_declared", f"num_examples {manifest.num_examples} above the "
                                                       f"{declared_examples} declared at registration")


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


def _authenticate(reply: Message, ctx: RoundContext, keys: KeyCache, cand: _Candidate, budget: _Budget) -> None:
    """Decode, then replay / identity / digest / signature checks, in DESIGN §4 order."""
    _decode(reply, ctx, cand, budget)
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


def _check_content(cand: _Candidate, ctx: RoundContext) -> dict[str, np.ndarray]:
    """The signed training claim, then the content: return the dense update or raise
    UpdateRejected (rules shared with the auditor, :mod:`ledger.admission`)."""
    assert cand.arrays is not None and cand.manifest is not None
    rules = ctx.rules()
    rejection = claim_rejection(cand.manifest, rules, ctx.privacy_spent.get(cand.participant, 0))
    if rejection is None:
        dense, rejection = dense_update(cand.arrays, ctx.base_arrays, rules)
        if dense is not None:
            return dense
    raise UpdateRejected(*rejection)


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
        epsilon_ppm=signed_epsilon(manifest) if manifest is not None else None,
    )


def entry_order(entry: RoundEntry) -> tuple[str, str, str, str]:
    """The order of entries in a round record: independent of reply arrival."""
    return (entry.participant, entry.node or "", entry.manifest_hash or "", entry.reason or "")


def verify_round(
    replies: Iterable[Message], ctx: RoundContext, keys: KeyCache | None = None
) -> RoundVerdict:
    """Check every reply of a round; return ledger entries and accepted updates.

    Entries come sorted by (participant, node, manifest hash) so the recorded round does
    not depend on the order in which replies arrived. ``accepted`` carries each update's
    FedAvg weight: its signed ``num_examples`` capped by the policy's
    ``max_weight_share_ppm`` (the weights ``CommitModel`` must record).
    """
    keys = keys or KeyCache()
    verdict = RoundVerdict()
    authentic: list[_Candidate] = []
    budget = _Budget(ctx.max_round_bytes)
    # Node order, not arrival order, decides which replies the memory bound refuses.
    for reply in sorted(replies, key=_node_order):
        cand = _Candidate(node=str(reply.metadata.src_node_id))
        try:
            _authenticate(reply, ctx, keys, cand, budget)
        except UpdateRejected as exc:
            budget.left += cand.nbytes  # its tensors are dropped with it
            verdict.entries.append(_entry(cand, "rejected", exc.reason, exc.detail))
            continue
        authentic.append(cand)
    counts: dict[str, int] = {}
    for cand in authentic:
        counts[cand.participant] = counts.get(cand.participant, 0) + 1
    passed: list[_Candidate] = []
    signed: list[WeightedUpdate] = []
    for cand in authentic:
        if counts[cand.participant] > 1:
            verdict.entries.append(_entry(cand, "rejected", "duplicate",
                                          f"{counts[cand.participant]} signed replies from {cand.participant}"))
            continue
        try:
            dense = _check_content(cand, ctx)
        except UpdateRejected as exc:
            verdict.entries.append(_entry(cand, "rejected", exc.reason, exc.detail))
            continue
        passed.append(cand)
        signed.append(WeightedUpdate(cand.participant, cand.manifest.num_examples, dense))  # type: ignore[union-attr]
    rules = ctx.rules()
    rejected = round_rejections(ctx.base_arrays, signed, rules, ctx.previous)
    for cand in passed:
        if cand.participant in rejected:
            verdict.entries.append(_entry(cand, "rejected", *rejected[cand.participant]))
        else:
            verdict.entries.append(_entry(cand, "accepted"))
            verdict.sent[cand.participant] = cand.arrays  # type: ignore[assignment]
    verdict.accepted = capped([u for u in signed if u.participant not in rejected], rules.max_weight_share_ppm)
    verdict.entries.sort(key=entry_order)
    verdict.accepted.sort(key=lambda u: u.participant)
    return verdict


def _node_order(reply: Message) -> tuple[int, str]:
    node = str(reply.metadata.src_node_id)
    return (len(node), node)


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
