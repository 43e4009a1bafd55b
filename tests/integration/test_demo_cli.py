"""The demo as a user runs it: real Flower simulation (Ray), real embedded ledger on disk.

Each test starts ``fedledger`` as a subprocess, exactly like the README's commands.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fl.adversary import EXPECTED_REASON
from fl.runtime import FLOWER_OFFLINE_ENV

pytestmark = pytest.mark.integration


def fedledger(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **FLOWER_OFFLINE_ENV}
    proc = subprocess.run([sys.executable, "-m", "fl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"fedledger {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("adversarial") / "demo"
    proc = fedledger("demo", "--workdir", str(workdir), "--adversary", "bank-c:tamper",
                     "--adversary", "bank-b:replay", "--json")
    return workdir, json.loads(proc.stdout)


def test_tampered_and_replayed_updates_are_rejected_and_the_rest_accepted(adversarial):
    _, summary = adversarial
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["accepted"] == ["bank-a", "bank-b"]  # nothing to replay in round 1
    assert rounds[0]["rejected"] == [{"participant": "bank-c", "reason": "digest_mismatch"}]
    for r in rounds[1:]:
        assert r["accepted"] == ["bank-a"]
        assert r["rejected"] == [{"participant": "bank-b", "reason": "wrong_round"},
                                 {"participant": "bank-c", "reason": "digest_mismatch"}]
    for r in rounds:
        assert len(r["record_tx"]) == 64 and len(r["commit_tx"]) == 64
        assert r["commit_block"] == r["record_block"] + 1
        assert sum(r["rewards"].values()) == 1000 and len(r["rewards_tx"]) == 64
    # Rejected updates earn nothing; the whole budget of every round went to accepted ones.
    assert summary["balances"]["bank-c"] == 0
    assert sum(summary["balances"].values()) == 3 * 1000


def test_audit_verify_is_ok_and_an_edited_ledger_row_makes_it_fail(adversarial):
    workdir, _ = adversarial
    config = str(workdir / "federation.toml")
    report = json.loads(fedledger("audit", "verify", "--config", config, "--json").stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["rounds"] == 3 and report["aggregates_recomputed"] == 3
    assert report["signatures_checked"] == 4  # 2 + 1 + 1 accepted updates
    assert report["rewards_recomputed"] == 3
    issued = json.loads(fedledger("rewards", "issue", "--config", config, "--json").stdout)
    assert issued == []  # the demo issued them already: a second pass changes nothing

    with sqlite3.connect(workdir / "ledger.db") as db:
        key, value = next(
            (k, v) for k, v in db.execute("SELECT key, value FROM state")
            if bytes(k).startswith(b"\x00round\x00demo-fed\x0000000002")
        )
        edited = bytes(value).replace(b'"wrong_round"', b'"duplicate"')
        assert edited != bytes(value)
        db.execute("UPDATE state SET value = ? WHERE key = ?", (edited, key))
    proc = fedledger("audit", "verify", "--config", config, "--json", check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert any("round~demo-fed~00000002" in p for p in report["problems"])


def test_every_adversary_kind_is_rejected_with_its_reason_in_a_real_simulation(tmp_path):
    # tamper, replay, foreign-key, wrong-base, nan, shape, free-rider, copier (it copies the
    # global step of round 1 in round 2)
    kinds = list(EXPECTED_REASON)
    banks = [f"bank-{c}" for c in "bcdefghi"]
    assert len(kinds) == len(banks)
    args = [a for bank, kind in zip(banks, kinds) for a in ("--adversary", f"{bank}:{kind}")]
    proc = fedledger("demo", "--workdir", str(tmp_path / "demo"), "--participants", "9", "--rounds", "2",
                     "--json", *args)
    summary = json.loads(proc.stdout)
    last = summary["rounds"][-1]
    assert last["accepted"] == ["bank-a"]
    assert {r["participant"]: r["reason"] for r in last["rejected"]} == {
        bank: EXPECTED_REASON[kind] for bank, kind in zip(banks, kinds)}
    assert json.loads(fedledger("audit", "verify", "--config", str(tmp_path / "demo" / "federation.toml"),
                                "--json").stdout)["ok"]


def test_honest_demo_accuracy_rises_over_three_rounds(tmp_path):
    summary = json.loads(fedledger("demo", "--workdir", str(tmp_path / "demo"), "--json").stdout)
    accuracies = [r["accuracy"] for r in summary["rounds"]]
    assert all(r["rejected"] == [] for r in summary["rounds"])
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2
    assert accuracies[-1] >= accuracies[0]


def test_demo_refuses_a_bad_adversary_and_a_foreign_workdir_with_one_line(tmp_path):
    proc = fedledger("demo", "--workdir", str(tmp_path / "d"), "--adversary", "bank-c:explode", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "KIND" in proc.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    proc = fedledger("demo", "--workdir", str(tmp_path / "mine"), check=False)
    assert proc.returncode == 1 and "not a fedledger demo directory" in proc.stderr
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_audit_of_a_missing_or_malformed_federation_file_names_the_file_and_exits_2(tmp_path):
    config = str(tmp_path / "federation.toml")
    proc = fedledger("audit", "verify", "--config", config, check=False)
    assert proc.returncode == 2 and f"{config}: file not found" in proc.stderr
    (tmp_path / "federation.toml").write_text("[federation]\nrounds = 'many'\n")
    proc = fedledger("audit", "verify", "--config", config, check=False)
    assert proc.returncode == 2 and "federation.toml: federation.rounds: Input should be a valid integer" in proc.stderr
    assert "federation.participants: Field required" in proc.stderr


def test_broken_auditor_certificate_or_ledger_file_gives_one_line_errors(adversarial, tmp_path):
    import shutil

    workdir, _ = adversarial
    copy = tmp_path / "copy"
    # Not the SQLite side files: a WAL that another reader's close removes mid-copy would fail
    # the copy, and this test breaks the database anyway.
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    cert = copy / "pki" / "AuditorMSP" / "auditor.crt"
    original = cert.read_bytes()
    cert.write_text("not a certificate\n")
    # The copied file still names the original workspace: point a copy of it at the copy.
    (copy / "federation.toml").write_text((copy / "federation.toml").read_text().replace(str(workdir), str(copy)))
    proc = fedledger("audit", "verify", "--config", str(copy / "federation.toml"), check=False)
    assert proc.returncode == 2 and str(cert) in proc.stderr and "Traceback" not in proc.stderr
    cert.write_bytes(original)
    (copy / "ledger.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (copy / f"ledger.db{suffix}").unlink(missing_ok=True)
    proc = fedledger("audit", "verify", "--config", str(copy / "federation.toml"), check=False)
    assert proc.returncode in (1, 3) and "Traceback" not in proc.stderr and proc.stderr.startswith("error:")


def test_pinning_an_earlier_head_catches_a_rewritten_log(adversarial):
    workdir, _ = adversarial
    config = str(workdir / "federation.toml")
    report = json.loads(fedledger("audit", "verify", "--config", config, "--json", check=False).stdout)
    head = report["head"]
    assert head["block"] >= 16 and len(head["hash"]) == 64
    proc = fedledger("audit", "verify", "--config", config, "--json", "--pin", f"{head['block']}:{'0' * 64}",
                     check=False)
    assert proc.returncode == 1
    assert any(f"block {head['block']} hashes to {head['hash']}" in p for p in json.loads(proc.stdout)["problems"])


def test_report_writes_a_compliance_report_per_round(tmp_path):
    workdir = tmp_path / "demo"
    demo = json.loads(fedledger("demo", "--workdir", str(workdir), "--rounds", "2", "--participants", "2",
                                "--json").stdout)
    assert demo["config"] == str(workdir.resolve() / "federation.toml")  # what the follow-up commands take
    config = str(workdir / "federation.toml")
    proc = fedledger("report", "--config", config)
    assert "round 1: compliant" in proc.stdout and "round 2: compliant" in proc.stdout
    reports = sorted(p for p in (workdir / "reports").iterdir() if p.suffix in (".json", ".md"))  # also HTML, PDF
    assert [p.name for p in reports] == ["round-0001.json", "round-0001.md", "round-0002.json", "round-0002.md"]
    assert json.loads(reports[2].read_text())["compliant"] is True
    only = json.loads(fedledger("report", "--config", config, "--round", "2", "--json").stdout)
    assert [r["round"] for r in only["rounds"]] == [2]
    assert fedledger("report", "--config", config, "--round", "9", check=False).returncode == 4  # not found


def test_data_split_writes_csvs_that_check_and_a_wrong_file_is_refused(tmp_path):
    rows = json.loads(fedledger("data", "split", "--out", str(tmp_path / "data"), "--json").stdout)
    assert sorted(rows) == ["bank-a", "bank-b", "bank-c", "schema", "test"]
    # The split's schema table, pasted into a federation file, is what the files are checked against.
    (tmp_path / "federation.toml").write_text(
        '[federation]\nid = "try-it"\n\n' + Path(rows["schema"]).read_text()
        + '\n[[federation.participants]]\nid = "bank-a"\nmsp_id = "BankAMSP"\n')
    config = str(tmp_path / "federation.toml")
    checked = json.loads(fedledger("data", "check", rows["bank-b"], "--config", config, "--json").stdout)
    assert checked["rows"] > 100 and checked["features"] == 26
    bad = tmp_path / "bad.csv"
    bad.write_text(Path(rows["bank-a"]).read_text().replace("Status", "Statut", 1))
    proc = fedledger("data", "check", str(bad), "--config", config, check=False)
    assert proc.returncode == 1 and str(bad) in proc.stderr and "Status" in proc.stderr


def test_demo_under_every_training_policy_is_recomputed_by_the_audit(tmp_path):
    """Shapley scores, trimmed mean, int8 updates, FedProx and DP-SGD at once: every
    manifest signs the claim, every ε is on the ledger, the audit recomputes it all."""
    workdir = tmp_path / "demo"
    summary = json.loads(fedledger(
        "demo", "--workdir", str(workdir), "--rounds", "2", "--scorer", "shapley", "--aggregation", "trimmed-mean",
        "--compression", "int8", "--fedprox-mu", "0.01", "--dp-epsilon", "2", "--json").stdout)
    assert all(r["rejected"] == [] for r in summary["rounds"])
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    config = str(workdir / "federation.toml")
    view = json.loads(fedledger("audit", "round", "2", "--config", config, "--json").stdout)
    for entry in view["record"]["entries"]:
        claim = json.loads(entry["manifest"])["training"]
        assert (claim["algorithm"], claim["mu_ppm"], claim["compression"]) == ("fedprox", 10_000, "int8")
        assert 0 < entry["epsilon_ppm"] == claim["dp"]["epsilon_ppm"] <= 2_000_000
    assert view["record"]["scorer"]["name"] == "shapley" and view["commit"]["aggregation"] == "trimmed-mean"
    audit = json.loads(fedledger("audit", "verify", "--config", config, "--json").stdout)
    assert audit["ok"], audit["problems"]
    assert audit["aggregates_recomputed"] == audit["scores_recomputed"] == 2


def test_demo_with_leave_one_out_and_multi_krum_is_recomputed_by_the_audit(tmp_path):
    workdir = tmp_path / "demo"
    summary = json.loads(fedledger("demo", "--workdir", str(workdir), "--rounds", "2", "--participants", "4",
                                   "--scorer", "loo", "--aggregation", "multi-krum", "--json").stdout)
    # Multi-Krum with its defaults (f = 1) keeps n − f of the four updates each round (the
    # outlier test, which runs first, may take that one instead).
    assert [len(r["accepted"]) for r in summary["rounds"]] == [3, 3]
    reasons = [x["reason"] for r in summary["rounds"] for x in r["rejected"]]
    assert "robust_discarded" in reasons and set(reasons) <= {"robust_discarded", "outlier"}, reasons
    audit = json.loads(fedledger("audit", "verify", "--config", str(workdir / "federation.toml"), "--json").stdout)
    assert audit["ok"], audit["problems"]
