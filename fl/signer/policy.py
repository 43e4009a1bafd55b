"""The institution's signing policy: a pure checker, request in, verdict out.

The signer signs a manifest only when every rule holds; otherwise it refuses with one
stable reason, checked in this order (the first that fails is the one recorded):

=====================  ===============================================================
reason                 the request …
=====================  ===============================================================
malformed              is not a canonical DESIGN §3 manifest (or the digest is not hex)
wrong_participant      names another participant than this institution
wrong_federation       names another federation than the one configured
update_mismatch        carries an update digest that differs from the manifest's
num_examples_exceeded  declares ``num_examples`` outside 1 .. the institution's maximum
round_backwards        is for a round before the last one this signer signed
equivocation           is a second, different manifest for a round already signed
ledger_unavailable     cannot be checked: the ledger could not be read (fail closed)
wrong_round            is not for the ledger's current round (last commit + 1)
wrong_base_model       is not trained from the ledger's committed model (round 1: the
                       federation policy's initial model)
=====================  ===============================================================

The same manifest asked for again is not a refusal: the signer returns the signature
it already gave (:class:`Repeat`), so a retried reply cannot be turned into two.

Evaluation manifests (:func:`decide_evaluation`) have their own rules, in this order:
``malformed`` (not a canonical evaluation manifest), ``wrong_participant``,
``wrong_federation``, ``num_examples_exceeded``, ``round_backwards``, ``equivocation``
(at most one evaluation signature per round), ``ledger_unavailable``, ``not_committed``
(the ledger holds no committed model for that round) and ``wrong_model`` (the manifest
names another model than the one the ledger committed in that round).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ledger.errors import LedgerError
from ledger.formats import EvaluationManifest, FormatError, Manifest

__all__ = [
    "REASONS",
    "SignerPolicy",
    "LedgerRound",
    "LedgerState",
    "SignedRound",
    "Approve",
    "Repeat",
    "Refuse",
    "Verdict",
    "decide",
    "EVALUATION_REASONS",
    "decide_evaluation",
]

REASONS = (
    "malformed",
    "wrong_participant",
    "wrong_federation",
    "update_mismatch",
    "num_examples_exceeded",
    "round_backwards",
    "equivocation",
    "ledger_unavailable",
    "wrong_round",
    "wrong_base_model",
)
EVALUATION_REASONS = (
    "malformed",
    "wrong_participant",
    "wrong_federation",
    "num_examples_exceeded",
    "round_backwards",
    "equivocation",
    "ledger_unavailable",
    "not_committed",
    "wrong_model",
)
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SignerPolicy:
    """What this institution agreed to sign: its id, its federation, its data's size."""

    participant: str
    federation: str
    max_num_examples: int


@dataclass(frozen=True)
class LedgerRound:
    """The round the ledger expects next and the model it must be trained from."""

    round: int
    base_model: str


class LedgerState(Protocol):
    """Read-only view of the federation's ledger (the seam tests replace)."""

    def current(self, federation: str) -> LedgerRound:
        """The ledger's current round; raises :class:`~ledger.errors.LedgerError`."""
        ...

    def committed_model(self, federation: str, round: int) -> str | None:
        """The model the ledger committed in ``round`` (None: not committed); raises LedgerError."""
        ...


@dataclass(frozen=True)
class SignedRound:
    """A round this signer already signed: the manifest's hash and the signature."""

    manifest_hash: str
    signature: str


@dataclass(frozen=True)
class Approve:
    """Sign this manifest."""

    manifest: Manifest | EvaluationManifest


@dataclass(frozen=True)
class Repeat:
    """The very manifest was signed before: hand back the same signature."""

    manifest: Manifest | EvaluationManifest
    signature: str


@dataclass(frozen=True)
class Refuse:
    """Do not sign; ``reason`` is one of :data:`REASONS` (or :data:`EVALUATION_REASONS`)."""

    reason: str
    detail: str
    manifest: Manifest | EvaluationManifest | None = None


Verdict = Approve | Repeat | Refuse


