"""Deployment with the institution's key out of the node's reach, with real processes.

bank-a keeps its key in a SoftHSM2 token: it was created there (``participant keygen
--pkcs11``), its certificate was issued from the token's CSR, and only bank-a's signer
(``fedledger signer start --pkcs11-module …``, its own process) logs in to the token.
bank-a's SuperNode and the ClientApps it runs get a socket path — no key file exists,
the token's configuration is not in their environment, and node authentication goes
through the signer. bank-b runs the default way: its institution service starts a
signer from its key file. Both train two audited rounds over TLS with node auth.

Then a ClientApp-like process of bank-a's user asks bank-a's signer for a second,
different signature for round 1: refused (``equivocation``) and journalled; the journal
verifies and agrees with the ledger (``signer check-ledger``). The coordinator's signed
receipt for each round reached each bank's node with the round's evaluate message and is
in the bank's journal, and ``check-ledger`` holds the ledger to it. Every process is
stopped by pid at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fl import onboarding
from fl.demo_data import credit_schema
from fl.config import DeploymentConfig, FederationConfig, ParticipantConfig, TrainingConfig
from fl.identities import member_credentials
from fl.signer.client import SignerClient, SignerRefused
from ledger import pki, processes
from ledger.factory import open_ledger
from ledger.formats import Manifest
from tests.integration.test_deployment import APP, Deployment, _free_port, _wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FED = "signer-fed"
BANKS = ("bank-a", "bank-b")
MSPS = {"bank-a": "BankAMSP", "bank-b": "BankBMSP"}
SOFTHSM = next((p for p in (Path("/usr/lib/softhsm/libsofthsm2.so"),
                            Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")) if p.exists()), None)
PIN = "135790"

# bank-a's institution service with a signer it did not start (what `client start
# --signer SOCKET` runs): the spec names the socket and no key.
_NODE = """
import json, sys
from pathlib import Path
from fl.deploy.client import ClientService, ClientSpec
from fl.runtime import configure_logging
a = json.loads(sys.argv[1])
configure_logging(json_logs=True)
spec = ClientSpec(participant=a["participant"], data=Path(a["data"]), key=None, superlink=a["superlink"],
                  root_certificates=Path(a["roots"]), workdir=Path(a["workdir"]), config=Path(a["config"]),
                  runtime_port=a["port"], cert=Path(a["cert"]), signer=Path(a["signer"]))
sys.exit(ClientService(spec).serve())
"""


# bank-a declares its dataset size at registration with the key in its token (a process
# that alone is given the token's configuration, as the signer is).
_DECLARE = """
import base64, hashlib, json, sys
from pathlib import Path
from ledger.declarations import ExamplesDeclaration, SignedDeclaration
from ledger.keys_pkcs11 import Pkcs11Config, Pkcs11Key, read_pin
a = json.loads(sys.argv[1])
statement = ExamplesDeclaration(a["federation"], a["participant"], a["examples"]).to_bytes()
key = Pkcs11Key(Pkcs11Config(Path(a["module"]), a["token"], a["participant"], read_pin(Path(a["pin"]))))
try:
    der = key.sign_digest(hashlib.sha256(statement).digest())
finally:
    key.close()
