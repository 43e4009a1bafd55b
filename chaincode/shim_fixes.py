"""The one place where fabric-chaincode-python 2.5.4 is imported and its defects neutralised.

Import the library's names from here, never from ``fabric_chaincode_python`` directly, so
that the fixes below are applied before anything else touches it (FABRIC-NOTES, defects):

* **Defect 7** — importing ``fabric_shim.logging`` calls ``logging.basicConfig(level=DEBUG)``
  on the root logger, moves the ``asyncio`` logger's handlers behind a ``QueueListener``
  thread, and the shim then logs every key and payload at INFO on the ``asyncio`` logger.
  We snapshot the root and ``asyncio`` loggers, import, restore both exactly, stop the
  listener thread, and point every library module at its own logger
  (``fabric_chaincode_python``, level WARNING), so payloads are never logged.
* **Defect 6** — a transaction function whose ``ctx`` is not annotated
  ``TransactionContext`` silently takes the context as an ordinary argument.
  :func:`check_context_annotations` registers a contract exactly as the real dispatcher
  does and refuses one whose functions do not all receive the context.

The chaincode server (``chaincode/server.py``) talks to a real peer through the library's
``Handler``; the defects of that conversation are fixed here too, by subclasses and
functions that only the server uses. The library's own classes stay untouched, so the
embedded ledger (which drives :class:`ChaincodeStub` in-process) runs exactly the code it
always ran:

* **Defect 1** — the handler writes to the peer stream from one task per message with no
  lock; two writes in flight at once fail with ``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS`` and
  the peer then waits its whole chaincode timeout. :class:`SerialisedStream` lets one
  write at a time through.
* **Defect 2** — ``set_event`` stores the event on the stub, but the COMPLETED message never
  carries it, so blocks hold no chaincode events. :meth:`FixedHandler.handle_stub_interaction`
  puts the event in ``ChaincodeMessage.chaincode_event``.
* **Defect 3** — a peer ERROR reply to ``get_state``/``put_state``/… resolves the request as
  if it had succeeded (``get_state`` returns the error text as the value; a refused
  ``put_state`` is silently dropped and the transaction can commit VALID without its
  write). :class:`CheckedMsgQueueHandler` raises :class:`PeerError` in the contract instead.
* **Defect 5** — the library's server never reads the ``CORE_TLS_CLIENT_*`` variables it
  names: unless key and certificate are passed to ``start()`` it serves plaintext, without
  a word. :func:`mutual_tls_credentials` builds the server's credentials from PEM material
  given explicitly, and always requires a client certificate.
* And every transaction is answered: where the library lets an exception end the task
  (a proposal it cannot decode), :class:`FixedHandler` still sends COMPLETED with an error,
  so the peer does not wait out its timeout.

:func:`new_handler` is the one switch: the server asks it for a handler per peer
connection, with the fixes (always, in production) or without them (only to reproduce
the defects in tests).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import AsyncIterable
from typing import Any, Protocol

import grpc
import structlog
from fabric_protos.peer import chaincode_event_pb2, chaincode_pb2, chaincode_shim_pb2, proposal_response_pb2

__all__ = [
    "SHIM_LOGGER_NAME",
    "Chaincode",
    "ChaincodeStub",
    "ClientIdentity",
    "Contract",
    "ContractChaincode",
    "Handler",
    "TransactionContext",
    "check_context_annotations",
    "PeerError",
    "SerialisedStream",
    "CheckedMsgQueueHandler",
    "FixedHandler",
    "new_handler",
    "end_stream",
    "handler_busy",
    "mutual_tls_credentials",
]

SHIM_LOGGER_NAME = "fabric_chaincode_python"

# Every library module that binds the hijacked ``asyncio`` logger as a module global.
_MODULES_WITH_LOGGER = (
    "fabric_chaincode_python.fabric_shim.stub",
    "fabric_chaincode_python.fabric_shim.handler",
    "fabric_chaincode_python.fabric_shim.msg_queue_handler",
    "fabric_chaincode_python.fabric_shim.server",
    "fabric_chaincode_python.fabric_contract_api.contractapi.contract_chaincode",
)
_LOGGING_MODULE = "fabric_chaincode_python.fabric_shim.logging"
# Logged by the shim for every peer message; carries no information.
_NOISE = "-->> Look out!"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _NOISE


def _snapshot(logger: logging.Logger) -> tuple[int, list[logging.Handler], bool, bool]:
    return logger.level, list(logger.handlers), logger.propagate, logger.disabled


def _restore(logger: logging.Logger, state: tuple[int, list[logging.Handler], bool, bool]) -> None:
    level, handlers, propagate, disabled = state
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
    for handler in handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
    logger.disabled = disabled


def _import_quietly() -> None:
    first_import = _LOGGING_MODULE not in sys.modules
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    saved_root, saved_aio = _snapshot(root), _snapshot(aio)
    try:
        modules = [importlib.import_module(name) for name in _MODULES_WITH_LOGGER]
        shim_logging = importlib.import_module(_LOGGING_MODULE)
    finally:
        if first_import:
            _restore(root, saved_root)
            _restore(aio, saved_aio)
    if first_import:
        # The listener thread only forwards the asyncio logger's former handlers, which
        # we just gave back to it.
        listener = getattr(shim_logging, "_QUEUE_LISTENER", None)
        if listener is not None and getattr(listener, "_thread", None) is not None:
            listener.stop()
    quiet = logging.getLogger(SHIM_LOGGER_NAME)
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropNoise) for f in quiet.filters):
        quiet.addFilter(_DropNoise())
    for module in (shim_logging, *modules):
        setattr(module, "LOGGER", quiet)  # noqa: B010 - rebinding the library's module global


_import_quietly()

from fabric_chaincode_python.fabric_contract_api.contractapi import (  # noqa: E402
    ClientIdentity,
    Contract,
    ContractChaincode,
    TransactionContext,
)
from fabric_chaincode_python.fabric_shim.handler import STATES, Handler  # noqa: E402
from fabric_chaincode_python.fabric_shim.interfaces import Chaincode  # noqa: E402
from fabric_chaincode_python.fabric_shim.msg_queue_handler import MsgQueueHandler, QueueMessage  # noqa: E402
from fabric_chaincode_python.fabric_shim.response import ResponseCode  # noqa: E402
from fabric_chaincode_python.fabric_shim.stub import ChaincodeStub  # noqa: E402

ChaincodeMessage = chaincode_shim_pb2.ChaincodeMessage
log = structlog.get_logger("fedledger.chaincode")


def check_context_annotations(contract: Any) -> ContractChaincode:
    """Register ``contract`` as the real dispatcher would, and refuse a missing ``ctx`` (defect 6).

    Returns the :class:`ContractChaincode` so callers can dispatch through it.
    """
    chaincode = ContractChaincode.new_chaincode(contract)
    name = contract.get_name()
    missing = sorted(
        fn_name
        for fn_name, fn in chaincode._contracts[name].functions.items()
        if fn.params.context is None
    )
    if missing:
        raise TypeError(
            f"transaction functions {missing} of contract {name} do not receive the "
            "TransactionContext: annotate ctx as TransactionContext"
        )
    return chaincode


# --- the chaincode server's peer stream (defects 1, 2, 3) -------------------------------


class PeerError(Exception):
    """The peer answered a request of the contract (``GetState``, ``PutState``, …) with ERROR.

    Raised inside the contract (defect 3), so the dispatcher fails the transaction with
    ``"PEER_ERROR: …"`` and the peer never endorses a result that lacks a refused write.
    """

    code = "PEER_ERROR"

    def __init__(self, request: str, reason: str) -> None:
        super().__init__(f"{self.code}: the peer refused {request}: {reason}")
        self.request = request
        self.reason = reason


class StreamWriter(Protocol):
    """The write side of a gRPC stream (``grpc.aio.ServicerContext`` has this method)."""

    async def write(self, message: Any) -> None:
        """Send one message on the stream."""
        ...


class SerialisedStream:
    """The write side of one peer stream, letting one write through at a time (defect 1).

    gRPC allows one outstanding write per call. The library's handler writes from one task
    per peer message (REGISTER, every GetState/PutState request, every COMPLETED), so with
    transactions in flight a write starts before the previous one finished and fails with
    ``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS`` — a lost request or a lost COMPLETED, after which
    the peer waits its chaincode timeout. Every write of :class:`FixedHandler` and of its
    message queue goes through :meth:`write`; ``asyncio.Lock`` is FIFO, so writes leave in
    the order they were made.
    """

    def __init__(self, stream: StreamWriter) -> None:
        self._stream = stream
        self._lock = asyncio.Lock()

    async def write(self, message: Any) -> None:
        """Send ``message`` once every earlier write has completed."""
        async with self._lock:
            await self._stream.write(message)

    async def close(self) -> None:
        """Wait for the write in flight to complete, then let no other write start.

        A stream must not end with a write still in flight: gRPC would fail the call's
        final status with the same ``TOO_MANY_OPERATIONS`` error.
        """
        await self._lock.acquire()  # never released: the stream is over


class _CheckedQueueMessage(QueueMessage):
    """A request to the peer whose ERROR reply fails the waiting contract call (defect 3)."""

    def success(self, response: Any) -> None:
        """Resolve the waiting call with ``response``, or raise :class:`PeerError` in it."""
        if self.future.done():
            # The transaction waiting for this reply was cancelled (its stream closed).
            return
        if response.type == ChaincodeMessage.ERROR:
            reason = bytes(response.payload).decode("utf-8", errors="replace")
            self.future.set_exception(PeerError(self.get_method(), reason))
        else:
            super().success(response)


class CheckedMsgQueueHandler(MsgQueueHandler):
    """The library's per-transaction request queue, with peer ERROR replies raised (defect 3).

    The library resolves a request with whatever the peer answered, RESPONSE or ERROR
    alike: ``get_state`` then returns the peer's error text as the value, and a refused
    ``put_state`` looks successful, so the transaction can be endorsed — and committed
    VALID — without its write. Each queued request is wrapped so that an ERROR reply
    raises :class:`PeerError` where the contract awaits it.
    """

    async def queue_msg(self, msg: QueueMessage) -> None:
        """Queue ``msg`` for the peer; its reply is checked before the contract sees it."""
        await super().queue_msg(_CheckedQueueMessage(msg.get_msg(), msg.get_method(), msg.future))


def _error_response(message: str) -> proposal_response_pb2.Response:
    return proposal_response_pb2.Response(status=ResponseCode.ERROR, message=message)


def _last_event(stub: ChaincodeStub) -> chaincode_event_pb2.ChaincodeEvent | None:
    # Fabric keeps one event per transaction, the last one set (as the Go shim's SetEvent).
    # The peer fills in the chaincode id and tx id itself.
    events = stub.get_events()
    if not events:
        return None
    return chaincode_event_pb2.ChaincodeEvent(event_name=events[-1].event_name, payload=events[-1].payload)


class FixedHandler(Handler):
    """The library's handler for one peer connection, with defects 1, 2 and 3 fixed.

    Only the two methods that carry the defects are replaced; message routing, request
    queueing and every ``handle_*`` request builder are the library's own.
    """

    async def chat_with_peer(self, stream: AsyncIterable[Any], context: StreamWriter) -> None:
        """Register with the peer, then handle each of its messages in its own task.

        The library's steps, with every write serialised (defect 1) and peer ERROR replies
        raised (defect 3) — and without its logging of each message's payload.
        """
        self.state = STATES.CREATED
        self.context = SerialisedStream(context)
        self.msg_queue_handler = CheckedMsgQueueHandler(self)
        register = ChaincodeMessage(type=ChaincodeMessage.REGISTER, payload=self.chaincode_id.SerializeToString())
        register.timestamp.GetCurrentTime()
        await self.context.write(register)
        async for message in stream:
            # A transaction awaiting the peer's reply must not stop that reply being read.
            self._track_task(self.handle_message(message))
        if self._pending_tasks:
            await asyncio.gather(*self._pending_tasks, return_exceptions=True)

    async def handle_stub_interaction(self, msg: Any, action: str = "Invoke") -> None:
        """Run one transaction and answer COMPLETED, carrying its chaincode event (defect 2)."""
        response, event = await self._execute(msg, action)
        completed = ChaincodeMessage(
            type=ChaincodeMessage.COMPLETED,
            payload=response.SerializeToString(),
            txid=msg.txid,
            channel_id=msg.channel_id,
        )
        if event is not None:
            completed.chaincode_event.CopyFrom(event)
        await self.context.write(completed)

    async def _execute(
        self, msg: Any, action: str
    ) -> tuple[proposal_response_pb2.Response, chaincode_event_pb2.ChaincodeEvent | None]:
        try:
            cc_input = chaincode_pb2.ChaincodeInput.FromString(msg.payload)
            stub = ChaincodeStub(self, msg.channel_id, msg.txid, cc_input, msg.proposal)
            if action.lower() == "init":
                response = await self.chaincode.init(stub)
            else:
                response = await self.chaincode.invoke(stub)
        except Exception as exc:  # noqa: BLE001 - the transaction boundary, see below
            # The stub raises bare Exception for a proposal it cannot decode; the contract's
            # own errors never get here (the dispatcher turns them into responses). Whatever
            # failed, the peer must get its COMPLETED, or it waits its chaincode timeout.
            log.warning("transaction_failed", tx_id=msg.txid, error=type(exc).__name__)
            return _error_response(f"the chaincode failed: {type(exc).__name__}: {exc}"), None
        if not response or not response.status:
            return _error_response(f"{action}() returned no response"), None
        return response, _last_event(stub)


def new_handler(chaincode_id: str, chaincode: Chaincode, *, fixes: bool = True) -> Handler:
    """The handler for one peer connection: :class:`FixedHandler`.

    ``fixes=False`` gives the library's own handler, with defects 1–3 — only so that tests
    can reproduce them against a real peer.
    """
    if fixes:
        return FixedHandler(chaincode_id, chaincode)
    return Handler(chaincode_id, chaincode)


async def end_stream(handler: Handler) -> None:
    """Prepare ``handler``'s stream to be ended by the server: no write in flight, none to come.

    Cancels the messages still being handled (their transactions fail at the peer when
    the stream ends). Only :class:`FixedHandler` can wait for its write in flight; the
    library's own handler writes unguarded.
    """
    if isinstance(handler.context, SerialisedStream):
        await handler.context.close()
    for task in list(getattr(handler, "_pending_tasks", ())):
        task.cancel()


def handler_busy(handler: Handler) -> bool:
    """Whether a message of ``handler``'s stream (a transaction, a reply) is still being handled.

    The library keeps one task per message in ``Handler._pending_tasks`` (both handlers);
    the server stops without waiting out its grace period once no handler is busy.
    """
    return bool(getattr(handler, "_pending_tasks", ()))


# --- the chaincode server's TLS (defect 5) ----------------------------------------------


def mutual_tls_credentials(*, key_pem: bytes, cert_pem: bytes, client_ca_pem: bytes) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate issued by ``client_ca_pem`` (defect 5).

    The library's server takes its TLS material only from ``start()``'s arguments — the
    ``CORE_TLS_CLIENT_KEY_PATH``/``CORE_TLS_CLIENT_CERT_PATH`` it names are never read —
    serves plaintext without a word when any is missing, and treats an unreadable path as
    PEM text. The project's server reads and checks the files itself and builds its
    credentials here, from explicit PEM bytes, never serving a peer without a client
    certificate.
    """
    if not (key_pem and cert_pem and client_ca_pem):
        raise ValueError("mutual TLS needs a private key, a certificate and a client CA")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=client_ca_pem, require_client_auth=True
    )
