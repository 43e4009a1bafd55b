"""A Fabric Gateway client: Gateway → Network → Contract, on the official protobuf bindings.

Shaped like Fabric's own Gateway SDKs. The identity is data and signing is a function
(:mod:`ledger.fabric.proposals`); the caller may own the gRPC channel
(``Gateway(channel, identity, signer)``) or let :meth:`Gateway.connect` open one with TLS.

* ``Contract.evaluate`` — a query: ``Evaluate``, the result comes back, nothing is written.
* ``Contract.submit`` — a write: ``Endorse`` → sign the prepared envelope → ``Submit`` →
  signed ``CommitStatus``; returns the result, tx id and block number, or raises
  :class:`CommitError` when the transaction was ordered but not committed VALID.
* ``Network.chaincode_events`` — an iterator of chaincode events that reconnects after a
  transient failure from exactly where it stopped (block number + last tx id).
* ``Network.get_block_by_number`` / ``get_transaction_by_id`` / ``get_chain_info`` — qscc
  look-ups, decoded, so an auditor can prove a record's block (see :mod:`.blocks`).

Every failure is a :class:`GatewayError` (a :class:`ledger.errors.LedgerError`), one type
per phase; transient failures are retried inside each call's deadline, never by endorsing
a change again under a new transaction id (see :func:`.gateway_errors.call`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.peer import proposal_pb2, transaction_pb2
from google.protobuf.message import DecodeError

from ledger.fabric.blocks import ChainInfo, decode_chain_info, validation_code_name
from ledger.fabric.gateway_errors import (
    ChaincodeEventsError,
    CommitError,
    CommitStatusError,
    EndorseError,
    ErrorDetail,
    EvaluateError,
    GatewayError,
    GatewayProtocolError,
    RetryPolicy,
    SubmitError,
    call,
    error_from_rpc,
    is_transient,
)
from ledger.fabric.profile import ConnectionProfile, PeerEndpoint, ProfileError
from ledger.fabric.proposals import (
    Identity,
    Signer,
    SigningIdentity,
    build_proposal,
    chaincode_events_request,
    check_prepared_transaction,
    envelope_timestamp_ms,
    commit_status_request,
    load_identity,
    load_signer,
    new_transaction_context,
    result_from_envelope,
    signer_from_key,
)

__all__ = [
    "Deadlines",
    "Gateway",
    "Network",
    "Contract",
    "SubmitResult",
    "SubmittedTransaction",
    "CommitStatus",
    "ChaincodeEvent",
    "ChaincodeEventStream",
    "ChainInfo",
    "connect_from_profile",
    "connect_as",
    "choose_peer",
    # re-exported: the whole client API from one module
    "Identity",
    "Signer",
    "signer_from_key",
    "load_identity",
    "load_signer",
    "RetryPolicy",
    "ErrorDetail",
    "GatewayError",
    "EvaluateError",
    "EndorseError",
    "SubmitError",
    "CommitStatusError",
    "CommitError",
    "ChaincodeEventsError",
    "GatewayProtocolError",
]

# Fabric's own limit for peer messages; a block can be much larger than gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Deadlines:
    """Default deadline of each call, in seconds (retries happen inside it)."""

    evaluate: float = 5.0
    endorse: float = 15.0
    submit: float = 5.0
    commit_status: float = 60.0
    # After a failed Submit: how long to look for the transaction's commit anyway (a BFT
    # ordering service may refuse a copy it has already ordered).
    orphan_check: float = 10.0


@dataclass(frozen=True)
class CommitStatus:
    """How a transaction was committed: its validation code and the block that holds it."""

    tx_id: str
    code: int
    block_number: int

    @property
    def name(self) -> str:
        """Fabric's name of the validation code, e.g. ``VALID`` or ``MVCC_READ_CONFLICT``."""
        return validation_code_name(self.code)

    @property
    def successful(self) -> bool:
        """True when the transaction committed VALID (its writes took effect)."""
        return self.code == transaction_pb2.VALID


@dataclass(frozen=True)
class SubmitResult:
    """A committed write: the chaincode's result, the tx id, its block and status name."""

    result: bytes
    tx_id: str
    block_number: int
    status: str = "VALID"
    timestamp_ms: int = 0


@dataclass(frozen=True)
class ChaincodeEvent:
    """One chaincode event, with the block and transaction that emitted it."""

    block_number: int
    tx_id: str
    chaincode_id: str
    event_name: str
    payload: bytes


