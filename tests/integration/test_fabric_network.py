"""The local Fabric network: bring-up, idempotence, faults, upgrade and teardown, for real.

These run the Fabric 3.1.5 binaries (orderer, peers) and the project's chaincode servers
as processes on 127.0.0.1; nothing is simulated.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger import processes
from ledger.fabric.admin import PeerAdmin
from ledger.fabric.install import FabricInstall
from ledger.fabric.network import Network, NetworkError
from ledger.fabric.topology import Topology
from tests.fixtures.fabric import free_base_port, start_network, stop_network

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fl.cli", *args], capture_output=True, text=True, timeout=300,
        cwd=REPO, env={**os.environ, **(env or {})}, check=False,
    )


def test_network_is_healthy_with_fedaudit_committed_under_a_majority_of_peer_orgs(fabric_network: Network) -> None:
    status = fabric_network.status()

    assert status.healthy, status.to_json()
    kinds = sorted(n.kind for n in status.nodes)
    assert kinds == ["chaincode"] * 3 + ["orderer"] + ["peer"] * 3
    heights = {n.height for n in status.nodes if n.kind in ("peer", "orderer")}
    assert len(heights) == 1 and heights.pop() >= 3  # genesis, approvals, commit
    assert status.chaincode is not None
    assert (status.chaincode["name"], status.chaincode["sequence"]) == ("fedaudit", 1)
    # Every peer org approved; the peerless members did not need to.
    approvals = status.chaincode["approvals"]
    assert {m for m, ok in approvals.items() if ok} == {"CoordinatorMSP", "BankAMSP", "BankBMSP"}
    assert fabric_network.definition().policy == (
        "OutOf(2, 'CoordinatorMSP.peer', 'BankAMSP.peer', 'BankBMSP.peer')"
    )


def test_connection_profile_names_every_org_and_only_three_run_peers(fabric_network: Network) -> None:
    profile = json.loads(fabric_network.top.profile_path.read_text())

    assert set(profile["orgs"]) == {"CoordinatorMSP", "BankAMSP", "BankBMSP", "BankCMSP", "AuditorMSP"}
    with_peers = {msp for msp, org in profile["orgs"].items() if org["peers"]}
    assert with_peers == {"CoordinatorMSP", "BankAMSP", "BankBMSP"}
    for org in profile["orgs"].values():
        for identity in org["identities"].values():
            assert Path(identity["cert"]).is_file() and Path(identity["key"]).is_file()


def test_every_endpoint_refuses_a_client_without_a_certificate(fabric_network: Network) -> None:
    """Mutual TLS: a TLS client that presents no certificate gets no service."""
    import ssl

    top = fabric_network.top
    endpoints = [(p.host, p.port, top.peer_crypto(p) / "tls" / "ca.crt") for p in top.peers]
    endpoints += [(o.host, o.port, top.orderer_crypto(o) / "tls" / "ca.crt") for o in top.orderers]
    for s in top.chaincode_servers:
        endpoints.append((s.host, s.port, top.data_dir / "chaincode" / s.org.name / "ca.crt"))
    for host, port, ca in endpoints:
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        context.set_alpn_protocols(["h2"])
        with socket.create_connection((host, port), timeout=5) as raw:
            refused = False
            try:
                with context.wrap_socket(raw) as tls:
                    # TLS 1.3 reports a missing client certificate on the first read.
                    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    refused = tls.recv(1) == b""
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                refused = True
        assert refused, f"{host}:{port} served a client without a certificate"


def test_up_on_a_running_network_changes_nothing(fabric_network: Network) -> None:
    pids = {n: fabric_network.pid(n) for n in fabric_network.process_names()}
    steps: list[str] = []

    fabric_network.up(steps.append)

    assert steps == ["already running"]
    assert {n: fabric_network.pid(n) for n in fabric_network.process_names()} == pids


def test_a_port_in_use_is_one_clear_error_and_starts_nothing(
    fabric_install: FabricInstall, tmp_path: Path
) -> None:
    top = Topology(data_dir=tmp_path / "net", base_port=free_base_port())
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", top.peers[1].port))
    blocker.listen()
    try:
        with pytest.raises(NetworkError, match=rf"port\(s\) in use on 127.0.0.1: {top.peers[1].port} \(peer0.banka\)"):
            Network(top, fabric_install).up()
    finally:
        blocker.close()
    assert not (tmp_path / "net" / "pids").exists()


def test_a_half_started_network_stops_what_it_started_and_names_the_cause(
    fabric_install: FabricInstall, tmp_path: Path
) -> None:
    top = Topology(data_dir=tmp_path / "net", base_port=free_base_port())
    network = Network(top, fabric_install, chaincode_module="chaincode.no_such_server")
    started: list[str] = []

    with pytest.raises(NetworkError, match=r"chaincode.coordinator exited during start-up: .*No module named"):
        network.up(started.append)

    assert "starting 3 peers" in started  # it got that far before failing
    assert all(network.pid(name) is None for name in network.process_names())
    assert not list((top.data_dir / "pids").glob("*.pid")) if (top.data_dir / "pids").exists() else True
    # The next attempt starts from scratch (no half-made crypto or channel is reused).
    assert not top.state_path.exists() and not top.crypto_dir.exists()


def test_restart_after_a_crash_keeps_the_ledger_and_upgrade_moves_to_the_next_sequence(
    fabric_install: FabricInstall, tmp_path: Path
) -> None:
    network = start_network(fabric_install, tmp_path / "net")
    try:
        before = network.status()
        height = max(n.height or 0 for n in before.nodes)
        # A crash: SIGKILL one peer (by its pid); status reports it.
        os.kill(network.pid("peer0.banka") or 0, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while network.pid("peer0.banka") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        crashed = {n.name: n for n in network.status().nodes}
        assert not crashed["peer0.banka"].running and not crashed["peer0.banka"].healthy
        assert not network.status().healthy

        # up on a crashed network refuses to guess; down stops what is left, up restarts.
        with pytest.raises(NetworkError, match="half running"):
            network.up()
        network.down()
        assert all(network.pid(n) is None for n in network.process_names())
        network.up()
        after = network.status()
        assert after.healthy, after.to_json()
        assert min(n.height or 0 for n in after.nodes if n.kind == "peer") >= height
        assert after.chaincode and after.chaincode["sequence"] == 1

        definition = network.upgrade_chaincode("1.1")

        assert (definition.version, definition.sequence) == ("1.1", 2)
        committed = PeerAdmin(fabric_install, network.top, network.top.peers[2]).committed("fedaudit")
        assert committed and committed["version"] == "1.1" and committed["sequence"] == 2
        # Every peer reaches its upgraded server (answers with the contract's own error).
        for peer in network.top.peers:
            reply = PeerAdmin(fabric_install, network.top, peer).query("fedaudit", "GetFederation", "none")
            assert "NOT_FOUND: federation none does not exist" in reply.stderr
    finally:
        survivors = stop_network(network)
    assert not survivors


def test_cli_up_status_down_purge_leave_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "cli-net"
    base = str(free_base_port())

    up = _cli("network", "up", "--data-dir", str(data), "--base-port", base, "--json")
    try:
        assert up.returncode == 0, up.stderr
        report = json.loads(up.stdout)
        assert report["healthy"] and not report["already_running"]
        pids = [n["pid"] for n in report["nodes"]]
        assert len(pids) == 7 and all(processes.pid_alive(p) for p in pids)

        status = _cli("network", "status", "--data-dir", str(data), "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["chaincode"]["sequence"] == 1
        again = _cli("network", "up", "--data-dir", str(data), "--json")
        assert json.loads(again.stdout)["already_running"] is True
        logs = _cli("network", "logs", "peer0.coordinator", "--data-dir", str(data), "-n", "5")
        assert logs.returncode == 0 and logs.stdout.strip()
    finally:
        down = _cli("network", "down", "--data-dir", str(data), "--purge", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["purged"] is True
    assert not any(processes.pid_alive(p) for p in pids)
    assert not data.exists()
    gone = _cli("network", "status", "--data-dir", str(data))
    assert gone.returncode == 3 and "no network here" in gone.stderr  # unavailable
