"""The ``fedaudit`` contract (DESIGN §5): federations, participants, rounds, models, tokens.

Every transaction function takes string arguments (Fabric passes strings) and returns
canonical JSON text. Writes follow guard → read → change → put, read everything before
the first put, and emit exactly one event. Refusals raise a
:class:`~chaincode.errors.ContractError` whose text starts with a stable code.

Range reads in a write must be unpaginated. fabric-chaincode-python 2.5.4's
``get_state_by_range`` and ``get_state_by_partial_composite_key`` send the peer no query
metadata (no page size), so the peer runs a plain range scan, keeps it in the read set for
its phantom-read check, and accepts puts after it. Never use the ``*_with_pagination``
variants in a write: the peer refuses every put after a paginated query, and the library
reports that refusal as success, so the write would be lost silently.

State (composite keys; ``NNNNNNNN`` is the round, zero-padded so keys sort in round order):

=============================== ===========================================================
``fed~F``                       Federation
``orgca~F~MSP``                 ``{"ca_cert_pem", "federation", "msp_id", "registered_ms",
                                "registered_tx"}`` — the CA certificate MSP registered for
                                F, once; it must sign every participant certificate MSP
                                registers, and the registering caller's own certificate
``participant~F~P``             Participant (with its signed ``declared_examples``)
``orgmember~F~MSP~P``           ``{"participant": P}`` — P was registered by MSP; one key
                                per participant, an org's participants are a range read
``pubkey~F~SHA``                ``{"participant": P}`` — the one participant whose
                                certificate has the public key with SHA-256 ``SHA``
``chain~F``                     ``{"last_committed", "last_round", "model"}`` round head
``round~F~NNNNNNNN``            RoundRecord
``commit~F~NNNNNNNN``           ModelCommit
``rewards~F~NNNNNNNN``          ``{participant: units}``
``evaluation~F~NNNNNNNN``       EvaluationRecord: the round's committed model evaluated
                                by the institutions on their hold-outs
``roundtx~F~NNNNNNNN``          ``{"record_tx", "commit_tx"?, "rewards_tx"?}`` each
                                ``{"timestamp_ms", "tx_id"}``
``evaltx~F~NNNNNNNN``           ``{"timestamp_ms", "tx_id"}`` of the RecordEvaluation
``balance~F~P``                 ``{"balance": units}``
``epsilon~F~P``                 ``{"epsilon_ppm": total}`` — the ε P signed over its
                                accepted rounds (differential privacy on); RecordRound
                                refuses a record that takes it above the policy's budget
=============================== ===========================================================

Concurrency. On Fabric a transaction is invalidated at commit when a key it read, or a
key inside a range it read, was changed by a transaction committed before it (MVCC and
phantom-read conflicts). Keys are chosen so that independent transactions touch
disjoint keys; the embedded ledger runs one transaction at a time and never conflicts.

* RegisterOrgCA reads ``fed~F`` and ``orgca~F~MSP`` and writes ``orgca~F~MSP``.
* RegisterParticipant reads ``fed~F``, ``orgca~F~MSP``, ``participant~F~P`` and ``pubkey~F~SHA`` and writes
  ``participant~F~P``, ``orgmember~F~MSP~P`` and ``pubkey~F~SHA``. There is no per-org list
  to rewrite, so registrations of different ids with different keys, by one org or by
  many, never conflict; two registrations of one id or one public key do, as they must.
* AdmitParticipant and RevokeParticipant rewrite only ``participant~F~P``.
* RecordRound, CommitModel and IssueRewards rewrite ``chain~F`` and ``roundtx~F~NNNNNNNN``:
  one coordinator runs them in order, so they are sequential by design. RecordEvaluation
  reads ``chain~F`` and the round's commit and writes only its own keys
  (``evaluation~`` and ``evaltx~``), so an incentive run issuing rewards for the round
  at the same time (it rewrites ``roundtx~``) does not conflict with it. RecordRound also
  reads the accepted participants' records: admitting or revoking one of them at the same
  time invalidates one of the two, which is right, since the record was checked against
  their status.
* Transfer finds its sender by range-reading ``orgmember~F~MSP~``. That range conflicts
  only with a registration by the caller's own org committed meanwhile, which could
  change the answer; the recipient's ``participant~F~P``, which it also reads, only with
  the coordinator admitting or revoking that recipient.
* Balances are one key per participant (``balance~F~P``), read and rewritten by Transfer
  (sender and recipient) and IssueRewards (each participant paid). Two of these conflict
  only when they move the same participant's tokens. For a debit that is a true
  dependency: the balance check must see every earlier debit, or tokens could be spent
  twice. Two credits to one recipient conflict too: the later fails with
  MVCC_READ_CONFLICT and must be submitted again. Per-transaction credit keys would make
  credits conflict-free, but every balance read would become a range sum growing without
  bound while debits stay serial; with one mint per round by the coordinator and
  occasional transfers, one key per balance is the better trade.

Round rules: rounds are recorded consecutively from 1; round *r* may be recorded once
round *r−1* is recorded, committed or not. A round that is recorded but never committed
(a coordinator crashed between RecordRound and CommitModel) is *abandoned* as soon as the
next round is recorded: it stays on the ledger as evidence and can no longer be
committed. A round's evaluation (RecordEvaluation) is recorded once, after its
CommitModel and before the next round is recorded; a round whose evaluation was not
recorded by then keeps none (a resumed coordinator does not back-fill it). Every round's ``base_model`` must be the federation's current model — the model
of the last committed round (before any commit: round 1's base model) — so committed
models always form an unbroken chain. A resuming coordinator therefore records only the
round that has no record, starting from the last committed model.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization

from chaincode.canonical import canonical_bytes, canonical_json, parse_json
from chaincode.certs import check_org_ca, check_participant_cert, load_pem_certificate, valid_at
from chaincode.declaration import check_declaration
from chaincode.errors import AccessDenied, Duplicate, Invalid, NotFound
from chaincode.evaluation import check_accepted_evaluation
from chaincode.evidence import check_accepted_entry
from chaincode.schema import (
    COMMIT,
    EVALUATION,
    ID_RE,
    MAX_AMOUNT,
    META,
    POLICY,
    RECORD,
    REWARDS,
    check_id,
    check_msp,
    parse_amount,
    parse_round,
    policy_training,
)
from chaincode.shim_fixes import Contract, TransactionContext
from chaincode.weights import aggregation_weights
from chaincode.state import (
    balance_of,
    caller_cert,
    caller_msp,
    emit,
    get_json,
    key,
    load_federation,
    load_participant,
    org_members,
    put_json,
    refuse_auditor,
    require_coordinator,
    round_attr,
    stamp,
    tx_ms,
)

__all__ = ["CONTRACT_NAME", "TRANSACTIONS", "QUERIES", "EVENTS", "FedAudit"]

CONTRACT_NAME = "fedaudit"
TRANSACTIONS = (
    "InitFederation",
    "RegisterOrgCA",
    "RegisterParticipant",
    "AdmitParticipant",
    "RevokeParticipant",
    "RecordRound",
    "CommitModel",
    "RecordEvaluation",
    "IssueRewards",
    "Transfer",
)
QUERIES = (
    "GetFederation",
    "GetOrgCA",
    "ListOrgCAs",
    "GetParticipant",
    "ListParticipants",
    "ParticipantHistory",
    "GetRound",
    "ListRounds",
    "BalanceOf",
)
EVENTS = (
    "FederationCreated",
    "OrgCARegistered",
    "ParticipantRegistered",
    "ParticipantAdmitted",
    "ParticipantRevoked",
    "RoundRecorded",
    "ModelCommitted",
    "EvaluationRecorded",
    "RewardsIssued",
    "TokensTransferred",
)
MAX_META_BYTES = 4096


def _accepted_ids(record: dict[str, Any]) -> list[str]:
    return sorted(e["participant"] for e in record["entries"] if e["status"] == "accepted")


async def _round_view(ctx: TransactionContext, fed: str, round_no: int, record: Any) -> dict[str, Any]:
    attr = round_attr(round_no)
    stamps = await get_json(ctx, key(ctx, "roundtx", fed, attr)) or {}
    return {
        "federation": fed,
        "round": round_no,
        "record": record,
        "record_tx": stamps.get("record_tx"),
        "commit": await get_json(ctx, key(ctx, "commit", fed, attr)),
        "commit_tx": stamps.get("commit_tx"),
        "rewards": await get_json(ctx, key(ctx, "rewards", fed, attr)),
        "rewards_tx": stamps.get("rewards_tx"),
        "evaluation": await get_json(ctx, key(ctx, "evaluation", fed, attr)),
        "evaluation_tx": await get_json(ctx, key(ctx, "evaltx", fed, attr)),
    }


async def _set_status(
    ctx: TransactionContext, fed: str, pid: str, status: str, event: str, extra: dict[str, Any]
) -> str:
    participant = await load_participant(ctx, fed, pid)
    written = stamp(ctx)
    participant.update(status=status, updated_ms=written["timestamp_ms"], updated_tx=written["tx_id"])
    await put_json(ctx, key(ctx, "participant", fed, pid), participant)
    emit(ctx, event, {"federation": fed, "participant": pid, "status": status, **extra})
    return canonical_json(participant)


async def _privacy_spent(ctx: TransactionContext, fed: str, record: dict[str, Any],
                         policy: dict[str, Any]) -> dict[str, int]:
    """Each DP participant's ε summed over its accepted rounds, with this record's;
    ``INVALID`` when one would pass the policy's total budget."""
    rule = policy_training(policy)["dp"]
    totals: dict[str, int] = {}
    for entry in record["entries"]:
        if entry["status"] != "accepted" or entry.get("epsilon_ppm") is None:
            continue
        pid = entry["participant"]
        before = await get_json(ctx, key(ctx, "epsilon", fed, pid))
        total = (before or {"epsilon_ppm": 0})["epsilon_ppm"] + entry["epsilon_ppm"]
        if rule is not None and total > rule["epsilon_total_ppm"]:
            raise Invalid(f"accepted entry of {pid}: its ε would total {total} ppm, above the federation's "
                          f"budget of {rule['epsilon_total_ppm']} ppm")
        totals[pid] = total
    return totals