class Gateway:
    """A connection to one peer's Gateway service, acting as one signing identity."""

    def __init__(
        self,
        channel: grpc.Channel,
        identity: Identity,
        signer: Signer | None,
        *,
        deadlines: Deadlines | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.signing = SigningIdentity(identity, signer)
        self.deadlines = deadlines or Deadlines()
        self.retry = retry or RetryPolicy()
        self.stub = gateway_pb2_grpc.GatewayStub(channel)
        self._channel = channel
        self._owns_channel = False

    @classmethod
    def connect(
        cls,
        endpoint: str,
        *,
        tls_ca_pem: bytes,
        server_name: str | None,
        identity: Identity,
        signer: Signer | None,
        client_cert_pem: bytes | None = None,
        client_key_pem: bytes | None = None,
        deadlines: Deadlines | None = None,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Gateway:
        """Open a TLS channel to ``endpoint`` (mutual TLS with a client cert and key)."""
        if (client_cert_pem is None) != (client_key_pem is None):
            raise ValueError("mutual TLS needs both client_cert_pem and client_key_pem")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls_ca_pem,
            private_key=client_key_pem,
            certificate_chain=client_cert_pem,
        )
        channel_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if server_name:
            channel_options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(endpoint, credentials, options=[*channel_options, *options])
        try:
            gateway = cls(channel, identity, signer, deadlines=deadlines, retry=retry)
        except ValueError:
            channel.close()
            raise
        gateway._owns_channel = True
        return gateway

    @property
    def identity(self) -> Identity:
        """The identity every request is signed as."""
        return self.signing.identity

    def get_network(self, name: str) -> Network:
        """The channel ``name``."""
        return Network(self, name)

    def close(self) -> None:
        """Close the gRPC channel if this Gateway opened it (a caller's channel stays open)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Network:
    """One channel: its contracts, chaincode events, commit statuses and qscc look-ups."""

    def __init__(self, gateway: Gateway, name: str) -> None:
        self.gateway = gateway
        self.name = name

    def get_contract(self, chaincode: str, contract_name: str | None = None) -> Contract:
        """The contract ``contract_name`` of ``chaincode`` (its default contract if None)."""
        return Contract(self, chaincode, contract_name)

    def chaincode_events(
        self, chaincode: str, *, start_block: int | None = None, after_tx_id: str | None = None
    ) -> ChaincodeEventStream:
        """Events of ``chaincode`` from ``start_block`` (default: the next block committed).

        To resume after an event ``e`` already handled, pass ``start_block=e.block_number,
        after_tx_id=e.tx_id`` (or the stream's :attr:`ChaincodeEventStream.checkpoint`).
        """
        return ChaincodeEventStream(self, chaincode, start_block, after_tx_id)

    def commit_status(self, tx_id: str, timeout: float | None = None) -> CommitStatus:
        """Wait (up to ``timeout``) for ``tx_id`` to commit, and say how it committed."""
        return _commit_status(self, _signed_commit_status_request(self, tx_id), tx_id, timeout)

    def get_chain_info(self) -> ChainInfo:
        """The channel's height and its last two block hashes (qscc ``GetChainInfo``)."""
        return _decode(decode_chain_info, self._qscc("GetChainInfo"), "chain info")

    def get_block_by_number(self, number: int) -> common_pb2.Block:
        """Block ``number`` (qscc ``GetBlockByNumber``); see :mod:`ledger.fabric.blocks`."""
        return _decode(
            common_pb2.Block.FromString, self._qscc("GetBlockByNumber", str(number)), "block"
        )

    def get_block_by_tx_id(self, tx_id: str) -> common_pb2.Block:
        """The block holding transaction ``tx_id`` (qscc ``GetBlockByTxID``)."""
        return _decode(common_pb2.Block.FromString, self._qscc("GetBlockByTxID", tx_id), "block")

    def get_transaction_by_id(self, tx_id: str) -> transaction_pb2.ProcessedTransaction:
        """Transaction ``tx_id`` with its validation code (qscc ``GetTransactionByID``)."""
        data = self._qscc("GetTransactionByID", tx_id)
        return _decode(transaction_pb2.ProcessedTransaction.FromString, data, "transaction")

    def _qscc(self, function: str, *args: str) -> bytes:
        return Contract(self, "qscc").evaluate(function, self.name, *args)


def _decode(parse: Any, data: bytes, what: str) -> Any:
    try:
        return parse(data)
    except (DecodeError, ValueError) as exc:
        raise GatewayProtocolError(f"the peer's {what} does not decode: {exc}") from exc


class Contract:
    """A chaincode (and optionally a named contract inside it) on one channel."""

    def __init__(self, network: Network, chaincode: str, contract_name: str | None = None) -> None:
        self.network = network
        self.chaincode = chaincode
        self.contract_name = contract_name

    def _function(self, name: str) -> str:
        return f"{self.contract_name}:{name}" if self.contract_name else name

    def _signed_proposal(
        self, function: str, args: Sequence[str | bytes], transient: Mapping[str, bytes] | None
    ) -> tuple[str, proposal_pb2.SignedProposal]:
        signing = self.network.gateway.signing
        context = new_transaction_context(signing.creator)
        proposal = build_proposal(
            context,
            channel=self.network.name,
            chaincode=self.chaincode,
            function=self._function(function),
            args=args,
            transient=transient,
        )
        signed = proposal_pb2.SignedProposal(
            proposal_bytes=proposal, signature=signing.sign(proposal)
        )
        return context.tx_id, signed

    def evaluate(
        self,
        function: str,
        *args: str | bytes,
        transient: Mapping[str, bytes] | None = None,
        target_orgs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Run a query on one peer and return its result; nothing is written."""
        gateway = self.network.gateway
        tx_id, signed = self._signed_proposal(function, args, transient)
        request = gateway_pb2.EvaluateRequest(
            transaction_id=tx_id,
            channel_id=self.network.name,
            proposed_transaction=signed,
            target_organizations=list(target_orgs or ()),
        )
        response = call(
            gateway.stub.Evaluate,
            request,
            timeout=gateway.deadlines.evaluate if timeout is None else timeout,
            retry=gateway.retry,
            error_type=EvaluateError,
            tx_id=tx_id,
        )
        return bytes(response.result.payload)

    def endorse(
        self,
        function: str,
        *args: str | bytes,
        transient: Mapping[str, bytes] | None = None,
        endorsing_orgs: Sequence[str] | None = None,
    ) -> bytes:
        """Have the transaction endorsed (a majority of the organisations run it) and
        return its result, without submitting it: nothing is ordered or written."""
        return self._endorse(function, args, transient, endorsing_orgs)[2]

    def _endorse(
        self,
        function: str,
        args: Sequence[str | bytes],
        transient: Mapping[str, bytes] | None,
        endorsing_orgs: Sequence[str] | None,
    ) -> tuple[str, common_pb2.Envelope, bytes, int]:
        """(tx id, prepared envelope, result, timestamp ms) of an endorsed, unsigned transaction."""
        gateway = self.network.gateway
        tx_id, signed = self._signed_proposal(function, args, transient)
        endorsed = call(
            gateway.stub.Endorse,
            gateway_pb2.EndorseRequest(
                transaction_id=tx_id,
                channel_id=self.network.name,
                proposed_transaction=signed,
                endorsing_organizations=list(endorsing_orgs or ()),
            ),
            timeout=gateway.deadlines.endorse,
            retry=gateway.retry,
            error_type=EndorseError,
            tx_id=tx_id,
        )
        envelope = endorsed.prepared_transaction
        try:
            check_prepared_transaction(envelope, signed.proposal_bytes)
            result = result_from_envelope(envelope)
            timestamp_ms = envelope_timestamp_ms(envelope)
        except GatewayProtocolError as exc:
            exc.tx_id = tx_id
            raise
        return tx_id, envelope, result, timestamp_ms

    def submit_async(
        self,
        function: str,
        *args: str | bytes,
        transient: Mapping[str, bytes] | None = None,
        endorsing_orgs: Sequence[str] | None = None,
    ) -> SubmittedTransaction:
        """Endorse, sign and submit; return at once with the result (commit not awaited)."""
        gateway = self.network.gateway
        tx_id, envelope, result, timestamp_ms = self._endorse(function, args, transient, endorsing_orgs)
        envelope.signature = gateway.signing.sign(envelope.payload)
        # Signed before Submit, so that nothing can fail between ordering and waiting.
        status_request = _signed_commit_status_request(self.network, tx_id)
        transaction = SubmittedTransaction(self.network, tx_id, result, status_request, timestamp_ms)
        try:
            call(
                gateway.stub.Submit,
                gateway_pb2.SubmitRequest(
                    transaction_id=tx_id, channel_id=self.network.name, prepared_transaction=envelope
                ),
                timeout=gateway.deadlines.submit,
                retry=gateway.retry,
                error_type=SubmitError,
                tx_id=tx_id,
            )
        except SubmitError as exc:
            # The envelope may have been ordered all the same: whoever handles the error
            # can still ask for its commit (never endorse the change again).
            exc.transaction = transaction
            raise
        return transaction

    def submit(
        self,
        function: str,
        *args: str | bytes,
        transient: Mapping[str, bytes] | None = None,
        endorsing_orgs: Sequence[str] | None = None,
        commit_timeout: float | None = None,
    ) -> SubmitResult:
        """Endorse, submit and wait for the commit; :class:`CommitError` unless VALID.

        When Submit fails, the transaction may have been ordered anyway (a BFT ordering
        service answers a copy it has already ordered with an error): its commit status
        is asked for, for ``Deadlines.orphan_check`` seconds, before the
        :class:`SubmitError` is raised.
        """
        try:
            submitted = self.submit_async(
                function, *args, transient=transient, endorsing_orgs=endorsing_orgs
            )
        except SubmitError as exc:
            orphan = exc.transaction
            if orphan is None:
                raise
            try:
                orphan.status(self.network.gateway.deadlines.orphan_check)
            except CommitStatusError:
                raise exc from None
            return orphan.wait()
        return submitted.wait(commit_timeout)


def _signed_commit_status_request(
    network: Network, tx_id: str
) -> gateway_pb2.SignedCommitStatusRequest:
    signing = network.gateway.signing
    request = commit_status_request(channel=network.name, tx_id=tx_id, creator=signing.creator)
    return gateway_pb2.SignedCommitStatusRequest(request=request, signature=signing.sign(request))


def _commit_status(
    network: Network,
    request: gateway_pb2.SignedCommitStatusRequest,
    tx_id: str,
    timeout: float | None,
) -> CommitStatus:
    gateway = network.gateway
    response = call(
        gateway.stub.CommitStatus,
        request,
        timeout=gateway.deadlines.commit_status if timeout is None else timeout,
        retry=gateway.retry,
        error_type=CommitStatusError,
        tx_id=tx_id,
    )
    return CommitStatus(tx_id=tx_id, code=response.result, block_number=response.block_number)


class SubmittedTransaction:
    """A transaction handed to the ordering service; its commit can be awaited."""

    def __init__(
        self,
        network: Network,
        tx_id: str,
        result: bytes,
        status_request: gateway_pb2.SignedCommitStatusRequest,
        timestamp_ms: int = 0,
    ) -> None:
        self.network = network
        self.tx_id = tx_id
        self.result = result
        self.timestamp_ms = timestamp_ms
        self._status_request = status_request
        self._status: CommitStatus | None = None

    def status(self, timeout: float | None = None) -> CommitStatus:
        """Wait (up to ``timeout``) for the commit and say how it went; asks only once."""
        if self._status is None:
            self._status = _commit_status(self.network, self._status_request, self.tx_id, timeout)
        return self._status

    def wait(self, timeout: float | None = None) -> SubmitResult:
        """The committed result; :class:`CommitError` when it committed other than VALID."""
        status = self.status(timeout)
        if not status.successful:
            raise CommitError(
                tx_id=self.tx_id, validation_code=status.name, block_number=status.block_number
            )
        return SubmitResult(self.result, self.tx_id, status.block_number, status.name, self.timestamp_ms)


@dataclass
class _Position:
    start_block: int | None
    after_tx_id: str | None
    failures: int = field(default=0)


class ChaincodeEventStream(Iterator[ChaincodeEvent]):
    """Chaincode events in commit order; reconnects after transient failures without gaps.

    The stream never ends by itself: :meth:`close` (from any thread) ends the iteration.
    """

    def __init__(
        self, network: Network, chaincode: str, start_block: int | None, after_tx_id: str | None
    ) -> None:
        self.network = network
        self.chaincode = chaincode
        self._position = _Position(start_block, after_tx_id)
        self._buffer: deque[ChaincodeEvent] = deque()
        self._call: Any = None
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def checkpoint(self) -> tuple[int | None, str | None]:
        """``(block_number, tx_id)`` of the last event returned: where a new stream resumes."""
        return self._position.start_block, self._position.after_tx_id

    def _open(self) -> None:
        gateway = self.network.gateway
        if self._position.start_block is None:
            # Pin "the next commit" to a block number now, so that a reconnect cannot skip
            # events committed while the stream was down.
            try:
                self._position.start_block = self.network.get_chain_info().height
            except GatewayError as exc:
                raise ChaincodeEventsError(
                    f"could not read the channel height to start from: {exc.message}",
                    code=exc.code,
                    details=exc.details,
                ) from exc
        request = chaincode_events_request(
            channel=self.network.name,
            chaincode=self.chaincode,
            creator=gateway.signing.creator,
            start_block=self._position.start_block,
            after_tx_id=self._position.after_tx_id,
        )
        signed = gateway_pb2.SignedChaincodeEventsRequest(
            request=request, signature=gateway.signing.sign(request)
        )
        with self._lock:
            if not self._closed.is_set():
                self._call = gateway.stub.ChaincodeEvents(signed)

    def _receive(self) -> None:
        try:
            if self._call is None:
                self._open()
            if self._call is None:  # closed while opening
                return
            response = next(self._call)
        except StopIteration:
            # A peer never ends the stream by itself; reconnect as after a dropped one.
            self._call = None
            if not self._closed.is_set() and not self._pause():
                raise ChaincodeEventsError("the peer kept ending the event stream") from None
            return
        except grpc.RpcError as exc:
            self._call = None
            if self._closed.is_set() or (is_transient(exc) and self._pause()):
                return
            raise error_from_rpc(exc, ChaincodeEventsError) from exc
        self._position.failures = 0
        for event in response.events:
            self._buffer.append(
                ChaincodeEvent(
                    block_number=response.block_number,
                    tx_id=event.tx_id,
                    chaincode_id=event.chaincode_id,
                    event_name=event.event_name,
                    payload=bytes(event.payload),
                )
            )

    def _pause(self) -> bool:
        """Back off before reconnecting; False once the retry policy's attempts are spent."""
        pauses = self.network.gateway.retry.backoffs()
        if self._position.failures >= len(pauses):
            return False
        self.network.gateway.retry.sleep(pauses[self._position.failures])
        self._position.failures += 1
        return True

    def __next__(self) -> ChaincodeEvent:
        while not self._buffer:
            if self._closed.is_set():
                raise StopIteration
            self._receive()
        event = self._buffer.popleft()
        self._position.start_block, self._position.after_tx_id = event.block_number, event.tx_id
        return event

    def close(self) -> None:
        """End the stream: a blocked ``next()`` returns StopIteration."""
        with self._lock:
            self._closed.set()
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> ChaincodeEventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def choose_peer(profile: ConnectionProfile, msp_id: str, peer: str | None) -> PeerEndpoint:
    """The peer a Gateway of ``msp_id`` dials: ``peer`` if named, else its org's first, else the channel's first."""
    peers = profile.peers()
    if peer is not None:
        for _, endpoint in peers:
            if peer in (endpoint.name, endpoint.endpoint):
                return endpoint
        raise ProfileError(f"the connection profile has no peer {peer!r}")
    own = [endpoint for msp, endpoint in peers if msp == msp_id]
    if own or peers:
        # An organisation without a peer (an auditor) uses the first peer of the channel.
        return (own or [endpoint for _, endpoint in peers])[0]
    raise ProfileError("the connection profile has no peers")


def connect_from_profile(
    profile: ConnectionProfile,
    msp_id: str,
    identity_name: str = "user",
    peer: str | None = None,
    *,
    deadlines: Deadlines | None = None,
    retry: RetryPolicy | None = None,
) -> Gateway:
    """A Gateway to ``peer`` (default: the org's own first peer) as ``msp_id``'s identity."""
    org = profile.org(msp_id)
    keys = org.identities.get(identity_name)
    if keys is None:
        raise ProfileError(
            f"{msp_id} has no identity {identity_name!r}; it has {sorted(org.identities)}"
        )
    if keys.key is None:
        raise ProfileError(f"{msp_id} identity {identity_name!r} has no private key in the profile")
    return connect_as(
        profile, load_identity(msp_id, keys.cert), load_signer(keys.key), peer,
        deadlines=deadlines, retry=retry,
    )


def connect_as(
    profile: ConnectionProfile,
    identity: Identity,
    signer: Signer | None,
    peer: str | None = None,
    *,
    deadlines: Deadlines | None = None,
    retry: RetryPolicy | None = None,
) -> Gateway:
    """A Gateway to ``peer`` (default: the identity's org's first peer) signing with ``signer``.

    The TLS client certificate for mutual TLS is the organisation's, from the profile.
    """
    msp_id = identity.msp_id
    org = profile.org(msp_id)
    endpoint = choose_peer(profile, msp_id, peer)
    client_cert = client_key = None
    if org.tls_client is not None:
        if org.tls_client.key is None:
            raise ProfileError(f"{msp_id} tls_client has a certificate but no key")
        client_cert = _read(org.tls_client.cert, "TLS client certificate")
        client_key = _read(org.tls_client.key, "TLS client key")
    return Gateway.connect(
        endpoint.endpoint,
        tls_ca_pem=_read(endpoint.tls_ca, "peer TLS CA certificate"),
        server_name=endpoint.server_name,
        identity=identity,
        signer=signer,
        client_cert_pem=client_cert,
        client_key_pem=client_key,
        deadlines=deadlines,
        retry=retry,
    )
