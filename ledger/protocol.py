"""The one interface FL code uses to talk to a ledger (DESIGN §6).

A :class:`Ledger` is bound to one caller identity, like a Fabric Gateway connection:
every write is made, and access-controlled, as that identity. ``with_identity`` gives a
view of the same ledger as another caller (an institution, an auditor).

Writes return a :class:`~ledger.records.TxReceipt` only once the transaction is
committed; failures raise a :class:`~ledger.errors.LedgerError` subclass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ledger.declarations import SignedDeclaration
from ledger.identity import Credentials
from ledger.records import (
    EvaluationRecord,
    Federation,
    FederationPolicy,
    HistoryEntry,
    Identity,
    ModelCommit,
    OrgCA,
    Participant,
    RoundRecord,
    RoundView,
    TxReceipt,
)

__all__ = ["Ledger", "IntegrityReport"]


@dataclass
class IntegrityReport:
    """A backend's own proof of its history: blocks re-checked, the head to pin, problems."""

    blocks_checked: int = 0
    transactions_proven: int = 0
    head: tuple[int, str] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


@runtime_checkable
class Ledger(Protocol):
    """Typed access to the ``fedaudit`` contract on some backend."""

    @property
    def identity(self) -> Identity:
        """The caller identity every call is made as."""
        ...

    @property
    def backend(self) -> str:
        """Backend name (``embedded`` or ``fabric``) and location, for reports."""
        ...

    def with_identity(self, who: Credentials | Identity) -> Ledger:
        """The same ledger, called (and, where the backend signs, signed) as ``who``."""
        ...

    def integrity(self, pins: Sequence[str] = (), tx_ids: Sequence[str] = ()) -> IntegrityReport:
        """Re-check the stored history independently of whoever serves it.

        ``pins`` are ``BLOCK:HASH`` heads from earlier audits: a history rewritten from
        some block on, even self-consistently, no longer matches them. ``tx_ids`` are
        transactions that must be in that history, committed valid.
        """
        ...

    # --- writes -------------------------------------------------------------------
    def init_federation(self, federation: str, policy: FederationPolicy) -> TxReceipt:
        """Create a federation; the caller's MSP becomes its coordinator."""
        ...

    def register_org_ca(self, federation: str, ca_cert_pem: str) -> TxReceipt:
        """Register the caller's organisation's CA certificate (once per federation); it
        must have signed the caller's own certificate."""
        ...

    def register_participant(
        self,
        federation: str,
        participant: str,
        cert_pem: str,
        meta: dict[str, Any],
        declaration: SignedDeclaration,
    ) -> TxReceipt:
        """Register an institution's signing certificate (status ``pending``) and its
        dataset size, declared in ``declaration`` signed with the certificate's key.
        The caller's org must have registered the CA that signed the certificate."""
        ...

    def admit_participant(self, federation: str, participant: str) -> TxReceipt:
        """Coordinator: make a participant ``active``."""
        ...

    def revoke_participant(self, federation: str, participant: str, reason: str) -> TxReceipt:
        """Coordinator: make a participant ``revoked``."""
        ...

    def record_round(self, federation: str, round: int, record: RoundRecord) -> TxReceipt:
        """Coordinator: record every reply of a round (once per round)."""
        ...

    def commit_model(self, federation: str, round: int, commit: ModelCommit) -> TxReceipt:
        """Coordinator: commit the round's aggregate (once, after ``record_round``)."""
        ...

    def record_evaluation(self, federation: str, round: int, record: EvaluationRecord) -> TxReceipt:
        """Coordinator: record the institutions' signed evaluations of the model committed
        in ``round`` (once, after ``commit_model``, before the next round is recorded)."""
        ...

    def issue_rewards(self, federation: str, round: int, rewards: dict[str, int]) -> TxReceipt:
        """Coordinator: mint integer token rewards for a committed round (once)."""
        ...

    def transfer(self, federation: str, to: str, amount: int) -> TxReceipt:
        """Participant: move ``amount`` of the caller's own tokens to ``to``."""
        ...

    # --- queries ------------------------------------------------------------------
    def get_federation(self, federation: str) -> Federation:
        """The federation's stored definition."""
        ...

    def get_round(self, federation: str, round: int) -> RoundView:
        """One round's record, commit and rewards with their receipts."""
        ...

    def list_rounds(self, federation: str) -> list[RoundView]:
        """Every recorded round, in round order."""
        ...

    def org_ca(self, federation: str, msp_id: str) -> OrgCA:
        """The CA certificate ``msp_id`` registered in the federation."""
        ...

    def org_cas(self, federation: str) -> list[OrgCA]:
        """Every registered org CA, sorted by MSP id."""
        ...

    def participant(self, federation: str, participant: str) -> Participant:
        """One participant's registration."""
        ...

    def participants(self, federation: str) -> list[Participant]:
        """Every participant, sorted by id."""
        ...

    def history(self, federation: str, participant: str) -> list[HistoryEntry]:
        """Every change of a participant's record, oldest first."""
        ...

    def balance(self, federation: str, participant: str) -> int:
        """A participant's token balance."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
