"""An auditor's recomputation of every content-based rejection (``fedledger audit verify``).

A coordinator that records an honest reply as rejected takes its weight and its reward
away; the round record alone cannot show it. So every rejected reply's evidence is kept
— the signed manifest and signature on the ledger, the tensors in the artifact store —
and this module decides each rejection again from that evidence, the round record and
the participant history the ledger holds at the record's transaction time:

* ``wrong_federation`` / ``wrong_round`` / ``wrong_base_model``: the signed manifest's fields;
* ``unknown_participant`` / ``not_admitted`` / ``revoked``: the participant's state when
  the round was recorded;
* ``digest_mismatch``: the received tensors (named in the entry's ``detail``, see
  :func:`mismatch_detail`) are stored and hash to something other than the manifest says;
* ``bad_signature`` / ``high_s``: the signature fails, for that reason, against the
  certificate registered then;
* ``duplicate``: the participant had at least two authenticated replies that round;
* ``training_mismatch`` / ``bad_privacy_claim`` / ``privacy_budget_exceeded``: the signed
  training claim against the policy and the ε the participant's accepted updates of
  earlier rounds signed (:func:`ledger.admission.claim_rejection`);
* ``bad_compression`` / ``non_finite`` / ``wrong_shape``: the stored update, as sent,
  decoded against the round's base model (:func:`ledger.admission.dense_update`);
* ``no_training`` / ``copied_update`` / ``outlier`` / ``robust_discarded``: the
  coordinator's own round-level tests (:func:`ledger.admission.round_rejections`) over
  the round's candidates (accepted, and rejected by one of these), with the on-ledger
  policy's parameters and the previous round's global model.

The same rules run the other way for *accepted* entries: an update the claim check or
the round-level tests reject (a multi-Krum selection the coordinator did not compute, a
copy it let through) is a problem of the audit too.

A rejection the evidence does not support — the evidence missing, or the reason not the
one the checks give first — is a problem of the audit. Reasons that rest on what only
the transport saw (``no_reply``, ``reply_error``, ``malformed``, ``node_mismatch``,
``cert_expired``) are not recomputed here: the institution's own journal and receipts
(``fedledger audit mine``) are the check for those.

Needs no Flower and no torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ledger.admission import (
    CLAIM_REASONS,
    ROUND_REASONS,
    Rejection,
    claim_rejection,
    dense_update,
    privacy_spent,
    round_rejections,
)
from ledger.aggregate import WeightedUpdate
from ledger.artifacts import ArtifactError, ArtifactStore
from ledger.errors import LedgerError, RecordNotFound
from ledger.formats import FormatError, Manifest, SignatureError, verify
from ledger.protocol import Ledger
from ledger.records import FederationPolicy, HistoryEntry, Participant, RoundEntry, RoundView

__all__ = ["RECOMPUTED_REASONS", "mismatch_detail", "received_digest", "audit_rejections", "check_rejections",
           "entry_check"]

# Rejections an auditor decides again from the evidence alone.
RECOMPUTED_REASONS: frozenset[str] = frozenset({
    "wrong_federation", "wrong_round", "wrong_base_model", "unknown_participant", "not_admitted", "revoked",
    "digest_mismatch", "bad_signature", "high_s", "duplicate", *CLAIM_REASONS, "bad_compression", "non_finite",
    "wrong_shape", *ROUND_REASONS,
})

_MISMATCH = re.compile(r"^tensors hash to ([0-9a-f]{64}), manifest says ([0-9a-f]{64})$")


def mismatch_detail(received: str, claimed: str) -> str:
    """The ``detail`` of a ``digest_mismatch`` entry: both digests in full, so the
    received tensors can be found in the artifact store by what the ledger says."""
    return f"tensors hash to {received}, manifest says {claimed}"


def received_digest(detail: str | None) -> str | None:
    """The received tensors' digest named by a :func:`mismatch_detail`; None otherwise."""
    match = _MISMATCH.match(detail or "")
    return match.group(1) if match else None


