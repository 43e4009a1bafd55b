"""fabric-chaincode-python 2.5.4's defects, each reproduced as shipped and shown neutralised.

* Defect 7 (logging hijack): each check runs in a fresh interpreter, since the defect
  fires at import time, once per process.
* Defects 1, 2, 3 (the peer stream): the library's handler and ``FixedHandler`` are driven
  over an in-memory peer stream with the real dispatcher and stub (a fake for unit tests;
  ``tests/integration/test_fabric_shim_defects.py`` shows the same against a real peer).
* Defect 5 (TLS): the credentials builder here; the servers in ``test_chaincode_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fabric_protos.common import common_pb2
from fabric_protos.peer import chaincode_pb2, chaincode_shim_pb2, proposal_pb2, proposal_response_pb2

from chaincode.shim_fixes import (
    Contract,
    FixedHandler,
    Handler,
    PeerError,
    SerialisedStream,
    TransactionContext,
    check_context_annotations,
    handler_busy,
    mutual_tls_credentials,
    new_handler,
)
from ledger.embedded.runtime import serialize_identity, timestamp_of

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import asyncio, json, logging, sys, threading
root, aio = logging.getLogger(), logging.getLogger("asyncio")
if CONFIGURED:  # an application that set up logging before importing the contract
    root.setLevel(logging.INFO)
    root.addHandler(logging.StreamHandler(sys.stderr))

def state():
    return {
        "root_level": root.level,
        "root_handlers": [id(h) for h in root.handlers],
        "asyncio_level": aio.level,
        "asyncio_handlers": [id(h) for h in aio.handlers],
        "threads": sorted(t.name for t in threading.enumerate()),
    }

before = state()
import IMPORTED
after = state()

seen = []
class Recorder(logging.Handler):
    def emit(self, record):
        seen.append(record.getMessage())
root.addHandler(Recorder())
root.setLevel(logging.DEBUG)

from fabric_chaincode_python.fabric_shim.stub import ChaincodeStub
class Peer:
    async def handle_put_state(self, *args):
        return None
    async def handle_get_state(self, *args):
        return b"secret-value"
stub = ChaincodeStub(Peer(), "channel", "tx", None, None)
async def touch():
    await stub.put_state("secret-key", b"secret-payload")
    await stub.get_state("secret-key")
asyncio.run(touch())
print(json.dumps({"before": before, "after": after, "leaks": [m for m in seen if "secret" in m]}))
"""


def _probe(module: str, *, configured: bool) -> dict:
    script = _PROBE.replace("IMPORTED", module).replace("CONFIGURED", str(configured))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def test_importing_the_library_directly_hijacks_logging_and_leaks_payloads() -> None:
    # The defect as shipped: if this starts failing, upstream fixed it and shim_fixes may go.
    seen = _probe("fabric_chaincode_python.fabric_shim.stub", configured=False)

    assert seen["before"]["root_level"] == 30 and seen["after"]["root_level"] == 10  # WARNING -> DEBUG
    assert len(seen["after"]["root_handlers"]) == 1 and seen["before"]["root_handlers"] == []
    assert len(seen["after"]["threads"]) > len(seen["before"]["threads"])  # a QueueListener thread
    assert any("secret-payload" in m for m in seen["leaks"])


@pytest.mark.parametrize("configured", [False, True], ids=["bare-root", "configured-root"])
def test_importing_the_contract_leaves_root_logger_level_handlers_and_threads_unchanged(configured: bool) -> None:
    seen = _probe("chaincode.fedaudit", configured=configured)

    assert seen["after"] == seen["before"]


def test_the_shim_never_logs_keys_or_payloads_even_with_the_root_logger_at_debug() -> None:
    seen = _probe("chaincode.fedaudit", configured=False)

    assert seen["leaks"] == []


# --- defects 1, 2, 3: the handler of the peer stream ------------------------------------
#
# Each test drives a handler — the library's own and the project's FixedHandler — over an
# in-memory peer stream, with the real contract dispatcher and the real stub. The fake peer
# behaves like gRPC in the one way that matters for defect 1: it refuses a write while the
# previous write on the stream is still in flight.

Msg = chaincode_shim_pb2.ChaincodeMessage
CHANNEL = "fedledger"


