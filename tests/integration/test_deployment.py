"""Deployment mode for real: a coordinator and three institutions as separate processes on
127.0.0.1, TLS and SuperNode authentication, two audited rounds — on the embedded ledger
and on the session's real Fabric network (each institution registering with its own org
identity, the coordinator recording as CoordinatorMSP, the auditor reading as AuditorMSP)
— one institution revoked between the rounds, one node with an unregistered key refused,
and every process stopped by pid at the end.

The federation trains on its own data, not the demo's: Boston mortgage applications
(HMDA), with other columns, categorical and yes/no features and missing cells, declared
in ``[federation.data]``. Each institution's CSV lives in its own directory and is named
only on its own node's command line: the coordinator's federation file names no
institution file. Institutions evaluate every committed model on their hold-outs and
sign the metrics; the auditor re-verifies them.

The rounds run in two coordinator runs (``--rounds 1`` then ``--rounds 2``) so that the
revocation falls exactly between them; the second run also proves that a restarted
coordinator resumes from the last ``CommitModel`` (round 2 follows round 1, nothing twice).

``FEDLEDGER_DEPLOY_TEST_APP`` may name another Flower app directory (default: this project).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fl import onboarding
from fl.data import DataSchema
from fl.config import DeploymentConfig, FederationConfig, ParticipantConfig, TrainingConfig, msp_for, project_root, write_config
from fl.identities import adopt_network_cas, member_credentials
from ledger import processes
from fl.runtime import FLOWER_OFFLINE_ENV
from ledger import pki
from ledger.factory import open_ledger
from tests.fixtures.datasets import hmda_federation

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BANKS = ("bank-a", "bank-b", "bank-c")
FED = "deploy-fed"
APP = Path(os.environ.get("FEDLEDGER_DEPLOY_TEST_APP") or project_root())


def _free_port(taken: set[int]) -> int:
    """A free port in this suite's range 19000-19999."""
    for port in random.sample(range(19000, 20000), 1000):
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError("no free port in 19000-19999")


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str, on_timeout: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")