def _state_at(history: list[HistoryEntry], moment_ms: int) -> Participant | None:
    """A participant's record as it stood at ``moment_ms`` (None: not registered yet)."""
    state = None
    for change in history:
        if change.timestamp_ms <= moment_ms:
            state = change.value
    return state


class _Round:
    """One round's evidence, loaded lazily and once."""

    def __init__(self, view: RoundView, policy: FederationPolicy, artifacts: ArtifactStore,
                 state: Callable[[str], Participant | None], previous_base: str | None = None,
                 spent: Mapping[str, int] | None = None) -> None:
        self.view = view
        self.spent = spent or {}
        self._decided: dict[str, Rejection] | None = None
        self.previous_base = previous_base
        self.policy = policy
        self.artifacts = artifacts
        self.state = state
        self._tensors: dict[str, dict[str, np.ndarray] | None] = {}
        self._base: dict[str, np.ndarray] | None = None
        self.problems: list[str] = []

    def tensors(self, digest: str | None) -> dict[str, np.ndarray] | None:
        if digest is None:
            return None
        if digest not in self._tensors:
            try:
                self._tensors[digest] = self.artifacts.get(digest)
            except ArtifactError:
                self._tensors[digest] = None
        return self._tensors[digest]

    def base(self) -> dict[str, np.ndarray] | None:
        if self._base is None:
            self._base = self.tensors(self.view.record.base_model)
        return self._base

    def manifest(self, entry: RoundEntry) -> Manifest | None:
        if entry.manifest is None:
            return None
        try:
            manifest = Manifest.parse(entry.manifest)
        except FormatError:
            return None
        if manifest.hash() != entry.manifest_hash or manifest.update != entry.update:
            return None
        if manifest.participant[:128] != entry.participant:
            return None
        return manifest

    def identity_reason(self, manifest: Manifest) -> str | None:
        """The first of the replay and identity checks that fails, or None."""
        record = self.view.record
        if manifest.federation != self.view.federation:
            return "wrong_federation"
        if manifest.round != self.view.round:
            return "wrong_round"
        if manifest.base_model != record.base_model:
            return "wrong_base_model"
        participant = self.state(manifest.participant)
        if participant is None:
            return "unknown_participant"
        if participant.status == "pending":
            return "not_admitted"
        if participant.status == "revoked":
            return "revoked"
        return None

    def signature_reason(self, manifest: Manifest, entry: RoundEntry) -> str | None:
        participant = self.state(manifest.participant)
        if participant is None or entry.signature is None:
            return "bad_signature"
        try:
            verify(manifest.to_bytes(), entry.signature, participant.cert_pem)
        except SignatureError as exc:
            return exc.reason
        except FormatError:
            return "bad_signature"
        return None

    def authenticated(self, entry: RoundEntry) -> bool:
        """Whether an entry passed every check up to the signature (and its update is stored)."""
        manifest = self.manifest(entry)
        return (manifest is not None and self.identity_reason(manifest) is None
                and self.signature_reason(manifest, entry) is None and self.tensors(manifest.update) is not None)

    def dense(self, manifest: Manifest) -> tuple[dict[str, np.ndarray] | None, Rejection | None]:
        """A stored update decoded as the coordinator decodes it, or its content rejection."""
        base, sent = self.base(), self.tensors(manifest.update)
        if base is None or sent is None:
            return None, None
        return dense_update(sent, base, self.policy)

    def claim(self, manifest: Manifest) -> Rejection | None:
        """The training-claim rejection of a manifest, as the coordinator decided it."""
        return claim_rejection(manifest, self.policy, self.spent.get(manifest.participant, 0))

    def round_decisions(self) -> dict[str, Rejection] | None:
        """The round-level rejections among the round's candidates, by the coordinator's
        tests; None if some evidence is missing."""
        if self._decided is not None:
            return self._decided
        base = self.base()
        if base is None:
            return None
        candidates: list[WeightedUpdate] = []
        for entry in self.view.record.entries:
            if entry.status == "accepted" or entry.reason in ROUND_REASONS:
                manifest = self.manifest(entry)
                if manifest is None:
                    return None
                dense, rejection = self.dense(manifest)
                if dense is None or rejection is not None:
                    return None
                candidates.append(WeightedUpdate(entry.participant, manifest.num_examples, dense))
        previous = None
        if self.previous_base is not None:
            previous = self.tensors(self.previous_base)
            if previous is None:
                return None
        self._decided = round_rejections(base, candidates, self.policy, previous)
        return self._decided


