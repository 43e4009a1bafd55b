"""SmartBFT ordering: four orderers, one per institution, and the channel keeps committing
with any one of them killed — so no single institution can stop the audit records."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator

import pytest

from ledger.fabric.gateway import connect_from_profile
from ledger.fabric.install import FabricInstall
from ledger.fabric.network import Network
from tests.fixtures.fabric import start_network, stop_network

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

POLICY = json.dumps({"auditor_msps": ["AuditorMSP"]})


@pytest.fixture(scope="module")
def bft_network(fabric_install: FabricInstall, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = start_network(fabric_install, tmp_path_factory.mktemp("bft-net"), consensus="bft")
    try:
        yield network
    finally:
        survivors = stop_network(network)
        assert not survivors, f"processes survived network down: {survivors}"


def test_bft_network_runs_four_orderers_of_four_organisations(bft_network: Network) -> None:
    status = bft_network.status()

    assert status.healthy, status.to_json()
    orderers = [n for n in status.nodes if n.kind == "orderer"]
    assert len(orderers) == 4
    msps = {o.msp_id for o in bft_network.top.orderers}
    assert msps == {"CoordinatorOrdererMSP", "BankAOrdererMSP", "BankBOrdererMSP", "BankCOrdererMSP"}


@pytest.mark.parametrize("victim", ["orderer0", "orderer1", "orderer2", "orderer3"])
def test_the_channel_keeps_committing_with_any_one_orderer_killed(bft_network: Network, victim: str) -> None:
    profile = bft_network.profile()
    pid = bft_network.pid(victim)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    try:
        with connect_from_profile(profile, "CoordinatorMSP") as gateway:
            contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
            started = time.monotonic()
            results = [contract.submit("InitFederation", "bft-" + secrets.token_hex(5), POLICY,
                                       commit_timeout=90) for _ in range(3)]
            elapsed = time.monotonic() - started
        assert [r.status for r in results] == ["VALID"] * 3, elapsed
        assert results[0].block_number < results[1].block_number < results[2].block_number
    finally:
        bft_network.restart_process(victim)
    # The restarted orderer catches up with the others.
    deadline = time.monotonic() + 60
    while True:
        heights = {n.name: n.height for n in bft_network.status().nodes if n.kind == "orderer"}
        if len(set(heights.values())) == 1:
            break
        assert time.monotonic() < deadline, heights
        time.sleep(0.5)