class Deployment:
    """A federation work directory plus the CLI, and every pid it ever started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "federation.toml"
        self.env = {**os.environ, **FLOWER_OFFLINE_ENV, "FEDLEDGER_CONFIG": str(self.config)}
        self.pids: set[int] = set()
        self.runtime_ports: dict[str, int] = {}
        self.cfg: FederationConfig | None = None
        self.data: dict[str, Path] = {}  # institution → its own CSV (never in the federation file)
        self.schema: DataSchema | None = None

    def write_config(self, **changes: Any) -> None:
        """(Re)write the federation file (``[federation]`` and ``[deployment]``) with ``changes``."""
        assert self.cfg is not None
        self.cfg = self.cfg.model_copy(update=changes)
        write_config(self.cfg, self.config)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``fedledger <args>`` as its own process."""
        return subprocess.run([sys.executable, "-m", "fl.cli", *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def cli_json(self, *args: str) -> dict[str, Any]:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, f"fedledger {' '.join(args)} failed:\n{result.stderr}\n{result.stdout}"
        return json.loads(result.stdout)

    def state(self, *parts: str) -> dict[str, Any]:
        state = processes.read_json(self.workdir.joinpath(*parts, "state.json")) or {}
        self.remember(state)
        return state

    def remember(self, state: dict[str, Any]) -> None:
        """Note every pid a service reports, and their descendants while they live."""
        for key in ("pid", "superlink_pid", "run_pid", "supernode_pid"):
            if state.get(key):
                pid = int(state[key])
                self.pids.add(pid)
                self.pids.update(processes.descendants(pid))

    def coordinator_log(self) -> str:
        root = self.workdir / "coordinator"
        return "\n".join(f"--- {name}\n{processes.tail(root / name, 40)}"
                         for name in ("service.log", "run.log", "superlink.log"))

    def wait_coordinator_done(self, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            state = self.state("coordinator")
            return state if state.get("status") in ("stopped", "failed") else None

        return _wait_for(done, timeout, "the coordinator run to finish", self.coordinator_log)


@pytest.fixture(params=["embedded", "fabric"])
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A federation of three admitted banks on the given ledger; stops every process at the end."""
    dep = Deployment(tmp_path)
    ports: set[int] = set()
    # Each bank's CSV in a directory of its own; the federation file names none of them.
    own_data = hmda_federation(tmp_path / "institutions", parts=len(BANKS), seed=3)
    dep.data = {bank: own_data.paths[name] for bank, name in zip(BANKS, sorted(own_data.paths))}
    dep.schema = own_data.schema
    fabric = request.param == "fabric"
    profile = request.getfixturevalue("fabric_network").top.profile_path if fabric else None
    cfg = FederationConfig(
        # A Fabric channel outlives a test: a fresh federation id each time.
        id=f"{FED}-{secrets.token_hex(3)}" if fabric else FED, rounds=2, workdir=tmp_path,
        ledger=request.param, fabric_profile=profile,
        training=TrainingConfig(local_epochs=1),
        data=own_data.schema,
        validation=own_data.validation,  # the coordinator's own held-out file
        participants=[ParticipantConfig(id=b, msp_id=msp_for(b)) for b in BANKS],
        deployment=DeploymentConfig(host="127.0.0.1", port=_free_port(ports), sync_interval=1.0, app=APP),
    )
    dep.cfg = cfg
    dep.write_config()
    dep.runtime_ports = {b: _free_port(ports) for b in (*BANKS, "rogue")}

    from fl.deploy.federation import init_federation

    ws = cfg.workspace
    # On Fabric participant certificates come from the network's org CAs and ledger
    # identities are the network's (its MSPs trust no other CA).
    if not adopt_network_cas(cfg, {p.msp_id for p in cfg.participants}):
        pki.demo_identity(ws.pki_root, "coordinator", cfg.coordinator_msp)
        pki.demo_identity(ws.pki_root, "auditor", "AuditorMSP")
    coordinator = member_credentials(cfg, cfg.coordinator_msp, "coordinator")
    init_federation(cfg, coordinator)
    target = onboarding.LedgerTarget.from_config(cfg)
    for participant in cfg.participants:
        pki.demo_identity(ws.pki_root, participant.id, participant.msp_id)
        own = member_credentials(cfg, participant.msp_id, participant.id)
        onboarding.register(target, own, participant.id, ws.cert(participant.msp_id, participant.id),
                            ca_cert_path=ws.ca_cert(participant.msp_id),
                            key_path=ws.key(participant.msp_id, participant.id), examples=100_000)
        onboarding.admit(target, coordinator, participant.id)
    pki.keygen(tmp_path / "rogue", "rogue", "RogueMSP")  # a key no ledger entry vouches for

    yield dep

    # Stop every service by pid (their own stop handles their Flower children), then
    # anything a service reported that is somehow still alive, then check none is.
    for name in (*BANKS, "rogue"):
        dep.remember(dep.state("clients", name))
        dep.cli("client", "stop", "-p", name, timeout=60)
    dep.remember(dep.state("coordinator"))
    dep.cli("coordinator", "stop", timeout=60)
    for pid in sorted(dep.pids):
        processes.stop(pid, timeout=5)
    alive = [pid for pid in sorted(dep.pids) if processes.pid_alive(pid)]
    assert alive == [], f"processes still alive after the test: {alive}"


def _start_client(dep: Deployment, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    port = str(dep.runtime_ports[name])
    data = ["--data", str(dep.data[name])] if name in dep.data and "--data" not in extra else []
    result = dep.cli("client", "start", "-p", name, "--detach", "--json", "--runtime-port", port, *data, *extra)
    dep.state("clients", name)
    return result


def _turned_away(dep: Deployment, name: str) -> bool:
    """The institution's SuperNode has stopped and its service no longer runs."""
    state = dep.state("clients", name)
    return state.get("status") not in ("running", "starting") and not processes.pid_alive(
        int(state.get("supernode_pid") or 0))


def _run_finished(dep: Deployment) -> dict[str, Any] | None:
    """The coordinator's state once its run has finished (it keeps serving)."""
    state = dep.state("coordinator")
    return state if str(state.get("run_status", "")).startswith("finished") else None


def test_three_institutions_train_two_audited_rounds_over_tls_with_node_auth_and_a_revocation(
    deployment: Deployment,
) -> None:
    dep = deployment

    # Round 1: coordinator (SuperLink with TLS + node auth) and three authenticated nodes.
    started = dep.cli_json("coordinator", "start", "--detach", "--rounds", "1", "--exit-after-run")
    dep.remember(started)
    assert started["status"] == "running"
    assert set(started["nodes"]) == set(BANKS)  # admitted keys registered with the SuperLink
    # A node whose key the ledger does not vouch for is refused at the transport.
    rogue = _start_client(dep, "rogue", "--key", str(dep.workdir / "rogue" / "rogue.key"),
                          "--data", str(dep.data["bank-a"]))
    assert rogue.returncode == 1, rogue.stderr  # the request was refused
    assert "refused" in rogue.stderr
    assert "Exit Code: 305" in (dep.workdir / "clients" / "rogue" / "supernode.log").read_text()

    # The federation file names no institution's data; a node whose file does not fit the
    # declared schema refuses to start and says where.
    assert all(p.data is None for p in dep.cfg.participants)  # type: ignore[union-attr]
    assert not any(str(path) in dep.config.read_text() for path in dep.data.values())
    broken = dep.workdir / "institutions" / "broken.csv"
    lines = dep.data["bank-a"].read_text().splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index("chist")] = "99"
    broken.write_text("\n".join([*lines[:3], ",".join(row), *lines[4:]]) + "\n")
    refused = _start_client(dep, "bank-a", "--data", str(broken))
    assert refused.returncode == 1, refused.stderr
    assert "row 3" in refused.stdout + refused.stderr and "'chist'" in refused.stdout + refused.stderr

    node_ids = {}
    for bank in BANKS:
        result = _start_client(dep, bank)
        assert result.returncode == 0, result.stderr
        node_ids[bank] = json.loads(result.stdout)["node_id"]
        assert node_ids[bank], f"{bank} did not connect\n{dep.coordinator_log()}"
    assert node_ids == started["nodes"]  # each node authenticated with its institution's key


    first = dep.wait_coordinator_done(420)
    assert first["status"] == "stopped" and first["run_status"] == "finished:completed", dep.coordinator_log()

    # Between the rounds the coordinator revokes bank-c on the ledger.
    revoked = dep.cli_json("participant", "revoke", "-p", "bank-c", "--reason", "integration test")
    assert revoked["status"] == "revoked"

    # Two institutions remain active: the quorum a round waits for shrinks with the
    # revocation, so no operator step is needed.

    # Round 2: the restarted coordinator unregisters bank-c's key; its node is turned away.
    second_start = dep.cli_json("coordinator", "start", "--detach", "--rounds", "2")
    dep.remember(second_start)
    # Registered node keys live in the SuperLink database: same node ids after the restart.
    assert second_start["nodes"] == {b: node_ids[b] for b in ("bank-a", "bank-b")}
    _wait_for(lambda: _turned_away(dep, "bank-c"), 60, "bank-c's node to be turned away")
    second = _wait_for(lambda: _run_finished(dep), 420, "round 2 to finish", dep.coordinator_log)
    assert second["run_status"] == "finished:completed", dep.coordinator_log()

    # An institution node restarted keeps its identity (the coordinator still serves).
    dep.cli_json("client", "stop", "-p", "bank-a")
    restarted = json.loads(_start_client(dep, "bank-a").stdout)
    assert restarted["status"] == "running"
    assert restarted["node_id"] == node_ids["bank-a"]

    # The coordinator stops cleanly on SIGTERM, with its whole process tree.
    stopped = dep.cli_json("coordinator", "stop")
    assert stopped["was_running"] and stopped["killed"] == []
    assert not any(processes.pid_alive(pid) for pid in stopped["tree"])

    # The ledger holds both rounds, once each; bank-c is absent from round 2.
    assert dep.cfg is not None
    fed = dep.cfg.id
    reader = member_credentials(dep.cfg, "CoordinatorMSP", "coordinator")
    ledger = open_ledger(dep.cfg.ledger_config, reader)
    try:
        rounds = ledger.list_rounds(fed)
        participants = {p.id: p.status for p in ledger.participants(fed)}
    finally:
        ledger.close()
    assert [r.round for r in rounds] == [1, 2]
    assert all(r.commit is not None for r in rounds)
    assert sorted(rounds[0].commit.accepted) == list(BANKS)  # type: ignore[union-attr]
    assert sorted(rounds[1].commit.accepted) == ["bank-a", "bank-b"]  # type: ignore[union-attr]
    assert not any(e.participant == "bank-c" and e.status == "accepted" for e in rounds[1].record.entries)
    assert rounds[1].record.base_model == rounds[0].commit.model  # type: ignore[union-attr]
    assert participants["bank-c"] == "revoked"
    # Each accepted reply came from the node authenticated with that participant's key.
    for view in rounds:
        for entry in view.record.entries:
            if entry.status == "accepted":
                assert entry.node == node_ids[entry.participant]

    # The auditor, with its own identity, re-checks everything (on Fabric: block
    # inclusion, hash chain and orderer signatures too), and rewards are issued once.
    issued = dep.cli_json("rewards", "issue")  # the federation: FEDLEDGER_CONFIG
    assert [r["round"] for r in issued] == [1, 2]  # type: ignore[index]
    audit = dep.cli_json("audit", "verify")
    # The auditor sees the declared schema on the ledger and every institution's signed
    # evaluation of each committed model, re-verified against its certificate.
    assert audit["policy"]["data_schema_digest"] == dep.schema.digest()  # type: ignore[union-attr]
    evaluated = {int(r): sorted(e["institutions"]) for r, e in audit["evaluations"].items()}
    assert evaluated == {1: list(BANKS), 2: ["bank-a", "bank-b"]}
    assert all(m["signature_verified"] and 0 <= m["auc_ppm"] <= 1_000_000 and m["examples"] > 0
               for e in audit["evaluations"].values() for m in e["institutions"].values())
    logged = [json.loads(line) for line in dep.cfg.rounds_log.read_text().splitlines()]
    assert [sorted(r["evaluation"]) for r in logged] == [list(BANKS), ["bank-a", "bank-b"]]
    assert audit["ok"], audit["problems"]
    assert audit["rounds"] == 2 and audit["aggregates_recomputed"] == 2
    assert audit["blocks_checked"] >= rounds[1].commit_tx.block_number  # type: ignore[union-attr]