print(SignedDeclaration(statement=statement.decode(), signature=base64.b64encode(der).decode()).model_dump_json())
"""


def _signer_cli(dep: Deployment, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fl.cli_signer", *args], cwd=dep.workdir, env=env or dep.env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[Deployment, dict[str, str]]]:
    """Two admitted banks on the embedded ledger, bank-a's key in a SoftHSM2 token."""
    if SOFTHSM is None or shutil.which("softhsm2-util") is None:
        pytest.skip("needs softhsm2 (apt-get install softhsm2)")
    dep = Deployment(tmp_path)
    ports: set[int] = set()
    data = tmp_path / "data"
    cfg = FederationConfig(id=FED, rounds=2, workdir=tmp_path, ledger="embedded",
                           training=TrainingConfig(local_epochs=1), data=credit_schema(),
                           participants=[ParticipantConfig(id=b, msp_id=MSPS[b], data=data / f"{b}.csv")
                                         for b in BANKS],
                           deployment=DeploymentConfig(host="127.0.0.1", port=_free_port(ports), sync_interval=1.0,
                                                       app=APP))
    dep.cfg = cfg
    dep.write_config()
    dep.runtime_ports = {b: _free_port(ports) for b in BANKS}

    from fl import demo_data
    from fl.deploy.federation import init_federation

    demo_data.write_partitions_csv(demo_data.partition_credit(len(BANKS), cfg.data_seed, cfg.dirichlet_alpha, 0.2),
                                 data, list(BANKS))
    # bank-a's token: only the signer's environment names it.
    hsm = tmp_path / "hsm"
    (hsm / "tokens").mkdir(parents=True)
    conf = hsm / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {hsm / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    hsm_env = {**dep.env, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bank-a", "--pin", PIN,
                    "--so-pin", "24680"], check=True, capture_output=True, env=hsm_env)
    pin = hsm / "pin"
    pin.write_text(PIN + "\n")
    pin.chmod(0o600)

    ws = cfg.workspace
    pki.demo_identity(ws.pki_root, "coordinator", cfg.coordinator_msp)
    pki.demo_identity(ws.pki_root, "auditor", "AuditorMSP")
    coordinator = member_credentials(cfg, cfg.coordinator_msp, "coordinator")
    init_federation(cfg, coordinator)
    org_a = ws.pki("BankAMSP")
    pki.init_ca("BankAMSP").save(ws.ca_dir("BankAMSP"))
    keygen = subprocess.run([sys.executable, "-m", "fl.cli", "participant", "keygen", "-p", "bank-a", "--org",
                             "BankAMSP", "--out", str(org_a), "--pkcs11", str(SOFTHSM), "--token-label", "bank-a",
                             "--pin-file", str(pin), "--json"], cwd=tmp_path, env=hsm_env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert keygen.returncode == 0, keygen.stderr
    ca_a = pki.CertificateAuthority.load(ws.ca_dir("BankAMSP"))
    pki.write_public_file(ws.cert("BankAMSP", "bank-a"),
                          pki.certificate_pem(pki.sign_csr(ca_a, pki.load_csr(org_a / "bank-a.csr"))))
    pki.demo_identity(ws.pki_root, "bank-b", "BankBMSP")
    target = onboarding.LedgerTarget.from_config(cfg)
    from fl.signer.settings import count_rows
    from ledger.declarations import SignedDeclaration

    rows = {bank: count_rows(data / f"{bank}.csv") for bank in BANKS}
    declared = subprocess.run([sys.executable, "-c", _DECLARE, json.dumps(
        {"federation": FED, "participant": "bank-a", "examples": rows["bank-a"], "module": str(SOFTHSM),
         "token": "bank-a", "pin": str(pin)})], env=hsm_env, capture_output=True, text=True, timeout=120, check=False)
    assert declared.returncode == 0, declared.stderr
    declarations = {"bank-a": SignedDeclaration.model_validate_json(declared.stdout), "bank-b": None}
    keys = {"bank-a": None, "bank-b": ws.key("BankBMSP", "bank-b")}
    for bank in BANKS:
        own = member_credentials(cfg, MSPS[bank], bank)
        onboarding.register(target, own, bank, ws.cert(MSPS[bank], bank), examples=rows[bank], key_path=keys[bank],
                            ca_cert_path=ws.ca_cert(MSPS[bank]), declaration=declarations[bank])
        onboarding.admit(target, coordinator, bank)

    yield dep, {"pin": str(pin), "hsm_env_conf": str(conf)}

    for bank in BANKS:
        dep.remember(dep.state("clients", bank))
        dep.cli("client", "stop", "-p", bank, timeout=60)
    _signer_cli(dep, "stop", "-p", "bank-a")
    dep.remember(dep.state("coordinator"))
    dep.cli("coordinator", "stop", timeout=60)
    for pid in sorted(dep.pids):
        processes.stop(pid, timeout=5)
    alive = [pid for pid in sorted(dep.pids) if processes.pid_alive(pid)]
    assert alive == [], f"processes still alive after the test: {alive}"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


def test_rounds_complete_with_the_key_in_a_token_the_node_cannot_reach_and_a_second_signature_is_refused(
    federation: tuple[Deployment, dict[str, str]],
) -> None:
    dep, hsm = federation
    assert dep.cfg is not None
    workdir = dep.workdir
    hsm_env = {**dep.env, "SOFTHSM2_CONF": hsm["hsm_env_conf"]}

    # bank-a's signer: its own process, the only one that logs in to the token.
    started = _signer_cli(dep, "start", "-p", "bank-a", "--pkcs11-module", str(SOFTHSM), "--token-label", "bank-a",
                          "--pin-file", hsm["pin"], "--detach", "--json", env=hsm_env)
    assert started.returncode == 0, started.stderr + started.stdout
    signer_state = json.loads(started.stdout)
    dep.pids.add(int(signer_state["pid"]))
    ws = dep.cfg.workspace
    socket_path = ws.signer("bank-a").socket
    assert signer_state["status"] == "running" and Path(signer_state["socket"]) == socket_path

    coordinator = dep.cli_json("coordinator", "start", "--detach", "--rounds", "2", "--exit-after-run")
    dep.remember(coordinator)
    assert coordinator["status"] == "running", dep.coordinator_log()

    # bank-a's node: given the socket, no key; the token's configuration is not in its env.
    node_env = {k: v for k, v in dep.env.items() if k != "SOFTHSM2_CONF"}
    args = {"participant": "bank-a", "data": str(workdir / "data" / "bank-a.csv"),
            "superlink": coordinator["address"], "roots": str(ws.coordinator.tls_ca),
            "workdir": str(workdir), "config": str(dep.config), "port": dep.runtime_ports["bank-a"],
            "cert": str(ws.cert("BankAMSP", "bank-a")), "signer": str(socket_path)}
    node = processes.spawn([sys.executable, "-c", _NODE, json.dumps(args)], env=node_env,
                           log_path=workdir / "bank-a-node.log", cwd=workdir)
    dep.pids.add(node.pid)
    result = dep.cli("client", "start", "-p", "bank-b", "--detach", "--json", "--runtime-port",
                     str(dep.runtime_ports["bank-b"]))
    assert result.returncode == 0, result.stderr
    dep.state("clients", "bank-b")

    state_a = _wait_for(lambda: (s := dep.state("clients", "bank-a")).get("status") == "running" and s, 120,
                        "bank-a's node to connect", lambda: processes.tail(workdir / "bank-a-node.log", 40))
    supernode = int(state_a["supernode_pid"])
    # What bank-a's node (and the ClientApps it spawns) has: a socket, no key, no token.
    node_config = ws.client("bank-a").node_config.read_text()
    assert "signer" in node_config and "key" not in node_config
    assert not list(workdir.rglob("bank-a.key")) and not list(workdir.rglob("bank-a.ssh"))
    assert not list(ws.client("bank-a").root.rglob("*.ssh"))
    cmdline = Path(f"/proc/{supernode}/cmdline").read_bytes().decode().split("\0")
    assert "--auth-supernode-private-key" not in cmdline
    assert "SOFTHSM2_CONF" not in _environ(supernode)

    done = dep.wait_coordinator_done(600)
    assert done["run_status"] == "finished:completed", dep.coordinator_log()

    ledger = open_ledger(dep.cfg.ledger_config, member_credentials(dep.cfg, "CoordinatorMSP", "coordinator"))
    try:
        rounds = ledger.list_rounds(FED)
    finally:
        ledger.close()
    assert [r.round for r in rounds] == [1, 2]
    for view in rounds:
        assert view.commit is not None and sorted(view.commit.accepted) == list(BANKS), view.record.entries

    # A ClientApp of bank-a's user asks for a second, different signature for round 1.
    signed = next(e for e in rounds[0].record.entries if e.participant == "bank-a")
    original = Manifest.parse(str(signed.manifest))
    forged = Manifest(federation=FED, participant="bank-a", round=1, base_model=original.base_model,
                      update="f" * 64, num_examples=original.num_examples)
    with pytest.raises(SignerRefused) as refused:
        SignerClient(socket_path).sign_manifest(forged.to_bytes().decode(), forged.update)
    assert refused.value.reason == "round_backwards"  # round 2 was signed since
    forged_now = Manifest(federation=FED, participant="bank-a", round=2, base_model=rounds[1].record.base_model,
                          update="f" * 64, num_examples=original.num_examples)
    with pytest.raises(SignerRefused) as equivocation:
        SignerClient(socket_path).sign_manifest(forged_now.to_bytes().decode(), forged_now.update)
    assert equivocation.value.reason == "equivocation"
    journal = [json.loads(line) for line in ws.signer("bank-a").journal.read_text().splitlines()]
    assert [(e["decision"], e.get("reason")) for e in journal][-2:] == [("refused", "round_backwards"),
                                                                         ("refused", "equivocation")]
    assert [e["round"] for e in journal if e["decision"] == "signed" and "kind" not in e] == [1, 2]  # updates
    # Each round's receipt, signed by the coordinator's ledger key, reached the journal.
    receipts = [e for e in journal if e.get("kind") == "receipt"]
    assert [(e["decision"], e["round"], e["status"]) for e in receipts] == [("received", 1, "accepted"),
                                                                            ("received", 2, "accepted")]
    assert [e["record_tx"] for e in receipts] == [view.record_tx.tx_id for view in rounds]
    assert {e["cert_pem"] for e in receipts} == {ws.cert("CoordinatorMSP", "coordinator").read_text()}

    # The journal's chain holds, and the journal and the ledger agree — for both banks.
    verified = _signer_cli(dep, "verify-journal", "-p", "bank-a", "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["entries"] == len(journal)
    for bank in BANKS:
        check = _signer_cli(dep, "check-ledger", "-p", bank, "--json")
        report: dict[str, Any] = json.loads(check.stdout)
        assert check.returncode == 0 and report["ok"], report
        assert [(s["round"], s["status"]) for s in report["signed"]] == [(1, "accepted"), (2, "accepted")]
        assert [s["receipt"] for s in report["signed"]] == [{"status": "accepted", "reason": None}] * 2, report
        assert report["without_receipt"] == []

    # The auditor's own verification still holds.
    audit = dep.cli_json("audit", "verify")
    assert audit["ok"], audit["problems"]
    processes.stop(node.pid, proc=node, timeout=30)