class Probe(Contract):
    """One stub call per function, so a test sees exactly what the handler does with it."""

    Name = "probe"

    async def Put(self, ctx: TransactionContext, key: str, value: str) -> str:
        """put_state, then set an event."""
        await ctx.get_stub().put_state(key, value.encode())
        ctx.get_stub().set_event("Put", f"{key}={value}".encode())
        return "stored"

    async def Get(self, ctx: TransactionContext, key: str) -> str:
        """get_state, returned as text."""
        return bytes(await ctx.get_stub().get_state(key)).decode()

    async def EmitTwice(self, ctx: TransactionContext) -> str:
        """Two set_event calls: Fabric keeps the last."""
        ctx.get_stub().set_event("First", b"1")
        ctx.get_stub().set_event("Second", b"2")
        return ""


class TooManyOperationsError(RuntimeError):
    """What gRPC raises for a second write in flight on one call."""


Answer = Callable[[chaincode_shim_pb2.ChaincodeMessage], chaincode_shim_pb2.ChaincodeMessage | None]


def store_answer(state: dict[str, bytes], refuse: dict[int, bytes] | None = None) -> Answer:
    """The peer's reply to each state request: RESPONSE from ``state``, or ERROR for the
    message types in ``refuse`` (with that error text)."""

    def answer(msg: chaincode_shim_pb2.ChaincodeMessage) -> chaincode_shim_pb2.ChaincodeMessage | None:
        if refuse and msg.type in refuse:
            return Msg(type=Msg.ERROR, payload=refuse[msg.type], txid=msg.txid, channel_id=msg.channel_id)
        if msg.type == Msg.GET_STATE:
            key = chaincode_shim_pb2.GetState.FromString(msg.payload).key
            return Msg(type=Msg.RESPONSE, payload=state.get(key, b""), txid=msg.txid, channel_id=msg.channel_id)
        if msg.type == Msg.PUT_STATE:
            put = chaincode_shim_pb2.PutState.FromString(msg.payload)
            state[put.key] = put.value
            return Msg(type=Msg.RESPONSE, txid=msg.txid, channel_id=msg.channel_id)
        return None

    return answer


