"""A Fabric transaction's creator and endorsements, checked by the auditor itself.

The validation flag a peer writes into a block (TRANSACTIONS_FILTER) is signed by no one,
so a lying peer can turn an invalid transaction VALID. What the flag stands for can
mostly be re-checked from the transaction's own bytes, which the orderers did sign
(:func:`verify_endorsed_transaction`), following Fabric's committer
(``ValidateTransaction`` and the built-in validation plugin):

1. **the header**: an endorser transaction of this channel whose tx id is
   ``SHA-256(nonce || creator)``;
2. **the creator**: a valid identity of an *application* organisation's MSP (root CAs,
   intermediates, CRLs, OU rules) with the NodeOU ``client``, ``admin`` or ``peer``, whose
   signature over the envelope's payload verifies (low-S). Fabric accepts any MSP of the
   channel here; the stricter rule keeps orderer organisations from transacting.
   The transaction's single action must have been proposed by the same creator (Fabric
   does not compare them; every client it ships builds them equal);
3. **the action**: the endorsed proposal response is for the proposal in the transaction
   (its ``proposal_hash`` is ``SHA-256(channel header || action's signature header ||
   chaincode proposal payload)``), invokes the expected chaincode (header extension,
   chaincode action and chaincode event agree), and writes only that chaincode's
   namespace, without key-level endorsement metadata or private data — whose policies
   the auditor cannot know from blocks;
4. **the endorsements**: each is a signature by a *peer* (NodeOU ``peer``) of an
   application organisation over ``proposal_response_payload || endorser`` (the endorser's
   serialized identity), low-S, the identity valid under its MSP; an identity is counted
   once, as Fabric counts it; the valid endorsers must satisfy the endorsement policy,
   evaluated as Fabric evaluates signature policies. One proposal response payload is
   carried per action, so every endorsement signs the same result.

What stays unverifiable from blocks: whether a VALID transaction's reads were still
current when it committed (an ``MVCC_READ_CONFLICT`` or a phantom read) — that needs a
replay of every earlier write set, or a second peer's answer — and whether the chaincode
definition committed on the channel (world state, not blocks) carries the policy the
caller checks against.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fabric_protos.common import common_pb2
from fabric_protos.ledger.rwset import rwset_pb2
from fabric_protos.ledger.rwset.kvrwset import kv_rwset_pb2
from fabric_protos.msp import msp_principal_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf.message import DecodeError

from ledger.fabric.channel_msp import (
    ChannelMsps,
    InvalidIdentity,
    MspIdentity,
    verify_signature,
)
from ledger.fabric.channel_policy import Policy

__all__ = ["verify_endorsed_transaction"]

_CREATOR_ROLES = (
    msp_principal_pb2.MSPRole.CLIENT,
    msp_principal_pb2.MSPRole.ADMIN,
    msp_principal_pb2.MSPRole.PEER,
)
_APPLICATION = "an application organisation"


class _Malformed(Exception):
    """A transaction that is not a well-formed endorser transaction; the message says why."""


@dataclass(frozen=True)
class _Transaction:
    """The parts of an endorser transaction the checks read."""

    envelope: common_pb2.Envelope
    header: common_pb2.Header
    channel_header: common_pb2.ChannelHeader
    signature_header: common_pb2.SignatureHeader
    action_header: bytes
    action_payload: transaction_pb2.ChaincodeActionPayload
    response: proposal_response_pb2.ProposalResponsePayload
    action: proposal_pb2.ChaincodeAction
    invoked: str


def _decode(raw: bytes) -> _Transaction:
    try:
        envelope = common_pb2.Envelope.FromString(raw)
        payload = common_pb2.Payload.FromString(envelope.payload)
        channel_header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        if channel_header.type != common_pb2.ENDORSER_TRANSACTION:
            try:
                kind = common_pb2.HeaderType.Name(channel_header.type)
            except ValueError:
                kind = f"type {channel_header.type}"
            raise _Malformed(f"it is a {kind} transaction, not an endorser transaction")
        transaction = transaction_pb2.Transaction.FromString(payload.data)
        if len(transaction.actions) != 1:
            raise _Malformed(f"it has {len(transaction.actions)} actions, where Fabric allows one")
        action_payload = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload)
        response = proposal_response_pb2.ProposalResponsePayload.FromString(
            action_payload.action.proposal_response_payload
        )
        extension = proposal_pb2.ChaincodeHeaderExtension.FromString(channel_header.extension)
        return _Transaction(
            envelope=envelope,
            header=payload.header,
            channel_header=channel_header,
            signature_header=common_pb2.SignatureHeader.FromString(payload.header.signature_header),
            action_header=transaction.actions[0].header,
            action_payload=action_payload,
            response=response,
            action=proposal_pb2.ChaincodeAction.FromString(response.extension),
            invoked=extension.chaincode_id.name,
        )
    except DecodeError:
        raise _Malformed("it does not decode as an endorser transaction") from None


def _header_problems(tx: _Transaction, channel: str) -> list[str]:
    header, signature = tx.channel_header, tx.signature_header
    problems: list[str] = []
    if header.channel_id != channel:
        problems.append(f"it names channel {header.channel_id!r}, not {channel!r}")
    if not signature.nonce or not signature.creator:
        problems.append("its header has no nonce or no creator")
    elif hashlib.sha256(signature.nonce + signature.creator).hexdigest() != header.tx_id:
        problems.append("its tx id is not the hash of its nonce and creator")
    try:
        proposer = common_pb2.SignatureHeader.FromString(tx.action_header).creator
    except DecodeError:
        proposer = b""
    if proposer != signature.creator:
        problems.append("its action was proposed by another identity than its creator")
    return problems


def _creator_problems(tx: _Transaction, msps: ChannelMsps) -> list[str]:
    try:
        msp, creator = msps.identity(tx.signature_header.creator, msps.application, "creator", _APPLICATION)
    except InvalidIdentity as exc:
        return [f"its creator: {exc}"]
    problems: list[str] = []
    if not any(msp.has_role(creator, role) for role in _CREATOR_ROLES):
        problems.append(f"its creator {creator.describe()} is not a client, admin or peer")
    try:
        verify_signature(creator.cert, tx.envelope.payload, tx.envelope.signature, msp.digest)
    except InvalidIdentity as exc:
        problems.append(f"its creator's signature ({creator.describe()}): {exc}")
    return problems


def _written(namespace: rwset_pb2.NsReadWriteSet) -> tuple[bool, bool, bool]:
    """(public writes, metadata writes, private writes) of one namespace's read/write set."""
    kv = kv_rwset_pb2.KVRWSet.FromString(namespace.rwset)
    metadata = bool(kv.metadata_writes)
    private = False
    for collection in namespace.collection_hashed_rwset:
        hashed = kv_rwset_pb2.HashedRWSet.FromString(collection.hashed_rwset)
        private = private or bool(hashed.hashed_writes)
        metadata = metadata or bool(hashed.metadata_writes)
    return bool(kv.writes), metadata, private


