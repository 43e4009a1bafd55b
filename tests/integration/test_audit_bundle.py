"""The auditor's commands on a real demo (Flower simulation, embedded ledger on disk):
statement, balances, an evidence bundle exported and checked in an empty directory by a
``fedledger`` subprocess with no federation file, then tampered with."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fl.runtime import FLOWER_OFFLINE_ENV

pytestmark = pytest.mark.integration


def fedledger(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDLEDGER_CONFIG"} | FLOWER_OFFLINE_ENV
    proc = subprocess.run([sys.executable, "-m", "fl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"fedledger {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished three-round demo in which bank-c tampers with its updates."""
    workdir = tmp_path_factory.mktemp("bundle-demo") / "demo"
    proc = fedledger("demo", "--workdir", str(workdir), "--adversary", "bank-c:tamper", "--json")
    return workdir / "federation.toml", json.loads(proc.stdout)


def test_the_statement_and_the_balances_agree_with_the_demo(demo: tuple[Path, dict]) -> None:
    config, summary = demo

    statement = json.loads(fedledger("audit", "history", "-p", "bank-c", "--config", str(config), "--json").stdout)
    sheet = json.loads(fedledger("audit", "balances", "--config", str(config), "--json").stdout)
    missing = fedledger("audit", "history", "-p", "bank-z", "--config", str(config), check=False)

    assert [r["status"] for r in statement["rounds"]] == ["rejected"] * 3
    assert statement["totals"]["rejected_by_reason"] == {"digest_mismatch": 3}
    assert statement["totals"]["tokens_earned"] == 0 == statement["totals"]["balance"]
    assert {p: row["balance"] for p, row in sheet["participants"].items()} == summary["balances"]
    assert sheet["ok"] and sheet["supply"] == sheet["issued"] == 3 * 1000
    assert missing.returncode == 4 and missing.stderr.startswith("error: ")


def test_a_bundle_checks_out_anywhere_offline_and_fails_once_tampered(demo: tuple[Path, dict], tmp_path: Path) -> None:
    config, _ = demo
    exported = json.loads(fedledger("audit", "export", "--config", str(config), "--out",
                                    str(tmp_path / "out" / "evidence.tar.gz"), "--json").stdout)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bundle = Path(shutil.copy(exported["path"], elsewhere / "evidence.tar.gz"))

    checked = fedledger("audit", "verify", "--bundle", "evidence.tar.gz", "--json", cwd=elsewhere)
    human = fedledger("audit", "verify", "--bundle", "evidence.tar.gz", cwd=elsewhere)

    assert exported["audit_ok"] and exported["missing_artifacts"] == {} and exported["rounds_exported"] == [1, 2, 3]
    report = json.loads(checked.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["rounds"] == 3 and report["aggregates_recomputed"] == 3 and report["signatures_checked"] == 6
    assert report["rewards_recomputed"] == 3 and report["bundle"]["export_audit_ok"] is True
    assert "not re-proven offline" in human.stdout and "OK" in human.stdout
    assert sorted(p.name for p in elsewhere.iterdir()) == ["evidence.tar.gz"]  # nothing unpacked here

    # A rejection turned into an acceptance, with the manifest's hash rewritten to match.
    forged = _forge(bundle, elsewhere / "forged.tar.gz")
    failed = fedledger("audit", "verify", "--bundle", "forged.tar.gz", "--json", cwd=elsewhere, check=False)
    assert failed.returncode == 1
    problems = json.loads(failed.stdout)["problems"]
    # The tensors it claimed were never received, and the rewards no longer follow the policy.
    assert any(p.startswith("round 2 bank-c: update unavailable") and "evidence.tar.gz" not in p
               and "forged.tar.gz:artifacts/" in p for p in problems), problems
    assert any(p.startswith("round 2: issued rewards") for p in problems), problems
    assert forged.exists()


def _forge(bundle: Path, out: Path) -> Path:
    with tarfile.open(bundle, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    name = "ledger/rounds/0002.json"
    view = json.loads(files[name])
    for entry in view["record"]["entries"]:
        if entry["participant"] == "bank-c":
            # Accepted with a score that would have earned it tokens under any scorer.
            entry.update(status="accepted", reason=None, detail=None, score_ppm=500_000)
    view["commit"]["accepted"] = sorted([*view["commit"]["accepted"], "bank-c"])
    files[name] = json.dumps(view).encode()
    manifest = json.loads(files["manifest.json"])
    manifest["members"][name] = {"sha256": hashlib.sha256(files[name]).hexdigest(), "bytes": len(files[name])}
    files["manifest.json"] = json.dumps(manifest).encode()
    with gzip.open(out, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out
