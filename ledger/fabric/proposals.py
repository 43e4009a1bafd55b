"""What a Fabric Gateway client signs: identities, proposals, envelopes and signed requests.

Pure functions over the official protobuf bindings, no I/O, so that every byte the client
signs can be checked by unit tests:

* :class:`Identity` is data (MSP id + certificate PEM); a :data:`Signer` is a function
  from a SHA-256 *digest* to a DER ECDSA signature, so HSMs and tests plug in.
  :func:`signer_from_key` signs with a P-256 key and always returns the low-S form,
  which Fabric peers require.
* :func:`new_transaction_context`: a 24-byte nonce, the creator (a serialized
  ``msp.SerializedIdentity``) and the transaction id ``hex(sha256(nonce ‖ creator))``.
* :func:`build_proposal`: ``peer.Proposal`` bytes for an ENDORSER_TRANSACTION.
* :func:`result_from_envelope`: the chaincode's return value, read out of the prepared
  transaction the Gateway's Endorse returns (its reply has no result field of its own);
  :func:`check_prepared_transaction` refuses one whose header is not the proposal's.
* :func:`commit_status_request` / :func:`chaincode_events_request`: the serialized
  requests the client signs for CommitStatus and ChaincodeEvents.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.orderer import ab_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2, proposal_response_pb2, transaction_pb2
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.fabric.gateway_errors import GatewayProtocolError
from ledger.identity import Signer, load_signer, signer_from_key
from ledger.pki import load_certificate

__all__ = [
    "NONCE_BYTES",
    "Identity",
    "Signer",
    "SigningIdentity",
    "TransactionContext",
    "signer_from_key",
    "load_identity",
    "load_signer",
    "new_transaction_context",
    "build_proposal",
    "check_prepared_transaction",
    "result_from_envelope",
    "envelope_timestamp_ms",
    "commit_status_request",
    "chaincode_events_request",
]

NONCE_BYTES = 24

@dataclass(frozen=True)
class Identity:
    """Who signs: an MSP id and the signer's X.509 certificate (PEM bytes)."""

    msp_id: str
    credentials: bytes

    def creator(self) -> bytes:
        """The serialized ``msp.SerializedIdentity`` that names this identity in every header."""
        return identities_pb2.SerializedIdentity(
            mspid=self.msp_id, id_bytes=self.credentials
        ).SerializeToString()


def load_identity(msp_id: str, cert_path: str | os.PathLike[str]) -> Identity:
    """The identity of the certificate at ``cert_path``; a clear error names a bad file."""
    cert = load_certificate(cert_path)  # KeyFileError names the file and the problem
    return Identity(msp_id=msp_id, credentials=cert.public_bytes(Encoding.PEM))


class SigningIdentity:
    """An :class:`Identity` with its signer; fails closed when there is no signer."""

    def __init__(self, identity: Identity, signer: Signer | None) -> None:
        if not isinstance(identity, Identity) or not identity.msp_id or not identity.credentials:
            raise ValueError("an Identity with an MSP id and a certificate is required")
        if signer is None or not callable(signer):
            raise ValueError("a signer is required: nothing is sent to Fabric unsigned")
        try:
            x509.load_pem_x509_certificate(identity.credentials)
        except ValueError as exc:
            raise ValueError(
                f"the identity's credentials are not a PEM certificate: {exc}"
            ) from None
        self.identity = identity
        self._signer = signer
        self._creator = identity.creator()

    @property
    def creator(self) -> bytes:
        """Serialized ``SerializedIdentity`` (MSP id + certificate)."""
        return self._creator

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``: its SHA-256 digest goes to the signer."""
        signature = self._signer(hashlib.sha256(message).digest())
        if not isinstance(signature, bytes) or not signature:
            raise ValueError("the signer returned no signature")
        return signature


@dataclass(frozen=True)
class TransactionContext:
    """The nonce and creator that fix a transaction's id."""

    nonce: bytes
    creator: bytes

    @property
    def tx_id(self) -> str:
        """``hex(sha256(nonce ‖ creator))``, the id peers recompute and check."""
        return hashlib.sha256(self.nonce + self.creator).hexdigest()

    def signature_header(self) -> bytes:
        """Serialized ``common.SignatureHeader``."""
        return common_pb2.SignatureHeader(
            creator=self.creator, nonce=self.nonce
        ).SerializeToString()


