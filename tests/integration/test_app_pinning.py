"""Institutions that pin the ClientApp they run, with real processes.

A coordinator (SuperLink with TLS + node auth) and two institutions on the embedded
ledger. Each institution reviewed the app's source, computed its FAB hash with
``fedledger client app-hash`` and started its node with ``--approve-app``. A run of that
app trains and commits a round. Then the coordinator runs the same app with one line
changed: both nodes refuse it before installing or running anything — their state names
the refused hash, Flower's app directory for it was never created — and the ledger
accepts nothing from that run. Then the relay ClientApp (``fl.relay_app``), pinned the
same way, trains a round through each institution's warm trainer (``client start
--trainer``). Every process is stopped by pid at the end.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl import onboarding
from fl.config import DeploymentConfig, FederationConfig, ParticipantConfig, TrainingConfig, msp_for, project_root
from fl.identities import member_credentials
from ledger import pki, processes
from ledger.factory import open_ledger
from tests.fixtures.datasets import hmda_federation
from tests.integration.test_deployment import Deployment, _free_port, _wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BANKS = ("bank-a", "bank-b")
FED = "pinned-fed"


def _copy_app(dest: Path) -> Path:
    """The project's Flower app as an institution would review it: pyproject and the shipped code."""
    root = project_root()
    dest.mkdir(parents=True)
    shutil.copy2(root / "pyproject.toml", dest / "pyproject.toml")
    for package in ("fl", "ledger", "chaincode"):
        shutil.copytree(root / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture
def pinned(tmp_path: Path) -> Iterator[tuple[Deployment, Path, Path]]:
    """Two admitted banks; a reviewed copy of the app and a copy with one line changed."""
    # Copies taken now: the coordinator ships exactly these bytes, whatever else changes.
    reviewed = _copy_app(tmp_path / "reviewed" / "fedledger")
    changed = _copy_app(tmp_path / "changed" / "fedledger")
    client = changed / "fl" / "client_app.py"
    client.write_text(client.read_text().replace("import functools", "import functools  # one line changed", 1))

    dep = Deployment(tmp_path)
    ports: set[int] = set()
    own = hmda_federation(tmp_path / "institutions", parts=len(BANKS), seed=5)
    dep.data = {bank: own.paths[name] for bank, name in zip(BANKS, sorted(own.paths))}
    dep.schema = own.schema
    dep.cfg = FederationConfig(
        id=FED, rounds=1, workdir=tmp_path, ledger="embedded", training=TrainingConfig(local_epochs=1),
        data=own.schema, validation=own.validation,
        participants=[ParticipantConfig(id=b, msp_id=msp_for(b)) for b in BANKS],
        deployment=DeploymentConfig(host="127.0.0.1", port=_free_port(ports), sync_interval=1.0, app=reviewed),
    )
    dep.write_config()
    dep.runtime_ports = {b: _free_port(ports) for b in BANKS}

    from fl.deploy.federation import init_federation

    cfg = dep.cfg
    ws = cfg.workspace
    pki.demo_identity(ws.pki_root, "coordinator", cfg.coordinator_msp)
    pki.demo_identity(ws.pki_root, "auditor", "AuditorMSP")
    coordinator = member_credentials(cfg, cfg.coordinator_msp, "coordinator")
    init_federation(cfg, coordinator)
    target = onboarding.LedgerTarget.from_config(cfg)
    for participant in cfg.participants:
        pki.demo_identity(ws.pki_root, participant.id, participant.msp_id)
        member = member_credentials(cfg, participant.msp_id, participant.id)
        onboarding.register(target, member, participant.id, ws.cert(participant.msp_id, participant.id),
                            ca_cert_path=ws.ca_cert(participant.msp_id),
                            key_path=ws.key(participant.msp_id, participant.id), examples=100_000)
        onboarding.admit(target, coordinator, participant.id)

    yield dep, reviewed, changed

    for bank in BANKS:
        dep.remember(dep.state("clients", bank))
        dep.cli("client", "stop", "-p", bank, timeout=60)
    dep.remember(dep.state("coordinator"))
    dep.cli("coordinator", "stop", timeout=60)
    for pid in sorted(dep.pids):
        processes.stop(pid, timeout=5)
    alive = [pid for pid in sorted(dep.pids) if processes.pid_alive(pid)]
    assert alive == [], f"processes still alive after the test: {alive}"


def _installed(dep: Deployment, bank: str, fab_hash: str) -> list[Path]:
    """Flower's installed-app directories of ``fab_hash`` under the node's FLWR_HOME."""
    assert dep.cfg is not None
    home = dep.cfg.workspace.client(bank).flwr_home
    return [p for p in home.rglob(f"*.{fab_hash[:8]}") if p.is_dir()] if home.exists() else []


def test_an_approved_app_trains_and_the_same_app_with_one_line_changed_is_refused_without_running(
    pinned: tuple[Deployment, Path, Path],
) -> None:
    dep, reviewed, changed = pinned
    assert dep.cfg is not None
    approved = dep.cli_json("client", "app-hash", str(reviewed))["fab_hash"]
    other = dep.cli_json("client", "app-hash", str(changed))["fab_hash"]
    assert approved != other

    started = dep.cli_json("coordinator", "start", "--detach", "--rounds", "1", "--exit-after-run")
    dep.remember(started)
    assert started["status"] == "running", dep.coordinator_log()
    for bank in BANKS:
        result = dep.cli("client", "start", "-p", bank, "--detach", "--json", "--runtime-port",
                         str(dep.runtime_ports[bank]), "--data", str(dep.data[bank]), "--approve-app", approved)
        assert result.returncode == 0, result.stderr
        state = json.loads(result.stdout)
        dep.remember(state)
        assert state["approved_apps"] == [approved]

    first = dep.wait_coordinator_done(420)
    assert first["run_status"] == "finished:completed", dep.coordinator_log()
    for bank in BANKS:
        assert dep.state("clients", bank).get("refused_apps") == []
        assert _installed(dep, bank, approved), f"{bank} never installed the approved app"

    # The coordinator now ships the app with one line changed.
    dep.write_config(deployment=dep.cfg.deployment.model_copy(update={"app": changed}))
    second = dep.cli_json("coordinator", "start", "--detach", "--rounds", "2")
    dep.remember(second)
    assert second["status"] == "running", dep.coordinator_log()

    def refused_by_all() -> dict[str, list[dict[str, object]]] | None:
        states = {bank: dep.state("clients", bank).get("refused_apps") or [] for bank in BANKS}
        return states if all(states.values()) else None

    refused = _wait_for(refused_by_all, 240, "both nodes to refuse the changed app",
                        lambda: dep.coordinator_log() + "\n".join(
                            processes.tail(dep.cfg.workspace.client(b).supernode_log, 30) for b in BANKS))
    for bank in BANKS:
        assert {event["fab_hash"] for event in refused[bank]} == {other}
        assert _installed(dep, bank, other) == []  # never installed, so never run
        log_text = dep.cfg.workspace.client(bank).supernode_log.read_text()
        assert '"event": "app_refused"' in log_text and other in log_text
        state = dep.state("clients", bank)
        assert state["status"] == "running"  # the node keeps serving; only that run is refused

    # The coordinator got error replies naming the refused app, not updates: no model from them.
    run_log = dep.workdir / "coordinator" / "run.log"
    _wait_for(lambda: f"app {other} is not approved" in processes.tail(run_log, 400), 120,
              "the coordinator to receive the refusals", dep.coordinator_log)
    ledger = open_ledger(dep.cfg.ledger_config, member_credentials(dep.cfg, "CoordinatorMSP", "coordinator"))
    try:
        rounds = ledger.list_rounds(dep.cfg.id)
    finally:
        ledger.close()
    assert rounds[0].round == 1 and rounds[0].commit is not None
    assert sorted(rounds[0].commit.accepted) == list(BANKS)
    # A round of the refused app may be on the ledger as evidence, but nothing of it was
    # accepted and no model came of it.
    for view in rounds[1:]:
        assert view.commit is None or view.commit.accepted == []
        assert all(entry.status == "rejected" and entry.reason == "reply_error" for entry in view.record.entries)


def test_the_relay_client_app_trains_through_each_institutions_warm_trainer(
    pinned: tuple[Deployment, Path, Path],
) -> None:
    from bench.relay import relay_app_dir

    dep, _, _ = pinned
    assert dep.cfg is not None
    app = relay_app_dir(dep.workdir / "relay" / "fedledger")
    dep.write_config(deployment=dep.cfg.deployment.model_copy(update={"app": app}))
    approved = dep.cli_json("client", "app-hash")["fab_hash"]  # [deployment] app of the file

    started = dep.cli_json("coordinator", "start", "--detach", "--rounds", "1", "--exit-after-run")
    dep.remember(started)
    for bank in BANKS:
        result = dep.cli("client", "start", "-p", bank, "--detach", "--json", "--runtime-port",
                         str(dep.runtime_ports[bank]), "--data", str(dep.data[bank]), "--approve-app", approved,
                         "--trainer", "--wait", "180")
        assert result.returncode == 0, result.stderr
        state = json.loads(result.stdout)
        dep.remember(state)
        dep.pids.add(int(state["trainer_pid"]))
        assert "trainer" in dep.cfg.workspace.client(bank).node_config.read_text()

    done = dep.wait_coordinator_done(420)
    assert done["run_status"] == "finished:completed", dep.coordinator_log()
    ledger = open_ledger(dep.cfg.ledger_config, member_credentials(dep.cfg, "CoordinatorMSP", "coordinator"))
    try:
        rounds = ledger.list_rounds(dep.cfg.id)
    finally:
        ledger.close()
    assert [r.round for r in rounds] == [1]
    assert rounds[0].commit is not None and sorted(rounds[0].commit.accepted) == list(BANKS)
    for bank in BANKS:
        # Train and evaluate were done by the trainer, and the replies signed by the signer.
        trainer_log = (dep.cfg.workspace.client(bank).root / "trainer.log").read_text()
        assert trainer_log.count('"event": "message_done"') >= 2, trainer_log[-2000:]
        assert dep.state("clients", bank).get("refused_apps") == []
