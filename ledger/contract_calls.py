"""The :class:`~ledger.protocol.Ledger` calls spelt as ``fedaudit`` functions and their
string arguments — one place for every backend.

A backend subclasses :class:`ContractCalls` and says only how a transaction is submitted
(:meth:`_submit`: committed, or a :mod:`ledger.errors` error) and how a query is
evaluated (:meth:`_query`: the contract's canonical JSON), plus how round views get
their block numbers (:meth:`get_round`, :meth:`list_rounds`), which backends know
differently.
"""

from __future__ import annotations

import json
from typing import Any

from ledger.declarations import SignedDeclaration
from ledger.formats import canonical_json
from ledger.records import (
    EvaluationRecord,
    Federation,
    FederationPolicy,
    HistoryEntry,
    ModelCommit,
    OrgCA,
    Participant,
    RoundRecord,
    TxReceipt,
)

__all__ = ["ContractCalls"]


def _text(data: bytes) -> str:
    return data.decode("utf-8")


class ContractCalls:
    """Writes and plain queries of the ``fedaudit`` contract, over two backend hooks."""

    def _submit(self, function: str, args: list[str]) -> TxReceipt:
        """Submit one transaction as this ledger's caller and return once it is committed."""
        raise NotImplementedError

    def _query(self, function: str, args: list[str]) -> bytes:
        """Evaluate one query function as this ledger's caller."""
        raise NotImplementedError

    # --- writes ---------------------------------------------------------------------

    def init_federation(self, federation: str, policy: FederationPolicy) -> TxReceipt:
        """Create a federation; the caller's MSP becomes its coordinator."""
        return self._submit("InitFederation", [federation, _text(policy.canonical())])

    def register_org_ca(self, federation: str, ca_cert_pem: str) -> TxReceipt:
        """Register the caller's organisation's CA certificate (once per federation)."""
        return self._submit("RegisterOrgCA", [federation, ca_cert_pem])

    def register_participant(
        self,
        federation: str,
        participant: str,
        cert_pem: str,
        meta: dict[str, Any],
        declaration: SignedDeclaration,
    ) -> TxReceipt:
        """Register the caller's organisation's participant (status ``pending``) with its
        signed dataset-size declaration."""
        return self._submit(
            "RegisterParticipant",
            [federation, participant, cert_pem, _text(canonical_json(meta)), declaration.statement,
             declaration.signature],
        )

    def admit_participant(self, federation: str, participant: str) -> TxReceipt:
        """Coordinator: make a participant ``active``."""
        return self._submit("AdmitParticipant", [federation, participant])

    def revoke_participant(self, federation: str, participant: str, reason: str) -> TxReceipt:
        """Coordinator: make a participant ``revoked``."""
        return self._submit("RevokeParticipant", [federation, participant, reason])

    def record_round(self, federation: str, round: int, record: RoundRecord) -> TxReceipt:
        """Coordinator: record every reply of a round (once per round)."""
        return self._submit("RecordRound", [federation, str(round), _text(record.canonical())])

    def commit_model(self, federation: str, round: int, commit: ModelCommit) -> TxReceipt:
        """Coordinator: commit the round's aggregate (once, after ``record_round``)."""
        return self._submit("CommitModel", [federation, str(round), _text(commit.canonical())])

    def record_evaluation(self, federation: str, round: int, record: EvaluationRecord) -> TxReceipt:
        """Coordinator: record the signed evaluations of a round's committed model (once)."""
        return self._submit("RecordEvaluation", [federation, str(round), _text(record.canonical())])

    def issue_rewards(self, federation: str, round: int, rewards: dict[str, int]) -> TxReceipt:
        """Coordinator: mint integer token rewards for a committed round (once)."""
        return self._submit("IssueRewards", [federation, str(round), _text(canonical_json(rewards))])

    def transfer(self, federation: str, to: str, amount: int) -> TxReceipt:
        """Participant: move ``amount`` of the caller's own tokens to ``to``."""
        return self._submit("Transfer", [federation, to, str(amount)])

    # --- queries --------------------------------------------------------------------

    def get_federation(self, federation: str) -> Federation:
        """The federation's stored definition."""
        return Federation.parse(self._query("GetFederation", [federation]))

    def org_ca(self, federation: str, msp_id: str) -> OrgCA:
        """The CA certificate ``msp_id`` registered in the federation."""
        return OrgCA.parse(self._query("GetOrgCA", [federation, msp_id]))

    def org_cas(self, federation: str) -> list[OrgCA]:
        """Every registered org CA, sorted by MSP id."""
        return [OrgCA.parse(c) for c in json.loads(self._query("ListOrgCAs", [federation]))]

    def participant(self, federation: str, participant: str) -> Participant:
        """One participant's registration."""
        return Participant.parse(self._query("GetParticipant", [federation, participant]))

    def participants(self, federation: str) -> list[Participant]:
        """Every participant, sorted by id."""
        return [Participant.parse(p) for p in json.loads(self._query("ListParticipants", [federation]))]

    def history(self, federation: str, participant: str) -> list[HistoryEntry]:
        """Every change of a participant's record, oldest first."""
        return [HistoryEntry.parse(e) for e in json.loads(self._query("ParticipantHistory", [federation, participant]))]

    def balance(self, federation: str, participant: str) -> int:
        """A participant's token balance."""
        return int(json.loads(self._query("BalanceOf", [federation, participant]))["balance"])
