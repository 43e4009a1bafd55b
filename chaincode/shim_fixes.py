"""The one place where fabric-chaincode-python 2.5.4 is imported and its in-process defects fixed.

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

Defects 1–3 and 5 concern the chaincode server talking to a real peer and are fixed
where that server lives, not here.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

__all__ = [
    "SHIM_LOGGER_NAME",
    "ChaincodeStub",
    "ClientIdentity",
    "Contract",
    "ContractChaincode",
    "TransactionContext",
    "check_context_annotations",
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
from fabric_chaincode_python.fabric_shim.stub import ChaincodeStub  # noqa: E402


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
