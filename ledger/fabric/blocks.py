"""Reading Fabric blocks and transactions, as returned by the peer's qscc system chaincode.

An auditor proves that a record is on the ledger by a block number; these helpers let it
check the proof without trusting the peer's word:

* :func:`block_transactions` — every transaction in a block with its validation code
  (the block's TRANSACTIONS_FILTER metadata), its endorsing MSPs and its chaincode
  event, if any;
* :func:`block_data_hash` / :func:`block_header_hash` — the hashes that chain blocks
  together (``header.data_hash`` and the next block's ``previous_hash``), computed here
  the way Fabric computes them, so a chain of blocks can be verified end to end;
* :class:`ChainInfo` — the channel's height and its last two block hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fabric_protos.common import common_pb2, ledger_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf.message import DecodeError

__all__ = [
    "BlockTransaction",
    "ChainInfo",
    "block_data_hash",
    "block_header_bytes",
    "block_header_hash",
    "block_transactions",
    "decode_chain_info",
    "find_transaction",
    "validation_code_name",
]


def validation_code_name(code: int) -> str:
    """Fabric's name of a transaction validation code (``VALID``, ``MVCC_READ_CONFLICT``…)."""
    try:
        return str(transaction_pb2.TxValidationCode.Name(code))
    except ValueError:
        return f"UNKNOWN_VALIDATION_CODE_{code}"


@dataclass(frozen=True)
class ChainInfo:
    """A channel's height (number of blocks) and the hashes of its last two blocks (hex)."""

    height: int
    current_block_hash: str
    previous_block_hash: str


def decode_chain_info(data: bytes) -> ChainInfo:
    """The :class:`ChainInfo` in qscc ``GetChainInfo``'s reply (``common.BlockchainInfo``)."""
    info = ledger_pb2.BlockchainInfo.FromString(data)
    return ChainInfo(
        height=info.height,
        current_block_hash=info.currentBlockHash.hex(),
        previous_block_hash=info.previousBlockHash.hex(),
    )


@dataclass(frozen=True)
class BlockTransaction:
    """One transaction of a block as an auditor sees it."""

    index: int
    tx_id: str
    type: str
    validation_code: str
    creator_msp_id: str
    timestamp_s: int
    chaincode_id: str | None
    endorsers: tuple[str, ...]
    event_name: str | None
    event_payload: bytes | None

    @property
    def valid(self) -> bool:
        """True when the transaction was committed VALID (its writes took effect)."""
        return self.validation_code == "VALID"


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def block_header_hash(header: common_pb2.BlockHeader) -> bytes:
    """SHA-256 of the header's ASN.1 DER form ``SEQUENCE {INTEGER number, OCTET STRING
    previous_hash, OCTET STRING data_hash}`` — the next block's ``previous_hash``."""
    number = header.number
    # Minimal two's-complement big-endian INTEGER (a leading zero keeps it positive).
    integer = number.to_bytes(number.bit_length() // 8 + 1, "big")
    body = _der(0x02, integer) + _der(0x04, header.previous_hash) + _der(0x04, header.data_hash)
    return hashlib.sha256(_der(0x30, body)).digest()


def block_data_hash(block: common_pb2.Block) -> bytes:
    """SHA-256 of the block's transactions concatenated — what ``header.data_hash`` must be."""
    digest = hashlib.sha256()
    for item in block.data.data:
        digest.update(item)
    return digest.digest()


def _transaction(index: int, envelope_bytes: bytes, code: int) -> BlockTransaction:
    envelope = common_pb2.Envelope.FromString(envelope_bytes)
    payload = common_pb2.Payload.FromString(envelope.payload)
    channel_header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    signature_header = common_pb2.SignatureHeader.FromString(payload.header.signature_header)
    creator = identities_pb2.SerializedIdentity.FromString(signature_header.creator)
    chaincode_id = event_name = event_payload = None
    endorsers: tuple[str, ...] = ()
    if channel_header.type == common_pb2.ENDORSER_TRANSACTION:
        transaction = transaction_pb2.Transaction.FromString(payload.data)
        for action in transaction.actions[:1]:
            action_payload = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
            response = proposal_response_pb2.ProposalResponsePayload.FromString(
                action_payload.action.proposal_response_payload
            )
            chaincode_action = proposal_pb2.ChaincodeAction.FromString(response.extension)
            endorsers = tuple(
                identities_pb2.SerializedIdentity.FromString(e.endorser).mspid
                for e in action_payload.action.endorsements
            )
            chaincode_id = chaincode_action.chaincode_id.name or None
            if chaincode_action.events:
                event = chaincode_event_pb2.ChaincodeEvent.FromString(chaincode_action.events)
                event_name, event_payload = event.event_name or None, bytes(event.payload)
    return BlockTransaction(
        index=index,
        tx_id=channel_header.tx_id,
        type=common_pb2.HeaderType.Name(channel_header.type),
        validation_code=validation_code_name(code),
        creator_msp_id=creator.mspid,
        timestamp_s=channel_header.timestamp.seconds,
        chaincode_id=chaincode_id,
        endorsers=endorsers,
        event_name=event_name,
        event_payload=event_payload,
    )


def block_transactions(block: common_pb2.Block) -> list[BlockTransaction]:
    """Every transaction of ``block``, in block order, with its validation code.

    Raises ``ValueError`` for a block whose transactions or metadata do not decode.
    """
    metadata = block.metadata.metadata
    flags = (
        metadata[common_pb2.TRANSACTIONS_FILTER]
        if len(metadata) > common_pb2.TRANSACTIONS_FILTER
        else b""
    )
    if len(flags) != len(block.data.data):
        raise ValueError(
            f"block {block.header.number} has {len(block.data.data)} transactions "
            f"but {len(flags)} validation flags"
        )
    try:
        return [_transaction(i, data, flags[i]) for i, data in enumerate(block.data.data)]
    except (DecodeError, ValueError) as exc:
        raise ValueError(f"block {block.header.number} does not decode: {exc}") from exc


def find_transaction(block: common_pb2.Block, tx_id: str) -> BlockTransaction | None:
    """The transaction ``tx_id`` of ``block``: the first copy if it was submitted twice."""
    for transaction in block_transactions(block):
        if transaction.tx_id == tx_id:
            return transaction
    return None


def block_header_bytes(header: common_pb2.BlockHeader) -> bytes:
    """The header's ASN.1 DER form — what orderers sign and :func:`block_header_hash` hashes."""
    number = header.number
    integer = number.to_bytes(number.bit_length() // 8 + 1, "big")
    body = _der(0x02, integer) + _der(0x04, header.previous_hash) + _der(0x04, header.data_hash)
    return _der(0x30, body)