def _supported(entry: RoundEntry, rnd: _Round) -> str | None:
    """Why the evidence does not support ``entry``'s rejection; None when it does."""
    reason = entry.reason
    manifest = rnd.manifest(entry)
    if manifest is None:
        return "its signed manifest is missing or does not match the entry"
    first = rnd.identity_reason(manifest)
    if first is not None or reason in ("wrong_federation", "wrong_round", "wrong_base_model",
                                       "unknown_participant", "not_admitted", "revoked"):
        return None if first == reason else f"the evidence gives {first or 'no such failure'}"
    if reason == "digest_mismatch":
        received = received_digest(entry.detail)
        if received is None:
            return "the received tensors' digest is not recorded"
        if received == manifest.update:
            return "the recorded received digest is the manifest's"
        if rnd.tensors(received) is None:
            return f"the received tensors {received[:16]}… are not in the artifact store"
        return None
    signature = rnd.signature_reason(manifest, entry)
    if reason in ("bad_signature", "high_s"):
        return None if signature == reason else f"the signature check gives {signature or 'a valid signature'}"
    if signature is not None:
        return f"the signature check gives {signature} first"
    arrays = rnd.tensors(manifest.update)
    base = rnd.base()
    if arrays is None:
        return f"the update {manifest.update[:16]}… is not in the artifact store"
    if base is None:
        return "the round's base model is not in the artifact store"
    if reason == "duplicate":
        twins = [e for e in rnd.view.record.entries if e.participant == entry.participant and rnd.authenticated(e)]
        return None if len(twins) >= 2 else "the participant has only one authenticated reply this round"
    claim = rnd.claim(manifest)
    if reason in CLAIM_REASONS:
        return None if claim is not None and claim[0] == reason else \
            f"the training claim check gives {claim[0] if claim else 'a claim within the policy'}"
    if claim is not None:
        return f"the training claim check gives {claim[0]} first"
    _, content = rnd.dense(manifest)
    if reason in ("bad_compression", "non_finite", "wrong_shape"):
        return None if content is not None and content[0] == reason else \
            f"the update checks give {content[0] if content else 'a usable update'}"
    if content is not None:
        return f"the update checks give {content[0]} first"
    decided = rnd.round_decisions()
    if decided is None:
        return "the round's candidates cannot all be loaded to redo the round's tests"
    found = decided.get(entry.participant)
    if found is None or found[0] != reason:
        return f"the round's tests with the policy's parameters give {found[0] if found else 'no rejection'}"
    return None


def _accepted_problem(entry: RoundEntry, rnd: _Round) -> str | None:
    """Why an accepted entry should have been rejected by the claim or round-level rules; None if not."""
    manifest = rnd.manifest(entry)
    if manifest is None:
        return None  # reported by the audit of accepted entries
    claim = rnd.claim(manifest)
    if claim is not None:
        return f"its training claim is {claim[0]}: {claim[1]}"
    decided = rnd.round_decisions()
    found = None if decided is None else decided.get(entry.participant)
    return None if found is None else f"the round's tests reject it as {found[0]}: {found[1]}"


