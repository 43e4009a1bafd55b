"""The network under load, and under faults, on the real Fabric processes.

200 transactions in flight all commit VALID; a chaincode server and a peer killed
(SIGKILL, by pid) in the middle of a load and restarted lose nothing that was reported
committed, and every failure during the outage is a typed, reported error.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from ledger.fabric.gateway import (
    Contract,
    EvaluateError,
    GatewayError,
    SubmitResult,
    connect_from_profile,
)
from ledger.fabric.network import Network
from ledger.fabric.profile import ConnectionProfile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

POLICY = json.dumps({"auditor_msps": ["AuditorMSP"]})
PEER_ORGS = ("CoordinatorMSP", "BankAMSP", "BankBMSP")


def _fresh() -> str:
    return "load-" + secrets.token_hex(6)


def _on_every_peer(contract: Contract, feds: list[str], timeout: float = 60.0) -> dict[str, list[str]]:
    """Federations missing on each peer organisation's peer after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    missing = {msp: list(feds) for msp in PEER_ORGS}
    while any(missing.values()) and time.monotonic() < deadline:
        for msp in PEER_ORGS:
            still = []
            for fed in missing[msp]:
                try:
                    contract.evaluate("GetFederation", fed, target_orgs=[msp])
                except GatewayError:
                    still.append(fed)
            missing[msp] = still
        if any(missing.values()):
            time.sleep(0.5)
    return {msp: feds for msp, feds in missing.items() if feds}


def test_200_transactions_in_flight_all_commit_valid(fabric_profile: ConnectionProfile) -> None:
    feds = [_fresh() for _ in range(200)]
    with connect_from_profile(fabric_profile, "CoordinatorMSP") as gateway:
        contract = gateway.get_network(fabric_profile.channel).get_contract(fabric_profile.chaincode)

        def submit(fed: str) -> SubmitResult:
            return contract.submit("InitFederation", fed, POLICY)

        with ThreadPoolExecutor(max_workers=200) as pool:
            outcomes = list(pool.map(submit, feds))

        assert [o.status for o in outcomes] == ["VALID"] * 200
        assert len({o.tx_id for o in outcomes}) == 200
        assert _on_every_peer(contract, feds) == {}


@dataclass
class _Load:
    """Submissions from a few threads until stopped: what committed and what failed."""

    contract: Contract
    committed: list[tuple[float, str]] = field(default_factory=list)
    failed: list[tuple[float, BaseException]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self) -> None:
        while not self.stop.is_set():
            fed = _fresh()
            try:
                result = self.contract.submit("InitFederation", fed, POLICY)
            except BaseException as exc:  # noqa: BLE001 - the test asserts on every kind
                with self.lock:
                    self.failed.append((time.monotonic(), exc))
                time.sleep(0.2)
                continue
            with self.lock:
                if result.status == "VALID":
                    self.committed.append((time.monotonic(), fed))
                else:
                    self.failed.append((time.monotonic(), RuntimeError(f"{fed}: {result.status}")))

    def count(self) -> int:
        with self.lock:
            return len(self.committed)

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} of {n} committed in time"
            time.sleep(0.05)


def _kill(network: Network, name: str) -> None:
    pid = network.pid(name)
    assert pid is not None, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while network.pid(name) is not None:
        assert time.monotonic() < deadline, f"{name} survived SIGKILL"
        time.sleep(0.05)


def test_a_chaincode_server_and_a_peer_killed_mid_load_lose_nothing_committed(
    fabric_network: Network, fabric_profile: ConnectionProfile
) -> None:
    with connect_from_profile(fabric_profile, "CoordinatorMSP") as gateway:
        contract = gateway.get_network(fabric_profile.channel).get_contract(fabric_profile.chaincode)
        load = _Load(contract)
        threads = [threading.Thread(target=load.worker, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            load.wait_for(40, timeout=60)
            # Two organisations down at once: BankA's chaincode server and BankB's peer.
            # With only the coordinator able to endorse, nothing can commit (2 of 3 needed).
            _kill(fabric_network, "chaincode.banka")
            _kill(fabric_network, "peer0.bankb")
            killed_at = time.monotonic()
            time.sleep(3)
            fabric_network.restart_process("chaincode.banka")
            fabric_network.restart_process("peer0.bankb")
            restarted_at = time.monotonic()
            before = load.count()
            load.wait_for(before + 40, timeout=120)
        finally:
            load.stop.set()
            for t in threads:
                t.join(timeout=90)

        feds = [fed for _, fed in load.committed]
        assert len(feds) >= 80
        # Nothing reported committed is lost, on any peer — the restarted one included.
        assert _on_every_peer(contract, feds) == {}
        # The outage produced typed, reported errors (never a silent success) and only then.
        assert load.failed, "killing two organisations' components must make submissions fail"
        assert all(isinstance(exc, GatewayError) for _, exc in load.failed), [
            repr(e) for _, e in load.failed if not isinstance(e, GatewayError)]
        assert all(killed_at - 1 <= at for at, _ in load.failed)
        # Once both were back, submissions committed again.
        assert any(at > restarted_at for at, _ in load.committed)
        with pytest.raises(EvaluateError, match="NOT_FOUND"):
            contract.evaluate("GetFederation", _fresh())
    status = fabric_network.status()
    assert status.healthy, status.to_json()
