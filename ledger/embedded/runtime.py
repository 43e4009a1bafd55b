"""Run the ``fedaudit`` contract in-process, through the real fabric-chaincode-python dispatch.

A peer hands the chaincode a signed proposal and answers the shim's state requests over
a gRPC stream. Here we build the same proposal (creator, nonce, tx id, timestamp,
invocation spec) and give the library's own :class:`ChaincodeStub` an in-process "peer"
(:class:`EmbeddedPeer`) that answers those requests from a :class:`StateReader` and
collects the write set. Dispatch, argument conversion, the client identity, composite
keys, iterators and events are therefore the library's code, exactly as on Fabric.

None of the stub's awaits ever suspends (the peer answers synchronously), so the
coroutine is driven to completion without an event loop; this also works when the
caller is itself inside a running loop.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fabric_protos.common import common_pb2
from fabric_protos.ledger.queryresult import kv_query_result_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, chaincode_shim_pb2, proposal_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from chaincode.fedaudit import CONTRACT_NAME, FedAudit
from chaincode.shim_fixes import ChaincodeStub, ContractChaincode, check_context_annotations

__all__ = [
    "CHANNEL",
    "StateReader",
    "Outcome",
    "EmbeddedPeer",
    "ContractRuntime",
    "serialize_identity",
    "new_tx_id",
    "timestamp_of",
]

CHANNEL = "fedledger"
# Results per page of a range or history query, like the peer's internal query limit.
PAGE_SIZE = 100


class StateReader(Protocol):
    """Committed world state and history, as the peer's ledger would serve them."""

    def get(self, key: str) -> bytes | None:
        """The committed value of ``key``, or ``None``."""
        ...

    def range(self, start: str, end: str) -> list[tuple[str, bytes]]:
        """``(key, value)`` with ``start <= key < end`` in UTF-8 byte order (``end=""``: open)."""
        ...

    def history(self, key: str) -> list[tuple[str, int, bytes, bool]]:
        """``(tx_id, timestamp_ms, value, is_delete)`` of every write of ``key``, newest first."""
        ...


def serialize_identity(msp_id: str, cert_pem: str) -> bytes:
    """The proposal creator: a Fabric ``SerializedIdentity`` (MSP id + PEM certificate)."""
    return identities_pb2.SerializedIdentity(
        mspid=msp_id, id_bytes=cert_pem.encode("utf-8")
    ).SerializeToString()


def new_tx_id(nonce: bytes, creator: bytes) -> str:
    """A Fabric transaction id: ``hex(sha256(nonce + creator))``."""
    return hashlib.sha256(nonce + creator).hexdigest()


def timestamp_of(ms: int) -> Timestamp:
    """A protobuf timestamp of ``ms`` milliseconds since the epoch."""
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _signed_proposal(
    tx_id: str, nonce: bytes, creator: bytes, timestamp_ms: int, cc_input: chaincode_pb2.ChaincodeInput
) -> proposal_pb2.SignedProposal:
    # Unsigned: the embedded ledger trusts its caller's Identity, as a Gateway trusts its signer.
    chaincode_id = chaincode_pb2.ChaincodeID(name=CONTRACT_NAME)
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION,
        timestamp=timestamp_of(timestamp_ms),
        channel_id=CHANNEL,
        tx_id=tx_id,
        extension=proposal_pb2.ChaincodeHeaderExtension(chaincode_id=chaincode_id).SerializeToString(),
    )
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common_pb2.SignatureHeader(creator=creator, nonce=nonce).SerializeToString(),
    )
    spec = chaincode_pb2.ChaincodeInvocationSpec(
        chaincode_spec=chaincode_pb2.ChaincodeSpec(chaincode_id=chaincode_id, input=cc_input)
    )
    payload = proposal_pb2.ChaincodeProposalPayload(input=spec.SerializeToString())
    proposal = proposal_pb2.Proposal(header=header.SerializeToString(), payload=payload.SerializeToString())
    return proposal_pb2.SignedProposal(proposal_bytes=proposal.SerializeToString(), signature=b"")


def _response(payload: bytes, tx_id: str) -> chaincode_shim_pb2.ChaincodeMessage:
    return chaincode_shim_pb2.ChaincodeMessage(
        type=chaincode_shim_pb2.ChaincodeMessage.RESPONSE, payload=payload, txid=tx_id, channel_id=CHANNEL
    )


