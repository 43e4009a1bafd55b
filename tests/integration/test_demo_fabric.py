"""The demo on the session's real Fabric network, as a user runs it (``fedledger demo
--ledger fabric``), and the auditor's proof on what it recorded.

Same adversaries, same recorded reasons as on the embedded ledger; every round committed
with tx ids and Fabric block numbers; ``audit verify`` proves every block independently
of the peer it asks, and a pin that does not match is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.fabric.network import Network
from tests.integration.test_demo_cli import fedledger

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def fabric_demo(fabric_network: Network, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("fabric-demo") / "demo"
    proc = fedledger("demo", "--ledger", "fabric", "--fabric-profile", str(fabric_network.top.profile_path),
                     "--workdir", str(workdir), "--rounds", "3", "--adversary", "bank-c:tamper",
                     "--adversary", "bank-b:replay", "--json")
    return workdir, json.loads(proc.stdout)


def test_the_demo_on_fabric_rejects_the_same_adversaries_with_the_same_reasons(fabric_demo) -> None:
    _, summary = fabric_demo
    assert summary["ledger"]["backend"] == "fabric"
    assert summary["federation"].startswith("demo-")  # a fresh federation on a long-lived channel
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["accepted"] == ["bank-a", "bank-b"]
    assert rounds[0]["rejected"] == [{"participant": "bank-c", "reason": "digest_mismatch"}]
    for r in rounds[1:]:
        assert r["accepted"] == ["bank-a"]
        assert r["rejected"] == [{"participant": "bank-b", "reason": "wrong_round"},
                                 {"participant": "bank-c", "reason": "digest_mismatch"}]
    blocks = []
    for r in rounds:
        assert len(r["record_tx"]) == 64 and len(r["commit_tx"]) == 64 and len(r["rewards_tx"]) == 64
        assert r["record_block"] < r["commit_block"]
        blocks += [r["record_block"], r["commit_block"]]
    assert blocks == sorted(blocks)
    assert summary["balances"]["bank-c"] == 0 and sum(summary["balances"].values()) == 3 * 1000
    # Each institution registered as its own organisation (BankC has no peer of its own).
    assert {line["msp_id"] for line in summary["onboarding"]} == {"BankAMSP", "BankBMSP", "BankCMSP"}


def test_audit_verify_proves_every_block_and_a_wrong_pin_is_reported(fabric_demo) -> None:
    workdir, summary = fabric_demo
    report = json.loads(fedledger("audit", "verify", "--config", str(workdir / "federation.toml"), "--json").stdout)
    assert report["ok"], report["problems"]
    assert report["rounds"] == 3 and report["aggregates_recomputed"] == 3
    # RecordRound, CommitModel, RecordEvaluation and IssueRewards of every round, each VALID in a block.
    assert report["transactions_proven"] == 12  # and RecordEvaluation
    head = report["head"]
    assert report["blocks_checked"] == head["block"] + 1 > summary["rounds"][-1]["commit_block"]

    pinned = fedledger("audit", "verify", "--config", str(workdir / "federation.toml"), "--json", "--pin",
                       f"{head['block']}:{head['hash']}")
    assert json.loads(pinned.stdout)["ok"]
    wrong = "0" * 64
    refused = fedledger("audit", "verify", "--config", str(workdir / "federation.toml"), "--json", "--pin",
                        f"{head['block']}:{wrong}", check=False)
    assert refused.returncode == 1
    assert any(str(head["block"]) in p and "pin" in p for p in json.loads(refused.stdout)["problems"])


def test_compliance_reports_are_written_from_the_fabric_ledger(fabric_demo) -> None:
    workdir, _ = fabric_demo
    fedledger("report", "--config", str(workdir / "federation.toml"))
    reports = sorted((workdir / "reports").glob("round-*.json"))
    assert [p.name for p in reports] == ["round-0001.json", "round-0002.json", "round-0003.json"]
    first = json.loads(reports[0].read_text())
    assert first["compliant"] is True