def check_rejections(view: RoundView, policy: FederationPolicy, artifacts: ArtifactStore,
                     state: Callable[[str], Participant | None], previous_base: str | None = None,
                     spent: Mapping[str, int] | None = None) -> list[str]:
    """Problems with ``view``'s rejections: each content-based one decided again.

    ``state(participant)`` is that participant's record as it stood when the round was
    recorded (None: not registered then); ``previous_base`` is the base model of the
    round before (None in round 1), for the outlier test's reference; ``spent`` the ε each
    participant's accepted updates of earlier rounds signed.
    """
    rnd = _Round(view, policy, artifacts, state, previous_base, spent)
    problems: list[str] = []
    duplicated = {e.participant for e in view.record.entries if e.reason == "duplicate"}
    for entry in view.record.entries:
        if entry.status == "accepted" and entry.participant in duplicated:
            problems.append(f"round {view.round} {entry.participant}: accepted although rejected as a duplicate")
        if entry.status == "accepted":
            wrong = _accepted_problem(entry, rnd)
            if wrong is not None:
                problems.append(f"round {view.round} {entry.participant}: accepted, but {wrong}")
        if entry.status != "rejected" or entry.reason not in RECOMPUTED_REASONS:
            continue
        why = _supported(entry, rnd)
        if why is not None:
            problems.append(f"round {view.round} {entry.participant}: rejected as {entry.reason}, "
                            f"which the evidence does not support: {why}")
    return problems


def audit_rejections(ledger: Ledger, view: RoundView, policy: FederationPolicy,
                     artifacts: ArtifactStore, spent: Mapping[str, int] | None = None) -> list[str]:
    """:func:`check_rejections` with participant states read from ``ledger``'s history at
    the time ``view`` was recorded."""
    moment = view.record_tx.timestamp_ms
    cache: dict[str, list[HistoryEntry] | None] = {}
    problems: list[str] = []
    previous_base = _previous_base(ledger, view, problems)

    def state(pid: str) -> Participant | None:
        if pid not in cache:
            try:
                cache[pid] = ledger.history(view.federation, pid)
            except RecordNotFound:
                cache[pid] = []
            except (LedgerError, ValueError) as exc:
                problems.append(f"round {view.round}: history of {pid[:64]!r} cannot be read: {exc}")
                cache[pid] = None
        history = cache[pid]
        return None if history is None else _state_at(history, moment)

    return check_rejections(view, policy, artifacts, state, previous_base, spent) + problems


def _previous_base(ledger: Ledger, view: RoundView, problems: list[str]) -> str | None:
    """The base model of the round before ``view`` (None in round 1, or unreadable: reported)."""
    if view.round <= 1:
        return None
    try:
        return ledger.get_round(view.federation, view.round - 1).record.base_model
    except (LedgerError, ValueError) as exc:
        problems.append(f"round {view.round}: the round before cannot be read: {exc}")
        return None


def entry_check(policy: FederationPolicy, artifacts: ArtifactStore, histories: Mapping[str, list[HistoryEntry]],
                base_models: Mapping[int, str], views: Sequence[RoundView]
                ) -> Callable[[RoundView, RoundEntry], str | None]:
    """A check of single rejections, for an institution holding its own history
    (``fedledger audit mine``): why ``entry`` of ``view`` is not supported by its evidence,
    or None. Participants missing from ``histories`` count as not registered;
    ``base_models`` maps each round to its recorded base model, ``views`` are the
    federation's rounds (for the ε a participant spent before a round)."""

    def check(view: RoundView, entry: RoundEntry) -> str | None:
        if entry.status != "rejected" or entry.reason not in RECOMPUTED_REASONS:
            return None

        def state(pid: str) -> Participant | None:
            return _state_at(histories.get(pid, []), view.record_tx.timestamp_ms)

        spent = privacy_spent(views, view.round)  # what the participant's earlier accepted rounds signed
        return _supported(entry, _Round(view, policy, artifacts, state, base_models.get(view.round - 1), spent))

    return check