@dataclass
class EmbeddedPeer:
    """The peer side of the shim protocol, answered from a :class:`StateReader`.

    Implements the ``handle_*`` requests :class:`ChaincodeStub` sends. Reads see committed
    state only (as on Fabric, a transaction does not read its own writes); writes are
    collected in ``writes`` (``None`` = delete), the last write of a key winning.
    """

    reader: StateReader
    read_only: bool
    writes: dict[str, bytes | None] = field(default_factory=dict)
    # A storage failure, kept so it is raised as itself rather than as a contract refusal
    # (the dispatcher turns every exception into an error message).
    failure: BaseException | None = None
    _queries: dict[str, list[bytes]] = field(default_factory=dict)

    def _read(self, what: str, *args: str) -> Any:
        try:
            return getattr(self.reader, what)(*args)
        except Exception as exc:
            self.failure = exc
            raise

    def _refuse_write(self, what: str) -> None:
        if self.read_only:
            raise PermissionError(f"INVALID: {what} is not allowed in a query (evaluate) transaction")

    async def handle_get_state(self, collection: str, key: str, channel_id: str, tx_id: str) -> bytes:
        self._private(collection)
        return self._read("get", key) or b""

    async def handle_put_state(
        self, collection: str, key: str, value: bytes, channel_id: str, tx_id: str
    ) -> None:
        self._private(collection)
        self._refuse_write("put_state")
        if not key:
            raise ValueError("INVALID: put_state needs a non-empty key")
        self.writes[key] = bytes(value)

    async def handle_delete_state(self, collection: str, key: str, channel_id: str, tx_id: str) -> None:
        self._private(collection)
        self._refuse_write("delete_state")
        self.writes[key] = None

    async def handle_get_state_by_range(
        self, collection: str, start_key: str, end_key: str, channel_id: str, tx_id: str, metadata: Any = None
    ) -> chaincode_shim_pb2.ChaincodeMessage:
        self._private(collection)
        if metadata is not None:
            raise NotImplementedError("paginated range queries are not supported by the embedded ledger")
        results = [
            kv_query_result_pb2.KV(namespace=CONTRACT_NAME, key=k, value=v).SerializeToString()
            for k, v in self._read("range", start_key, end_key)
        ]
        return self._first_page(results, tx_id)

    async def handle_get_history_for_key(
        self, key: str, channel_id: str, tx_id: str
    ) -> chaincode_shim_pb2.ChaincodeMessage:
        results = [
            kv_query_result_pb2.KeyModification(
                tx_id=h_tx, value=value, timestamp=timestamp_of(ms), is_delete=is_delete
            ).SerializeToString()
            for h_tx, ms, value, is_delete in self._read("history", key)
        ]
        return self._first_page(results, tx_id)

    async def handle_query_state_next(
        self, query_id: str, channel_id: str, tx_id: str
    ) -> chaincode_shim_pb2.ChaincodeMessage:
        return self._page(query_id, tx_id)

    async def handle_query_state_close(
        self, query_id: str, channel_id: str, tx_id: str
    ) -> chaincode_shim_pb2.ChaincodeMessage:
        self._queries.pop(query_id, None)
        return _response(b"", tx_id)

    async def handle_get_query_result(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("rich (CouchDB) queries are not supported: state is LevelDB-like")

    async def handle_invoke_chaincode(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("fedaudit must not invoke other chaincodes (FABRIC-NOTES defect 4)")

    @staticmethod
    def _private(collection: str) -> None:
        if collection:
            raise NotImplementedError("private data collections are not supported")

    def _first_page(self, results: list[bytes], tx_id: str) -> chaincode_shim_pb2.ChaincodeMessage:
        query_id = f"q{len(self._queries)}-{tx_id[:8]}"
        self._queries[query_id] = results
        return self._page(query_id, tx_id)

    def _page(self, query_id: str, tx_id: str) -> chaincode_shim_pb2.ChaincodeMessage:
        remaining = self._queries.get(query_id, [])
        page, rest = remaining[:PAGE_SIZE], remaining[PAGE_SIZE:]
        self._queries[query_id] = rest
        response = chaincode_shim_pb2.QueryResponse(
            results=[chaincode_shim_pb2.QueryResultBytes(resultBytes=r) for r in page],
            has_more=bool(rest),
            id=query_id,
        )
        return _response(response.SerializeToString(), tx_id)


@dataclass(frozen=True)
class Outcome:
    """What one contract invocation produced."""

    ok: bool
    message: str
    payload: bytes
    writes: dict[str, bytes | None]
    event: tuple[str, bytes] | None


def _drive(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the contract awaited something that suspends; the embedded runtime has no event loop")


class ContractRuntime:
    """Executes ``fedaudit`` transactions against a :class:`StateReader`."""

    _shared: ContractRuntime | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._chaincode: ContractChaincode = check_context_annotations(FedAudit())

    @classmethod
    def shared(cls) -> ContractRuntime:
        """One runtime per process (the dispatcher is stateless between calls)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def execute(
        self,
        reader: StateReader,
        function: str,
        args: Sequence[str],
        *,
        creator: bytes,
        nonce: bytes,
        tx_id: str,
        timestamp_ms: int,
        read_only: bool,
    ) -> Outcome:
        """Run ``function(*args)`` as the identity ``creator`` at ``timestamp_ms``.

        A refusal is an :class:`Outcome` with ``ok=False``; a failure of ``reader`` is raised.
        """
        cc_input = chaincode_pb2.ChaincodeInput(
            args=[f"{CONTRACT_NAME}:{function}".encode(), *(a.encode("utf-8") for a in args)]
        )
        proposal = _signed_proposal(tx_id, nonce, creator, timestamp_ms, cc_input)
        peer = EmbeddedPeer(reader, read_only)
        stub = ChaincodeStub(peer, CHANNEL, tx_id, cc_input, proposal)
        response = _drive(self._chaincode.invoke(stub))
        if peer.failure is not None:
            raise peer.failure
        if response.status >= 400:
            return Outcome(False, response.message, b"", {}, None)
        events = stub.get_events()
        # Fabric keeps one event per transaction: the last set_event wins.
        event = (events[-1].event_name, bytes(events[-1].payload)) if events else None
        return Outcome(True, "", bytes(response.payload), dict(peer.writes), event)