def _action_problems(tx: _Transaction, chaincode: str) -> list[str]:
    problems: list[str] = []
    proposal = hashlib.sha256(
        tx.header.channel_header + tx.action_header + tx.action_payload.chaincode_proposal_payload
    ).digest()
    if proposal != tx.response.proposal_hash:
        problems.append("its endorsed proposal hash does not match its header and proposal")
    if tx.invoked != chaincode:
        problems.append(f"it invokes chaincode {tx.invoked!r}, not {chaincode!r}")
    if tx.action.chaincode_id.name != chaincode:
        problems.append(f"its endorsed action is for chaincode {tx.action.chaincode_id.name!r}, not {chaincode!r}")
    try:
        if tx.action.events:
            event = chaincode_event_pb2.ChaincodeEvent.FromString(tx.action.events)
            if event.chaincode_id != chaincode:
                problems.append(f"its event is from chaincode {event.chaincode_id!r}, not {chaincode!r}")
        seen: set[str] = set()
        for namespace in rwset_pb2.TxReadWriteSet.FromString(tx.action.results).ns_rwset:
            name = namespace.namespace
            if name in seen:
                problems.append(f"its read/write set has namespace {name!r} twice")
            seen.add(name)
            public, metadata, private = _written(namespace)
            if (public or metadata or private) and name != chaincode:
                problems.append(f"it writes to namespace {name!r}, whose endorsement policy is not the one checked")
            elif metadata:
                problems.append("it writes key-level endorsement metadata, which the proof does not check")
            elif private:
                problems.append("it writes private data, whose collection policies the proof does not check")
    except DecodeError:
        problems.append("its read/write set or event does not decode")
    return problems


def _endorsers(tx: _Transaction, msps: ChannelMsps) -> tuple[list[MspIdentity], list[str]]:
    """The valid, distinct peer endorsers of ``tx``, and why the others are not."""
    signed = tx.action_payload.action.proposal_response_payload
    signers: list[MspIdentity] = []
    reasons: list[str] = []
    for i, endorsement in enumerate(tx.action_payload.action.endorsements):
        try:
            msp, endorser = msps.identity(endorsement.endorser, msps.application, "endorser", _APPLICATION)
            if any(s.msp_id == endorser.msp_id and s.der == endorser.der for s in signers):
                reasons.append(f"endorsement {i}: a second endorsement by {endorser.describe()}")
                continue
            if not msp.has_role(endorser, msp_principal_pb2.MSPRole.PEER):
                raise InvalidIdentity(f"{endorser.describe()} is not a peer (no peer NodeOU)")
            # Fabric's endorser signs the response payload followed by its own identity.
            try:
                verify_signature(endorser.cert, signed + endorsement.endorser, endorsement.signature, msp.digest)
            except InvalidIdentity as exc:
                raise InvalidIdentity(f"{endorser.describe()}: {exc}") from None
        except InvalidIdentity as exc:
            reasons.append(f"endorsement {i}: {exc}")
            continue
        signers.append(endorser)
    return signers, reasons


def _endorsement_problems(tx: _Transaction, msps: ChannelMsps, policy: Policy) -> list[str]:
    if not tx.action_payload.action.endorsements:
        return [f"it carries no endorsement, and {policy.describe()} needs some"]
    signers, reasons = _endorsers(tx, msps)
    if policy.satisfied_by(signers):
        return []
    detail = f" ({'; '.join(reasons)})" if reasons else ""
    endorsed = f"only {', '.join(s.describe() for s in signers)} endorsed it" if signers else "none is valid"
    return [f"its endorsements do not satisfy {policy.describe()}: {endorsed}{detail}"]


def verify_endorsed_transaction(
    raw: bytes, *, channel: str, msps: ChannelMsps, policy: Policy, chaincode: str
) -> list[str]:
    """Why transaction ``raw`` (a block's envelope bytes) is not what a VALID flag claims.

    Empty when its header, creator, chaincode action and endorsements verify against the
    channel's MSPs ``msps`` and the endorsers satisfy ``policy``. Each reason reads after
    "flagged VALID but". MVCC conflicts are not detected (see the module notes).
    """
    try:
        tx = _decode(raw)
    except _Malformed as exc:
        return [str(exc)]
    return [
        *_header_problems(tx, channel),
        *_creator_problems(tx, msps),
        *_action_problems(tx, chaincode),
        *_endorsement_problems(tx, msps, policy),
    ]