class FakePeer:
    """The peer's end of one chaincode stream, in memory (read side and ``context.write``)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.inbox: asyncio.Queue[chaincode_shim_pb2.ChaincodeMessage | None] = asyncio.Queue()
        self.sent: list[chaincode_shim_pb2.ChaincodeMessage] = []
        self.completed: dict[str, chaincode_shim_pb2.ChaincodeMessage] = {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.refused_writes = 0

    async def write(self, message: chaincode_shim_pb2.ChaincodeMessage) -> None:
        if self.in_flight:
            self.refused_writes += 1
            raise TooManyOperationsError("GRPC_CALL_ERROR_TOO_MANY_OPERATIONS")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # a real write yields until the transport has taken it
        finally:
            self.in_flight -= 1
        self.sent.append(message)
        if message.type == Msg.REGISTER:
            self.inbox.put_nowait(Msg(type=Msg.REGISTERED))
            self.inbox.put_nowait(Msg(type=Msg.READY))
        elif message.type == Msg.COMPLETED:
            self.completed[message.txid] = message
        else:
            reply = self.answer(message)
            if reply is not None:
                self.inbox.put_nowait(reply)

    def __aiter__(self) -> FakePeer:
        return self

    async def __anext__(self) -> chaincode_shim_pb2.ChaincodeMessage:
        message = await self.inbox.get()
        if message is None:
            raise StopAsyncIteration
        return message


def transaction(tx_id: str, function: str, *args: str) -> chaincode_shim_pb2.ChaincodeMessage:
    """A TRANSACTION message as the peer sends it: the input and the signed proposal."""
    cc_input = chaincode_pb2.ChaincodeInput(args=[f"probe:{function}".encode(), *(a.encode() for a in args)])
    chaincode_id = chaincode_pb2.ChaincodeID(name="probe")
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION, timestamp=timestamp_of(1_700_000_000_000),
        channel_id=CHANNEL, tx_id=tx_id,
        extension=proposal_pb2.ChaincodeHeaderExtension(chaincode_id=chaincode_id).SerializeToString(),
    )
    creator = serialize_identity("ProbeMSP", "not a certificate")
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common_pb2.SignatureHeader(creator=creator, nonce=b"n" * 24).SerializeToString(),
    )
    spec = chaincode_pb2.ChaincodeInvocationSpec(
        chaincode_spec=chaincode_pb2.ChaincodeSpec(chaincode_id=chaincode_id, input=cc_input)
    )
    proposal = proposal_pb2.Proposal(
        header=header.SerializeToString(),
        payload=proposal_pb2.ChaincodeProposalPayload(input=spec.SerializeToString()).SerializeToString(),
    )
    return Msg(
        type=Msg.TRANSACTION, txid=tx_id, channel_id=CHANNEL, payload=cc_input.SerializeToString(),
        proposal=proposal_pb2.SignedProposal(proposal_bytes=proposal.SerializeToString()),
    )


def run_stream(
    handler: Handler, transactions: list[chaincode_shim_pb2.ChaincodeMessage], answer: Answer, *, timeout: float = 1.0
) -> FakePeer:
    """Connect ``handler`` to a fake peer, send ``transactions`` at once, wait for their COMPLETED
    (or ``timeout``: a lost COMPLETED never comes), then close the stream."""

    async def scenario() -> FakePeer:
        peer = FakePeer(answer)
        chat = asyncio.ensure_future(handler.chat_with_peer(peer, peer))
        while not peer.sent:  # REGISTER, answered with REGISTERED and READY
            await asyncio.sleep(0)
        for tx in transactions:
            peer.inbox.put_nowait(tx)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(peer.completed) < len(transactions) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        peer.inbox.put_nowait(None)
        try:
            await asyncio.wait_for(chat, timeout)
        except TimeoutError:
            pass  # a library handler still waiting for replies that were never sent
        return peer

    return asyncio.run(scenario())


def response_of(completed: chaincode_shim_pb2.ChaincodeMessage) -> proposal_response_pb2.Response:
    return proposal_response_pb2.Response.FromString(completed.payload)


def library_handler() -> Handler:
    return new_handler("probe:0", check_context_annotations(Probe()), fixes=False)


def fixed_handler() -> Handler:
    return new_handler("probe:0", check_context_annotations(Probe()), fixes=True)


# Defect 1 ------------------------------------------------------------------------------


def test_the_library_handler_writes_concurrently_and_loses_transactions() -> None:
    # The defect as shipped: if this starts failing, upstream serialised its writes.
    txs = [transaction(f"tx{i}", "Put", f"k{i}", "v") for i in range(20)]

    peer = run_stream(library_handler(), txs, store_answer({}), timeout=0.3)

    assert peer.refused_writes > 0
    succeeded = [t for t, m in peer.completed.items() if response_of(m).status == 200]
    assert len(succeeded) < len(txs)


def test_concurrent_transactions_write_to_the_stream_one_at_a_time_and_all_complete() -> None:
    txs = [transaction(f"tx{i}", "Put", f"k{i}", "v") for i in range(50)]
    state: dict[str, bytes] = {}

    peer = run_stream(fixed_handler(), txs, store_answer(state))

    assert peer.refused_writes == 0 and peer.most_in_flight == 1
    assert sorted(peer.completed) == sorted(t.txid for t in txs)
    assert {response_of(m).status for m in peer.completed.values()} == {200}
    assert len(state) == 50


def test_serialised_stream_keeps_the_order_of_writes() -> None:
    async def scenario() -> list[int]:
        peer = FakePeer(store_answer({}))
        stream = SerialisedStream(peer)
        await asyncio.gather(*(stream.write(Msg(type=Msg.PUT_STATE, txid=str(i))) for i in range(10)))
        return [int(m.txid) for m in peer.sent]

    assert asyncio.run(scenario()) == list(range(10))


# Defect 2 ------------------------------------------------------------------------------


def test_the_library_handler_drops_the_chaincode_event() -> None:
    peer = run_stream(library_handler(), [transaction("tx1", "Put", "k", "v")], store_answer({}))

    completed = peer.completed["tx1"]
    assert response_of(completed).status == 200
    assert not completed.HasField("chaincode_event")


def test_the_event_set_by_the_contract_travels_in_the_completed_message() -> None:
    peer = run_stream(fixed_handler(), [transaction("tx1", "Put", "k", "v")], store_answer({}))

    event = peer.completed["tx1"].chaincode_event
    assert (event.event_name, event.payload) == ("Put", b"k=v")


def test_only_the_last_event_of_a_transaction_is_sent_as_fabric_keeps_one() -> None:
    peer = run_stream(fixed_handler(), [transaction("tx1", "EmitTwice")], store_answer({}))

    event = peer.completed["tx1"].chaincode_event
    assert (event.event_name, event.payload) == ("Second", b"2")


def test_a_transaction_without_an_event_sends_none() -> None:
    peer = run_stream(fixed_handler(), [transaction("tx1", "Get", "k")], store_answer({"k": b"v"}))

    assert response_of(peer.completed["tx1"]).payload == b"v"
    assert not peer.completed["tx1"].HasField("chaincode_event")


# Defect 3 ------------------------------------------------------------------------------

REFUSED = b"transaction has already performed a paginated query. Writes are not allowed"


def test_the_library_handler_takes_a_refused_put_state_for_success() -> None:
    # The defect as shipped: the peer refused the write, the transaction still succeeds.
    state: dict[str, bytes] = {}
    answer = store_answer(state, refuse={Msg.PUT_STATE: REFUSED})

    peer = run_stream(library_handler(), [transaction("tx1", "Put", "k", "v")], answer)

    assert response_of(peer.completed["tx1"]).status == 200
    assert state == {}


def test_the_library_handler_returns_the_peer_error_text_as_the_value() -> None:
    answer = store_answer({"k": b"v"}, refuse={Msg.GET_STATE: b"ledger unavailable"})

    peer = run_stream(library_handler(), [transaction("tx1", "Get", "k")], answer)

    assert response_of(peer.completed["tx1"]).payload == b"ledger unavailable"


def test_a_refused_put_state_fails_the_transaction_with_the_peer_reason() -> None:
    answer = store_answer({}, refuse={Msg.PUT_STATE: REFUSED})

    peer = run_stream(fixed_handler(), [transaction("tx1", "Put", "k", "v")], answer)

    response = response_of(peer.completed["tx1"])
    assert response.status == 500
    assert response.message == f"PEER_ERROR: the peer refused PutState: {REFUSED.decode()}"
    assert not peer.completed["tx1"].HasField("chaincode_event")


def test_a_refused_get_state_fails_the_transaction_instead_of_returning_a_value() -> None:
    answer = store_answer({"k": b"v"}, refuse={Msg.GET_STATE: b"ledger unavailable"})

    peer = run_stream(fixed_handler(), [transaction("tx1", "Get", "k")], answer)

    response = response_of(peer.completed["tx1"])
    assert (response.status, response.payload) == (500, b"")
    assert response.message == "PEER_ERROR: the peer refused GetState: ledger unavailable"


def test_peer_error_carries_the_request_and_the_reason() -> None:
    error = PeerError("PutState", "no")

    assert (error.request, error.reason, str(error)) == ("PutState", "no", "PEER_ERROR: the peer refused PutState: no")


# The transaction boundary ---------------------------------------------------------------


def test_a_transaction_whose_proposal_does_not_decode_is_still_answered() -> None:
    # The library would let the stub's exception end the task: no COMPLETED, and the peer
    # waits its chaincode timeout.
    broken = transaction("tx1", "Get", "k")
    broken.proposal.proposal_bytes = b"\x0a\x02not a proposal"

    peer = run_stream(fixed_handler(), [broken], store_answer({}))

    response = response_of(peer.completed["tx1"])
    assert response.status == 500 and response.message.startswith("the chaincode failed:")


def test_a_handler_is_busy_only_while_a_message_is_being_handled() -> None:
    async def scenario() -> tuple[bool, bool]:
        handler = fixed_handler()
        release = asyncio.Event()

        async def hold() -> None:
            await release.wait()

        handler._track_task(hold())
        during = handler_busy(handler)
        release.set()
        await asyncio.sleep(0.01)
        return during, handler_busy(handler)

    assert asyncio.run(scenario()) == (True, False)


def test_new_handler_gives_the_fixed_handler_unless_asked_for_the_library_one() -> None:
    assert type(fixed_handler()) is FixedHandler
    assert type(library_handler()) is Handler


# Defect 5 ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["key_pem", "cert_pem", "client_ca_pem"])
def test_mutual_tls_credentials_refuse_to_be_built_without_all_three_parts(missing: str) -> None:
    parts = {"key_pem": b"k", "cert_pem": b"c", "client_ca_pem": b"ca", missing: b""}

    with pytest.raises(ValueError, match="mutual TLS needs"):
        mutual_tls_credentials(**parts)