def new_transaction_context(creator: bytes, nonce: bytes | None = None) -> TransactionContext:
    """A fresh context: a random 24-byte nonce unless one is given (tests)."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"the nonce must be {NONCE_BYTES} bytes")
    return TransactionContext(nonce=nonce, creator=creator)


def _arg_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"chaincode arguments are str or bytes, not {type(value).__name__}")


def build_proposal(
    context: TransactionContext,
    *,
    channel: str,
    chaincode: str,
    function: str,
    args: Sequence[str | bytes] = (),
    transient: Mapping[str, bytes] | None = None,
    timestamp: Timestamp | None = None,
) -> bytes:
    """Serialized ``peer.Proposal`` invoking ``function(*args)`` of ``chaincode`` on ``channel``."""
    if timestamp is None:
        timestamp = Timestamp()
        timestamp.GetCurrentTime()
    chaincode_id = chaincode_pb2.ChaincodeID(name=chaincode)
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION,
        timestamp=timestamp,
        channel_id=channel,
        tx_id=context.tx_id,
        epoch=0,
        extension=proposal_pb2.ChaincodeHeaderExtension(
            chaincode_id=chaincode_id
        ).SerializeToString(),
    )
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=context.signature_header(),
    )
    invocation = chaincode_pb2.ChaincodeInvocationSpec(
        chaincode_spec=chaincode_pb2.ChaincodeSpec(
            chaincode_id=chaincode_id,
            input=chaincode_pb2.ChaincodeInput(
                args=[function.encode("utf-8"), *map(_arg_bytes, args)]
            ),
        )
    )
    payload = proposal_pb2.ChaincodeProposalPayload(
        input=invocation.SerializeToString(),
        TransientMap={k: _arg_bytes(v) for k, v in (transient or {}).items()},
    )
    return proposal_pb2.Proposal(
        header=header.SerializeToString(), payload=payload.SerializeToString()
    ).SerializeToString()


def check_prepared_transaction(envelope: common_pb2.Envelope, proposal: bytes) -> None:
    """Refuse to sign a prepared transaction whose header is not the proposal's own.

    The client signs whatever the gateway sends back; the header (channel, tx id, creator,
    nonce) is the part it chose, so it must come back byte for byte.
    """
    try:
        payload = common_pb2.Payload.FromString(envelope.payload)
        proposed = common_pb2.Header.FromString(proposal_pb2.Proposal.FromString(proposal).header)
    except DecodeError as exc:
        raise GatewayProtocolError(f"the prepared transaction does not decode: {exc}") from exc
    if (
        payload.header.channel_header != proposed.channel_header
        or payload.header.signature_header != proposed.signature_header
    ):
        raise GatewayProtocolError(
            "the prepared transaction's header is not the proposal's; refusing to sign it"
        )


def result_from_envelope(envelope: common_pb2.Envelope) -> bytes:
    """The chaincode's return value inside a prepared transaction envelope.

    Envelope → Payload → Transaction → each action's ChaincodeActionPayload →
    ProposalResponsePayload → ChaincodeAction.response.payload.
    """
    try:
        payload = common_pb2.Payload.FromString(envelope.payload)
        transaction = transaction_pb2.Transaction.FromString(payload.data)
        for action in transaction.actions:
            action_payload = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
            response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(
                action_payload.action.proposal_response_payload
            )
            chaincode_action = proposal_pb2.ChaincodeAction.FromString(response_payload.extension)
            return bytes(chaincode_action.response.payload)
    except DecodeError as exc:
        raise GatewayProtocolError(f"the prepared transaction does not decode: {exc}") from exc
    raise GatewayProtocolError("the prepared transaction has no chaincode action")


def envelope_timestamp_ms(envelope: common_pb2.Envelope) -> int:
    """The transaction timestamp (ms) in a prepared envelope's channel header: the time
    the contract read as its clock."""
    try:
        payload = common_pb2.Payload.FromString(envelope.payload)
        header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    except DecodeError as exc:
        raise GatewayProtocolError(f"the prepared transaction does not decode: {exc}") from exc
    return header.timestamp.seconds * 1000 + header.timestamp.nanos // 1_000_000


def commit_status_request(*, channel: str, tx_id: str, creator: bytes) -> bytes:
    """Serialized ``gateway.CommitStatusRequest`` (the client signs these bytes)."""
    return gateway_pb2.CommitStatusRequest(
        transaction_id=tx_id, channel_id=channel, identity=creator
    ).SerializeToString()


def chaincode_events_request(
    *,
    channel: str,
    chaincode: str,
    creator: bytes,
    start_block: int | None = None,
    after_tx_id: str | None = None,
) -> bytes:
    """Serialized ``gateway.ChaincodeEventsRequest``: from ``start_block``, or the next commit.

    With ``after_tx_id`` the peer starts at that transaction's block and skips every event
    up to and including that transaction's, which is how a stream resumes exactly.
    """
    if start_block is None:
        position = ab_pb2.SeekPosition(next_commit=ab_pb2.SeekNextCommit())
    else:
        if start_block < 0:
            raise ValueError("start_block must be >= 0")
        position = ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start_block))
    return gateway_pb2.ChaincodeEventsRequest(
        channel_id=channel,
        chaincode_id=chaincode,
        identity=creator,
        start_position=position,
        after_transaction_id=after_tx_id or "",
    ).SerializeToString()
