"""Fail closed on real Fabric: the coordinator's peer dies between RecordRound and CommitModel.

The round's updates are real (the real ClientApp trains and signs them), the ledger is
the session's Fabric network, and the fault is real: the coordinator's own peer is
SIGKILLed (by pid) the moment its RecordRound has committed. The coordinator retries
inside its deadline, then fails the round without releasing a model; once the peer is
back, a restarted coordinator completes the round from the ledger and the stored
updates, and the auditor's independent checks pass.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from fl.demo import demo_config, prepare_federation
from fl.identities import member_credentials
from fl.resume import resume
from fl.server_app import initial_model
from fl.strategy import RoundFailed
from ledger.artifacts import ArtifactStore
from ledger.audit import audit_federation, backend_integrity
from ledger.fabric.backend import FabricLedger
from ledger.fabric.gateway import Deadlines
from ledger.fabric.network import Network
from ledger.fabric.profile import load_profile
from ledger.factory import open_ledger
from tests.fixtures.flower import task_identity  # noqa: F401
from tests.unit.test_audited_round import play_round, strategy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class KillPeerAfterRecord:
    """The real Fabric ledger; right after RecordRound commits, the coordinator's peer dies."""

    def __init__(self, inner: Any, network: Network, peer: str) -> None:
        self.inner, self.network, self.peer = inner, network, peer
        self.killed_at: float | None = None

    def record_round(self, *args: Any, **kwargs: Any) -> Any:
        receipt = self.inner.record_round(*args, **kwargs)
        pid = self.network.pid(self.peer)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        return receipt

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_peer_killed_between_record_and_commit_fails_the_round_closed_and_a_restart_completes_it(
    fabric_network: Network, tmp_path: Path
) -> None:
    cfg = demo_config(tmp_path / "fed", rounds=2, participants=3, federation=f"failclosed-{os.getpid()}",
                      ledger="fabric", fabric_profile=fabric_network.top.profile_path)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    coordinator = member_credentials(cfg, cfg.coordinator_msp, "coordinator")
    # Short deadlines so that the retries end in seconds, not a minute.
    quick = Deadlines(evaluate=3, endorse=4, submit=3, commit_status=10)
    ledger = FabricLedger(load_profile(cfg.fabric_profile), coordinator, deadlines=quick)  # type: ignore[arg-type]
    # An auditor that reads through another organisation's peer, which stays up.
    auditor = FabricLedger(load_profile(cfg.fabric_profile),  # type: ignore[arg-type]
                           member_credentials(cfg, "AuditorMSP", "auditor"), peer="peer0.banka.fedledger.local")
    base = initial_model(cfg)
    ArtifactStore(cfg.artifacts_path).put(base)
    faulty = KillPeerAfterRecord(ledger, fabric_network, "peer0.coordinator")
    try:
        with pytest.raises(RoundFailed, match="CommitModel was not committed"):
            play_round(cfg, strategy(cfg, faulty), base)
        failed_after = time.monotonic() - (faulty.killed_at or 0)

        # Recorded, not committed, and nothing released.
        view = auditor.get_round(cfg.id, 1)
        assert view.commit is None and view.record_tx.block_number > 0
        assert failed_after < 60

        fabric_network.restart_process("peer0.coordinator")
        restarted = open_ledger(cfg.ledger_config, coordinator)
        try:
            state = resume(restarted, cfg.id, ArtifactStore(cfg.artifacts_path), base)
            assert state.completed == 1
            committed = auditor.get_round(cfg.id, 1).commit
            assert committed is not None and committed.model == state.model
            # Resuming again changes nothing.
            assert resume(restarted, cfg.id, ArtifactStore(cfg.artifacts_path), base).completed == 1
        finally:
            restarted.close()

        report = audit_federation(auditor, cfg.id, ArtifactStore(cfg.artifacts_path), backend_integrity(auditor))
        assert report.ok, report.problems
        assert report.aggregates_recomputed == 1 and report.transactions_proven == 2
    finally:
        ledger.close()
        auditor.close()
        fabric_network.restart_process("peer0.coordinator")
    assert fabric_network.status().healthy
