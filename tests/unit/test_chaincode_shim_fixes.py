"""fabric-chaincode-python defect 7 (logging hijack), reproduced and shown neutralised.

Each check runs in a fresh interpreter: the defect fires at import time, once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