def decide(
    policy: SignerPolicy,
    signed: Mapping[int, SignedRound],
    manifest_text: str,
    update: str,
    ledger: LedgerState,
) -> Verdict:
    """Apply the policy to one request; ``signed`` maps rounds to what was signed."""
    try:
        manifest = Manifest.parse(manifest_text)
    except (FormatError, TypeError) as exc:
        return Refuse("malformed", str(exc))
    if not isinstance(update, str) or _HEX64.fullmatch(update) is None:
        return Refuse("malformed", "the update digest must be 64 lowercase hex characters", manifest)
    if manifest.participant != policy.participant:
        return Refuse("wrong_participant", f"this signer signs for {policy.participant}, "
                      f"not {manifest.participant}", manifest)
    if manifest.federation != policy.federation:
        return Refuse("wrong_federation", f"this signer signs for federation {policy.federation}, "
                      f"not {manifest.federation}", manifest)
    if manifest.update != update:
        return Refuse("update_mismatch", "the manifest's update digest is not the update's", manifest)
    if not 1 <= manifest.num_examples <= policy.max_num_examples:
        return Refuse("num_examples_exceeded", f"num_examples {manifest.num_examples} outside 1.."
                      f"{policy.max_num_examples} (the institution's declared maximum)", manifest)
    if signed:
        last = max(signed)
        if manifest.round < last:
            return Refuse("round_backwards", f"round {manifest.round} is before round {last}, "
                          "already signed", manifest)
    previous = signed.get(manifest.round)
    if previous is not None:
        if previous.manifest_hash == manifest.hash():
            return Repeat(manifest, previous.signature)
        return Refuse("equivocation", f"round {manifest.round} was signed already for another "
                      f"manifest ({previous.manifest_hash[:16]}…)", manifest)
    try:
        current = ledger.current(policy.federation)
    except LedgerError as exc:
        return Refuse("ledger_unavailable", f"the ledger could not be read: {exc}", manifest)
    if manifest.round != current.round:
        return Refuse("wrong_round", f"the ledger's current round is {current.round}, "
                      f"not {manifest.round}", manifest)
    if manifest.base_model != current.base_model:
        return Refuse("wrong_base_model", f"round {current.round} trains from "
                      f"{current.base_model[:16]}…, not {manifest.base_model[:16]}…", manifest)
    return Approve(manifest)


def decide_evaluation(
    policy: SignerPolicy,
    signed: Mapping[int, SignedRound],
    manifest_text: str,
    ledger: LedgerState,
) -> Verdict:
    """Apply the evaluation policy to one request; ``signed`` maps rounds to evaluations signed."""
    try:
        manifest = EvaluationManifest.parse(manifest_text)
    except (FormatError, TypeError) as exc:
        return Refuse("malformed", str(exc))
    if manifest.participant != policy.participant:
        return Refuse("wrong_participant", f"this signer signs for {policy.participant}, "
                      f"not {manifest.participant}", manifest)
    if manifest.federation != policy.federation:
        return Refuse("wrong_federation", f"this signer signs for federation {policy.federation}, "
                      f"not {manifest.federation}", manifest)
    if manifest.num_examples > policy.max_num_examples:
        return Refuse("num_examples_exceeded", f"num_examples {manifest.num_examples} above "
                      f"{policy.max_num_examples} (the institution's declared maximum)", manifest)
    if signed:
        last = max(signed)
        if manifest.round < last:
            return Refuse("round_backwards", f"round {manifest.round} is before round {last}, "
                          "whose evaluation is already signed", manifest)
    previous = signed.get(manifest.round)
    if previous is not None:
        if previous.manifest_hash == manifest.hash():
            return Repeat(manifest, previous.signature)
        return Refuse("equivocation", f"an evaluation of round {manifest.round} was signed already "
                      f"({previous.manifest_hash[:16]}…)", manifest)
    try:
        committed = ledger.committed_model(policy.federation, manifest.round)
    except LedgerError as exc:
        return Refuse("ledger_unavailable", f"the ledger could not be read: {exc}", manifest)
    if committed is None:
        return Refuse("not_committed", f"the ledger has no committed model for round {manifest.round}", manifest)
    if manifest.model != committed:
        return Refuse("wrong_model", f"round {manifest.round} committed {committed[:16]}…, "
                      f"not {manifest.model[:16]}…", manifest)
    return Approve(manifest)