async def _coordinator_round(
    ctx: TransactionContext, fed: str, round: str, function: str
) -> tuple[dict[str, Any], int]:
    """The guard of every per-round write: the coordinator only; the federation and round."""
    msp = caller_msp(ctx)
    check_id(fed, "federation id")
    round_no = parse_round(round)
    federation = await load_federation(ctx, fed)
    require_coordinator(federation, msp, function)
    return federation, round_no


class FedAudit(Contract):
    """The ``fedaudit`` contract: one class, run by Fabric peers and by the embedded ledger."""

    Name = CONTRACT_NAME

    def get_evaluate_transactions(self) -> list[str]:
        """Read-only functions (evaluated, never submitted for ordering)."""
        return list(QUERIES)

    # --- federation -------------------------------------------------------------------

    async def InitFederation(self, ctx: TransactionContext, id: str, policy_json: str) -> str:
        """Create a federation; the caller's MSP becomes its coordinator."""
        msp = caller_msp(ctx)
        fed = check_id(id, "federation id")
        policy = POLICY(parse_json(policy_json, "policy"), "policy")
        if msp in policy["auditor_msps"]:
            raise AccessDenied(f"InitFederation may not be called by the auditor MSP {msp}")
        record_key = key(ctx, "fed", fed)
        if await get_json(ctx, record_key) is not None:
            raise Duplicate(f"federation {fed} exists already")
        written = stamp(ctx)
        federation = {
            "coordinator_msp": msp,
            "created_ms": written["timestamp_ms"],
            "created_tx": written["tx_id"],
            "id": fed,
            "policy": policy,
        }
        await put_json(ctx, record_key, federation)
        emit(ctx, "FederationCreated", {"coordinator_msp": msp, "federation": fed})
        return canonical_json(federation)

    # --- participants -----------------------------------------------------------------

    async def RegisterOrgCA(self, ctx: TransactionContext, fed: str, ca_cert_pem: str) -> str:
        """Register the caller's organisation's CA certificate, once per federation.

        The CA must have signed the caller's own certificate. Every participant the org
        registers afterwards must carry a certificate this CA signed.
        """
        msp = caller_msp(ctx)
        check_id(fed, "federation id")
        federation = await load_federation(ctx, fed)
        if msp == federation["coordinator_msp"]:
            raise AccessDenied(
                f"RegisterOrgCA may not be called by the coordinator MSP {msp}: "
                "only organisations that register participants register their CA"
            )
        refuse_auditor(federation, msp, "RegisterOrgCA")
        own_cert = caller_cert(ctx, msp)
        record_key = key(ctx, "orgca", fed, msp)
        if await get_json(ctx, record_key) is not None:
            raise Duplicate(f"the CA of {msp} is already registered in federation {fed}")
        written = stamp(ctx)
        pem = check_org_ca(ca_cert_pem, own_cert, msp, written["timestamp_ms"])
        org_ca = {
            "ca_cert_pem": pem,
            "federation": fed,
            "msp_id": msp,
            "registered_ms": written["timestamp_ms"],
            "registered_tx": written["tx_id"],
        }
        await put_json(ctx, record_key, org_ca)
        emit(
            ctx,
            "OrgCARegistered",
            {"ca_sha256": hashlib.sha256(pem.encode("ascii")).hexdigest(), "federation": fed, "msp_id": msp},
        )
        return canonical_json(org_ca)

    async def RegisterParticipant(
        self,
        ctx: TransactionContext,
        fed: str,
        pid: str,
        cert_pem: str,
        meta_json: str,
        declaration: str,
        declaration_signature: str,
    ) -> str:
        """Register the caller's organisation's participant, its signing certificate and
        its dataset size, declared in a statement signed with the certificate's key."""
        msp = caller_msp(ctx)
        check_id(fed, "federation id")
        check_id(pid, "participant id")
        meta = META(parse_json(meta_json, "meta"), "meta")
        if len(canonical_bytes(meta)) > MAX_META_BYTES:
            raise Invalid(f"meta is larger than {MAX_META_BYTES} bytes")
        federation = await load_federation(ctx, fed)
        if msp == federation["coordinator_msp"]:
            raise AccessDenied(
                f"RegisterParticipant may not be called by the coordinator MSP {msp}: "
                "participants register through their own organisation"
            )
        refuse_auditor(federation, msp, "RegisterParticipant")
        own_cert = caller_cert(ctx, msp)
        org_ca = await get_json(ctx, key(ctx, "orgca", fed, msp))
        if org_ca is None:
            raise AccessDenied(
                f"{msp} has registered no CA certificate in federation {fed}: RegisterOrgCA first"
            )
        record_key = key(ctx, "participant", fed, pid)
        if await get_json(ctx, record_key) is not None:
            raise Duplicate(f"participant {pid} is already registered in federation {fed}")
        written = stamp(ctx)
        pem = check_participant_cert(cert_pem, own_cert, msp, written["timestamp_ms"], org_ca["ca_cert_pem"])
        declared = check_declaration(
            declaration, declaration_signature, fed, pid, pem, federation["policy"]["max_num_examples"]
        )
        # One public key, one participant: the node binding and the transport's key
        # registry both map a key to exactly one institution, for good (even revoked).
        spki = load_pem_certificate(pem, "certificate").public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_index = key(ctx, "pubkey", fed, hashlib.sha256(spki).hexdigest())
        holder = await get_json(ctx, key_index)
        if holder is not None:
            raise Invalid(
                f"the public key of this certificate is already registered for participant "
                f"{holder['participant']} in federation {fed}"
            )
        participant = {
            "cert_pem": pem,
            "declaration": declaration,
            "declaration_signature": declaration_signature,
            "declared_examples": declared,
            "federation": fed,
            "id": pid,
            "meta": meta,
            "msp_id": msp,
            "registered_ms": written["timestamp_ms"],
            "status": "pending",
            "updated_ms": written["timestamp_ms"],
            "updated_tx": written["tx_id"],
        }
        await put_json(ctx, record_key, participant)
        # One key per participant, never a shared per-org list that every registration of
        # the org would rewrite (see "Concurrency" above).
        await put_json(ctx, key(ctx, "orgmember", fed, msp, pid), {"participant": pid})
        await put_json(ctx, key_index, {"participant": pid})
        emit(
            ctx,
            "ParticipantRegistered",
            {
                "cert_sha256": hashlib.sha256(pem.encode("ascii")).hexdigest(),
                "declared_examples": declared,
                "federation": fed,
                "msp_id": msp,
                "participant": pid,
                "status": "pending",
            },
        )
        return canonical_json(participant)

    async def AdmitParticipant(self, ctx: TransactionContext, fed: str, pid: str) -> str:
        """Coordinator: make a pending participant ``active``."""
        msp = caller_msp(ctx)
        check_id(fed, "federation id")
        check_id(pid, "participant id")
        require_coordinator(await load_federation(ctx, fed), msp, "AdmitParticipant")
        status = (await load_participant(ctx, fed, pid))["status"]
        if status == "active":
            raise Invalid(f"participant {pid} is already active")
        if status == "revoked":
            raise Invalid(f"participant {pid} is revoked and cannot be re-admitted; register a new id")
        return await _set_status(ctx, fed, pid, "active", "ParticipantAdmitted", {})

    async def RevokeParticipant(self, ctx: TransactionContext, fed: str, pid: str, reason: str) -> str:
        """Coordinator: make a participant ``revoked`` (final); the reason goes into the event."""
        msp = caller_msp(ctx)
        check_id(fed, "federation id")
        check_id(pid, "participant id")
        if not isinstance(reason, str) or not 0 < len(reason) <= 512:
            raise Invalid("reason must be 1 to 512 characters long")
        require_coordinator(await load_federation(ctx, fed), msp, "RevokeParticipant")
        if (await load_participant(ctx, fed, pid))["status"] == "revoked":
            raise Invalid(f"participant {pid} is already revoked")
        return await _set_status(ctx, fed, pid, "revoked", "ParticipantRevoked", {"reason": reason})

    # --- rounds -----------------------------------------------------------------------

    async def RecordRound(self, ctx: TransactionContext, fed: str, round: str, record_json: str) -> str:
        """Coordinator: record every reply of a round, once, before aggregation."""
        federation, round_no = await _coordinator_round(ctx, fed, round, "RecordRound")
        record = RECORD(parse_json(record_json, "record"), "record")
        if record["round"] != round_no:
            raise Invalid(f"record.round {record['round']} does not match round {round_no}")
        record_key = key(ctx, "round", fed, round_attr(round_no))
        if await get_json(ctx, record_key) is not None:
            raise Duplicate(f"round {round_no} of federation {fed} is already recorded")
        chain_key = key(ctx, "chain", fed)
        chain = await get_json(ctx, chain_key)
        expected = 1 if chain is None else chain["last_round"] + 1
        if round_no != expected:
            raise Invalid(f"round {round_no} cannot be recorded: the next round of federation {fed} is {expected}")
        initial = federation["policy"]["model"]
        if chain is None and initial and record["base_model"] != initial:
            raise Invalid(
                f"record base_model {record['base_model']} is not the federation's initial model {initial}"
            )
        if chain is not None and record["base_model"] != chain["model"]:
            raise Invalid(
                f"record base_model {record['base_model']} is not the federation's current model "
                f"{chain['model']}"
            )
        seen: set[str] = set()
        for entry in record["entries"]:
            pid = entry["participant"]
            if entry["status"] == "rejected":
                if entry["reason"] is None:
                    raise Invalid(f"rejected entry of {pid!r} must carry a reason")
                continue
            if ID_RE.fullmatch(pid) is None:
                raise Invalid(f"accepted entry names {pid!r}, which is not a participant id")
            if pid in seen:
                raise Invalid(f"participant {pid} has more than one accepted entry")
            seen.add(pid)
            participant = await get_json(ctx, key(ctx, "participant", fed, pid))
            if participant is None:
                raise Invalid(f"accepted entry names participant {pid}, which is not registered")
            if participant["status"] != "active":
                raise Invalid(
                    f"accepted entry names participant {pid}, which is {participant['status']}, not active"
                )
            if not valid_at(participant["cert_pem"], tx_ms(ctx)):
                raise Invalid(f"accepted entry names participant {pid}, whose certificate is not valid now")
            check_accepted_entry(entry, fed, round_no, record["base_model"], participant["cert_pem"],
                                 federation["policy"])
            declared = participant.get("declared_examples")
            if declared is None:
                raise Invalid(f"accepted entry names participant {pid}, which declared no dataset size")
            if entry["num_examples"] > declared:
                raise Invalid(
                    f"accepted entry of {pid}: num_examples {entry['num_examples']} exceeds the "
                    f"{declared} examples it declared at registration"
                )
        spent = await _privacy_spent(ctx, fed, record, federation["policy"])
        written = stamp(ctx)
        for pid, total in spent.items():
            await put_json(ctx, key(ctx, "epsilon", fed, pid), {"epsilon_ppm": total})
        new_chain = {
            "last_committed": 0 if chain is None else chain["last_committed"],
            "last_round": round_no,
            "model": record["base_model"] if chain is None else chain["model"],
        }
        await put_json(ctx, record_key, record)
        await put_json(ctx, key(ctx, "roundtx", fed, round_attr(round_no)), {"record_tx": written})
        await put_json(ctx, chain_key, new_chain)
        emit(
            ctx,
            "RoundRecorded",
            {
                "accepted": _accepted_ids(record),
                "base_model": record["base_model"],
                "federation": fed,
                "record_sha256": hashlib.sha256(canonical_bytes(record)).hexdigest(),
                "rejected": sum(1 for e in record["entries"] if e["status"] == "rejected"),
                "round": round_no,
            },
        )
        return canonical_json(record)

    async def CommitModel(self, ctx: TransactionContext, fed: str, round: str, commit_json: str) -> str:
        """Coordinator: commit the round's aggregate, once, after its RecordRound."""
        federation, round_no = await _coordinator_round(ctx, fed, round, "CommitModel")
        commit = COMMIT(parse_json(commit_json, "commit"), "commit")
        if commit["round"] != round_no:
            raise Invalid(f"commit.round {commit['round']} does not match round {round_no}")
        attr = round_attr(round_no)
        record = await get_json(ctx, key(ctx, "round", fed, attr))
        if record is None:
            raise Invalid(f"CommitModel for round {round_no} needs its RecordRound first")
        record_key = key(ctx, "commit", fed, attr)
        if await get_json(ctx, record_key) is not None:
            raise Duplicate(f"round {round_no} of federation {fed} is already committed")
        chain_key = key(ctx, "chain", fed)
        chain = await get_json(ctx, chain_key)
        if chain["last_round"] != round_no:
            raise Invalid(
                f"round {round_no} was abandoned when round {chain['last_round']} was recorded "
                "and can no longer be committed"
            )
        if commit["base_model"] != record["base_model"]:
            raise Invalid(
                f"commit base_model {commit['base_model']} is not the round's recorded base_model "
                f"{record['base_model']}"
            )
        if commit["base_model"] != chain["model"]:
            raise Invalid(
                f"commit base_model {commit['base_model']} is not the model committed before it "
                f"{chain['model']}"
            )
        accepted = _accepted_ids(record)
        if commit["accepted"] != accepted:
            raise Invalid(
                f"commit.accepted {commit['accepted']} must be the round's accepted participants "
                f"sorted by id {accepted}"
            )
        if sorted(commit["weights"]) != accepted:
            raise Invalid("commit.weights must have exactly one weight per accepted participant")
        aggregation = federation["policy"]["aggregation"]
        if commit["aggregation"] != aggregation:
            raise Invalid(f"commit.aggregation {commit['aggregation']!r} is not the policy's {aggregation!r}")
        expected_weights = aggregation_weights(federation["policy"], record)
        for pid in accepted:
            if commit["weights"][pid] != expected_weights[pid]:
                raise Invalid(
                    f"commit.weights[{pid!r}] is {commit['weights'][pid]}, but the round's signed "
                    f"num_examples give {expected_weights[pid]}"
                )
        if not accepted and commit["model"] != commit["base_model"]:
            raise Invalid("a round with no accepted update must commit its base model unchanged")
        stamps_key = key(ctx, "roundtx", fed, attr)
        stamps = await get_json(ctx, stamps_key) or {}
        written = stamp(ctx)
        await put_json(ctx, record_key, commit)
        await put_json(ctx, stamps_key, {**stamps, "commit_tx": written})
        await put_json(ctx, chain_key, {**chain, "last_committed": round_no, "model": commit["model"]})
        emit(
            ctx,
            "ModelCommitted",
            {
                "accepted": accepted,
                "base_model": commit["base_model"],
                "federation": fed,
                "model": commit["model"],
                "round": round_no,
            },
        )
        return canonical_json(commit)

    async def RecordEvaluation(self, ctx: TransactionContext, fed: str, round: str, record_json: str) -> str:
        """Coordinator: record the institutions' signed evaluations of a round's committed model.

        Once per round, after its CommitModel and before the next round is recorded.
        Accepted entries must be backed by an evaluation manifest the participant (active,
        certificate valid) signed over exactly the recorded metrics and the committed model;
        rejected entries keep bounded evidence and their reason.
        """
        federation, round_no = await _coordinator_round(ctx, fed, round, "RecordEvaluation")
        evaluation = EVALUATION(parse_json(record_json, "evaluation"), "evaluation")
        if evaluation["round"] != round_no:
            raise Invalid(f"evaluation.round {evaluation['round']} does not match round {round_no}")
        attr = round_attr(round_no)
        commit = await get_json(ctx, key(ctx, "commit", fed, attr))
        if commit is None:
            raise Invalid(f"RecordEvaluation for round {round_no} needs its CommitModel first")
        record_key = key(ctx, "evaluation", fed, attr)
        if await get_json(ctx, record_key) is not None:
            raise Duplicate(f"the evaluation of round {round_no} of federation {fed} is already recorded")
        chain = await get_json(ctx, key(ctx, "chain", fed))
        if chain["last_round"] != round_no:
            raise Invalid(
                f"the evaluation of round {round_no} can no longer be recorded: round "
                f"{chain['last_round']} is recorded"
            )
        if evaluation["model"] != commit["model"]:
            raise Invalid(
                f"evaluation model {evaluation['model']} is not the model committed in round {round_no} "
                f"{commit['model']}"
            )
        seen: set[str] = set()
        for entry in evaluation["entries"]:
            pid = entry["participant"]
            if entry["status"] == "rejected":
                if entry["reason"] is None:
                    raise Invalid(f"rejected evaluation of {pid!r} must carry a reason")
                continue
            if ID_RE.fullmatch(pid) is None:
                raise Invalid(f"accepted evaluation names {pid!r}, which is not a participant id")
            if pid in seen:
                raise Invalid(f"participant {pid} has more than one accepted evaluation")
            seen.add(pid)
            participant = await get_json(ctx, key(ctx, "participant", fed, pid))
            if participant is None:
                raise Invalid(f"accepted evaluation names participant {pid}, which is not registered")
            if participant["status"] != "active":
                raise Invalid(
                    f"accepted evaluation names participant {pid}, which is {participant['status']}, not active"
                )
            if not valid_at(participant["cert_pem"], tx_ms(ctx)):
                raise Invalid(f"accepted evaluation names participant {pid}, whose certificate is not valid now")
            check_accepted_evaluation(entry, fed, round_no, commit["model"], participant["cert_pem"],
                                      federation["policy"]["max_num_examples"])
        written = stamp(ctx)
        await put_json(ctx, record_key, evaluation)
        await put_json(ctx, key(ctx, "evaltx", fed, attr), written)
        emit(
            ctx,
            "EvaluationRecorded",
            {
                "accepted": sorted(seen),
                "evaluation_sha256": hashlib.sha256(canonical_bytes(evaluation)).hexdigest(),
                "federation": fed,
                "model": evaluation["model"],
                "rejected": sum(1 for e in evaluation["entries"] if e["status"] == "rejected"),
                "round": round_no,
            },
        )
        return canonical_json(evaluation)

    # --- tokens -----------------------------------------------------------------------

    async def IssueRewards(self, ctx: TransactionContext, fed: str, round: str, rewards_json: str) -> str:
        """Coordinator: mint integer rewards for a committed round, once, within the budget."""
        federation, round_no = await _coordinator_round(ctx, fed, round, "IssueRewards")
        rewards = REWARDS(parse_json(rewards_json, "rewards"), "rewards")
        attr = round_attr(round_no)
        if await get_json(ctx, key(ctx, "round", fed, attr)) is None:
            raise Invalid(f"IssueRewards for round {round_no} needs its RecordRound and CommitModel first")
        commit = await get_json(ctx, key(ctx, "commit", fed, attr))
        if commit is None:
            raise Invalid(f"IssueRewards for round {round_no} needs its CommitModel first")
        record_key = key(ctx, "rewards", fed, attr)
        if await get_json(ctx, record_key) is not None:
            raise Duplicate(f"rewards for round {round_no} of federation {fed} are already issued")
        accepted = set(commit["accepted"])
        paid = {pid: units for pid, units in sorted(rewards.items()) if units > 0}
        for pid in paid:
            if pid not in accepted:
                raise Invalid(f"participant {pid} was not accepted in round {round_no} and cannot be rewarded")
        total = sum(paid.values())
        budget = federation["policy"]["reward_budget"]
        if total > budget:
            raise Invalid(f"rewards total {total} exceeds the round budget {budget}")
        balances = {}
        for pid, units in paid.items():
            balances[pid] = await balance_of(ctx, fed, pid) + units
            if balances[pid] > MAX_AMOUNT:
                raise Invalid(f"balance of {pid} would overflow")
        stamps_key = key(ctx, "roundtx", fed, attr)
        stamps = await get_json(ctx, stamps_key) or {}
        written = stamp(ctx)
        await put_json(ctx, record_key, rewards)
        await put_json(ctx, stamps_key, {**stamps, "rewards_tx": written})
        for pid, balance in balances.items():
            await put_json(ctx, key(ctx, "balance", fed, pid), {"balance": balance})
        payload = {"federation": fed, "rewards": rewards, "round": round_no, "total": total}
        emit(ctx, "RewardsIssued", payload)
        return canonical_json(payload)

    async def Transfer(self, ctx: TransactionContext, fed: str, to: str, amount: str) -> str:
        """Participant: move ``amount`` of its own tokens to another participant."""
        msp = caller_msp(ctx)
        check_id(fed, "federation id")
        check_id(to, "recipient id")
        units = parse_amount(amount)
        federation = await load_federation(ctx, fed)
        refuse_auditor(federation, msp, "Transfer")
        members = await org_members(ctx, fed, msp)
        if len(members) != 1:
            raise AccessDenied(
                f"Transfer needs exactly one participant registered by {msp} in federation {fed}; "
                f"found {len(members)}"
            )
        sender = members[0]
        await load_participant(ctx, fed, to)
        if sender == to:
            raise Invalid(f"participant {sender} cannot transfer to itself")
        from_balance = await balance_of(ctx, fed, sender)
        if from_balance < units:
            raise Invalid(f"insufficient balance: {sender} has {from_balance}, the transfer needs {units}")
        to_balance = await balance_of(ctx, fed, to) + units
        if to_balance > MAX_AMOUNT:
            raise Invalid(f"balance of {to} would overflow")
        await put_json(ctx, key(ctx, "balance", fed, sender), {"balance": from_balance - units})
        await put_json(ctx, key(ctx, "balance", fed, to), {"balance": to_balance})
        payload = {"amount": units, "federation": fed, "from": sender, "to": to}
        emit(ctx, "TokensTransferred", payload)
        return canonical_json(payload)

    # --- queries ----------------------------------------------------------------------

    async def GetFederation(self, ctx: TransactionContext, fed: str) -> str:
        """The federation's stored definition."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        return canonical_json(await load_federation(ctx, fed))

    async def GetOrgCA(self, ctx: TransactionContext, fed: str, msp: str) -> str:
        """The CA certificate an organisation registered in the federation."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        check_msp(msp, "MSP id")
        await load_federation(ctx, fed)
        org_ca = await get_json(ctx, key(ctx, "orgca", fed, msp))
        if org_ca is None:
            raise NotFound(f"{msp} has registered no CA certificate in federation {fed}")
        return canonical_json(org_ca)

    async def ListOrgCAs(self, ctx: TransactionContext, fed: str) -> str:
        """Every registered org CA of the federation, sorted by MSP id (key order)."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        await load_federation(ctx, fed)
        iterator = await ctx.get_stub().get_state_by_partial_composite_key("orgca", [fed])
        found = [parse_json(bytes(kv.value), "stored value") async for kv in iterator]
        return canonical_json(sorted(found, key=lambda c: c["msp_id"]))

    async def GetParticipant(self, ctx: TransactionContext, fed: str, pid: str) -> str:
        """One participant."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        check_id(pid, "participant id")
        await load_federation(ctx, fed)
        return canonical_json(await load_participant(ctx, fed, pid))

    async def ListParticipants(self, ctx: TransactionContext, fed: str) -> str:
        """Every participant of the federation, sorted by id (key order)."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        await load_federation(ctx, fed)
        stub = ctx.get_stub()
        iterator = await stub.get_state_by_partial_composite_key("participant", [fed])
        found = [parse_json(bytes(kv.value), "stored value") async for kv in iterator]
        return canonical_json(sorted(found, key=lambda p: p["id"]))

    async def ParticipantHistory(self, ctx: TransactionContext, fed: str, pid: str) -> str:
        """Every change of a participant, oldest first (Fabric 2.x returns newest first)."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        check_id(pid, "participant id")
        await load_federation(ctx, fed)
        iterator = await ctx.get_stub().get_history_for_key(key(ctx, "participant", fed, pid))
        changes = [
            {
                "timestamp_ms": km.timestamp.seconds * 1000 + km.timestamp.nanos // 1_000_000,
                "tx_id": km.tx_id,
                "value": None if km.is_delete else parse_json(bytes(km.value), "stored value"),
            }
            async for km in iterator
        ]
        if not changes:
            raise NotFound(f"participant {pid} is not registered in federation {fed}")
        changes.reverse()
        return canonical_json(changes)

    async def GetRound(self, ctx: TransactionContext, fed: str, round: str) -> str:
        """One round: record, commit, rewards and the tx id + timestamp that wrote each."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        round_no = parse_round(round)
        await load_federation(ctx, fed)
        record = await get_json(ctx, key(ctx, "round", fed, round_attr(round_no)))
        if record is None:
            raise NotFound(f"round {round_no} of federation {fed} is not recorded")
        return canonical_json(await _round_view(ctx, fed, round_no, record))

    async def ListRounds(self, ctx: TransactionContext, fed: str) -> str:
        """Every recorded round, in round order."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        await load_federation(ctx, fed)
        iterator = await ctx.get_stub().get_state_by_partial_composite_key("round", [fed])
        records = [parse_json(bytes(kv.value), "stored value") async for kv in iterator]
        views = [await _round_view(ctx, fed, r["round"], r) for r in sorted(records, key=lambda r: r["round"])]
        return canonical_json(views)

    async def BalanceOf(self, ctx: TransactionContext, fed: str, pid: str) -> str:
        """A participant's token balance."""
        caller_msp(ctx)
        check_id(fed, "federation id")
        check_id(pid, "participant id")
        await load_federation(ctx, fed)
        await load_participant(ctx, fed, pid)
        return canonical_json({"balance": await balance_of(ctx, fed, pid), "federation": fed, "participant": pid})
