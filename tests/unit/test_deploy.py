"""Deployment mode without a network: node-key sync plans, binding, Flower config files,
process trees stopped by pid, and service settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fl.config import ConfigError
from ledger import processes
from fl.deploy.binding import NodeDirectory, active_only
from fl.deploy.flower import (
    CONNECTION,
    NodeView,
    refused_exit_code,
    service_env,
    superlink_command,
    supernode_node_id,
    write_flwr_config,
    write_toml_config,
)
from fl.deploy.nodes import Removal, RoundBoundaryHold, plan_sync
from fl.deploy.services import detach, service_status, stop_service
from fl.workspace import ClientFiles, Workspace
from ledger import pki
from ledger.records import Participant

# --- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEM certificates of four institutions, each from its own demo org CA."""
    root = tmp_path_factory.mktemp("pki")
    out = {}
    for name in ("bank-a", "bank-b", "bank-c", "bank-d"):
        _, cert, _ = pki.demo_identity(root, name, name.replace("-", "").capitalize() + "MSP")
        out[name] = pki.certificate_pem(cert)
    return out


def _participant(pid: str, cert_pem: str, status: str) -> Participant:
    return Participant(federation="fed", id=pid, msp_id="X", cert_pem=cert_pem, status=status,  # type: ignore[arg-type]
                       registered_ms=1, updated_ms=1, updated_tx="t")


def _key(cert_pem: str) -> bytes:
    return pki.spki_pem(pki.certificate_from_pem(cert_pem))


def _node(node_id: int, name: str, status: str, cert_pem: str | None = None, key: bytes | None = None) -> NodeView:
    return NodeView(node_id, name, status, key if key is not None else _key(cert_pem or ""))


# --- plan_sync ------------------------------------------------------------------------


def test_plan_registers_each_active_participants_key_named_by_participant(certs) -> None:
    participants = [_participant("bank-a", certs["bank-a"], "active"),
                    _participant("bank-b", certs["bank-b"], "active")]

    plan = plan_sync(participants, [])

    assert [(r.participant, r.public_key) for r in plan.register] == [
        ("bank-a", _key(certs["bank-a"])), ("bank-b", _key(certs["bank-b"]))]
    assert plan.unregister == []


def test_plan_does_not_register_pending_or_revoked_participants(certs) -> None:
    participants = [_participant("bank-a", certs["bank-a"], "pending"),
                    _participant("bank-b", certs["bank-b"], "revoked")]

    plan = plan_sync(participants, [])

    assert plan.register == [] and plan.empty


def test_plan_unregisters_the_live_node_of_a_revoked_participant(certs) -> None:
    participants = [_participant("bank-a", certs["bank-a"], "active"),
                    _participant("bank-c", certs["bank-c"], "revoked")]
    nodes = [_node(1, "bank-a", "online", certs["bank-a"]), _node(3, "bank-c", "online", certs["bank-c"])]

    plan = plan_sync(participants, nodes)

    assert [(r.node_id, r.reason) for r in plan.unregister] == [(3, "revoked")]
    assert plan.active_nodes == {"bank-a": 1}
    assert plan.register == []


def test_plan_unregisters_a_node_whose_key_no_participant_holds(certs) -> None:
    stray = pki.spki_pem(pki.generate_key())

    plan = plan_sync([_participant("bank-a", certs["bank-a"], "active")],
                     [_node(1, "bank-a", "online", certs["bank-a"]), _node(9, "bank-a", "registered", key=stray)])

    assert [(r.node_id, r.reason) for r in plan.unregister] == [(9, "unknown")]


def test_plan_matches_nodes_by_key_not_by_name(certs) -> None:
    # A node labelled "bank-a" that holds bank-b's key belongs to bank-b.
    participants = [_participant("bank-a", certs["bank-a"], "active"),
                    _participant("bank-b", certs["bank-b"], "active")]

    plan = plan_sync(participants, [_node(7, "bank-a", "online", certs["bank-b"])])

    assert plan.active_nodes == {"bank-b": 7}
    assert [r.participant for r in plan.register] == ["bank-a"]


def test_plan_leaves_unregistered_nodes_alone_and_reports_a_burned_key(certs) -> None:
    # Re-admitted after a revocation: Flower refuses to register the same key again.
    plan = plan_sync([_participant("bank-c", certs["bank-c"], "active")],
                     [_node(3, "bank-c", "unregistered", certs["bank-c"])])

    assert plan.burned == ["bank-c"]
    assert plan.register == [] and plan.unregister == []


def test_plan_reports_a_certificate_it_cannot_read(certs) -> None:
    plan = plan_sync([_participant("bank-a", "not a certificate", "active")], [])

    assert "bank-a" in plan.unusable and plan.register == []


def test_a_revoked_node_of_a_live_run_is_unregistered_at_the_next_round_boundary() -> None:
    hold = RoundBoundaryHold()
    revoked = [Removal(3, "bank-c", "revoked")]

    during_round = hold.due(revoked, committed=4)
    still_same_round = hold.due(revoked, committed=4)
    held = hold.held
    after_commit = hold.due(revoked, committed=5)

    assert during_round == [] and still_same_round == [] and held == [3]
    assert after_commit == revoked and hold.held == []


def test_without_a_live_run_or_for_unknown_keys_unregistering_is_immediate() -> None:
    hold = RoundBoundaryHold()

    assert hold.due([Removal(3, "bank-c", "revoked")], committed=None) == [Removal(3, "bank-c", "revoked")]
    assert hold.due([Removal(9, "x", "unknown")], committed=4) == [Removal(9, "x", "unknown")]
    assert hold.held == []


# --- binding ------------------------------------------------------------------------


@dataclass
class _Info:
    node_id: int
    public_key: bytes


def test_node_directory_names_the_participant_owning_the_nodes_key(certs) -> None:
    participants = [_participant("bank-a", certs["bank-a"], "active"),
                    _participant("bank-b", certs["bank-b"], "revoked")]
    nodes = [_Info(11, _key(certs["bank-a"])), _Info(22, _key(certs["bank-b"])),
             _Info(33, pki.spki_pem(pki.generate_key()))]

    directory = NodeDirectory.build(nodes, participants)

    assert directory.owner("11") == "bank-a"
    assert directory.owner("22") == "bank-b"  # the strategy rejects it as revoked
    assert directory.owner("33") is None
    assert directory.owner("44") is None


def test_node_directory_keeps_nodes_that_went_offline(certs) -> None:
    participants = [_participant("bank-a", certs["bank-a"], "active")]
    directory = NodeDirectory.build([_Info(11, _key(certs["bank-a"]))], participants)

    directory.update([], participants)  # get_nodes() lists online nodes only

    assert directory.owner("11") == "bank-a"


def test_only_messages_to_nodes_of_active_participants_are_kept(certs) -> None:
    from types import SimpleNamespace

    participants = [_participant("bank-a", certs["bank-a"], "active"),
                    _participant("bank-c", certs["bank-c"], "revoked")]
    directory = NodeDirectory.build([_Info(11, _key(certs["bank-a"])), _Info(33, _key(certs["bank-c"]))],
                                    participants)
    messages = [SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n)) for n in (11, 33, 44)]

    kept = active_only(messages, directory, participants)

    assert [m.metadata.dst_node_id for m in kept] == [11]


def test_spki_pem_is_the_public_key_flower_stores_for_a_node() -> None:
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    key = pki.generate_key()

    assert pki.spki_pem(key) == public_key_to_bytes(key.public_key())


# --- Flower files and commands --------------------------------------------------------


def test_node_config_file_reads_back_through_flowers_parser(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    values = {"participant": "bank-a", "key": "/a path/with spaces/k.key", "data": 'C:\\odd "name".csv'}
    path = write_toml_config(tmp_path / "node-config.toml", values)

    assert parse_config_args([str(path)]) == values


def test_flwr_config_defines_our_tls_connection_for_the_flower_cli(tmp_path: Path, monkeypatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    write_flwr_config(tmp_path / "home", "127.0.0.1:19999", ca)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))

    connection = read_superlink_connection(CONNECTION)

    assert connection.address == "127.0.0.1:19999"
    assert connection.root_certificates == str(ca.resolve())
    assert not connection.insecure


def test_service_env_is_offline_with_its_own_flwr_home_and_the_venv_bin_first(tmp_path: Path) -> None:
    env = service_env(tmp_path / "home", base={"PATH": "/usr/bin"})

    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_superlink_command_turns_on_tls_and_node_authentication(tmp_path: Path) -> None:
    argv = superlink_command(host="127.0.0.1", port=19001, database=tmp_path / "s.db", ca_cert=tmp_path / "ca",
                             server_cert=tmp_path / "crt", server_key=tmp_path / "key")

    assert "--enable-supernode-auth" in argv
    assert "--insecure" not in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(tmp_path / "crt")
    assert argv[argv.index("--port") + 1] == "19001"


def test_supernode_log_parsing_finds_the_node_id_and_flowers_exit_code() -> None:
    connected = "\x1b[92mINFO \x1b[0m:      SuperNode ID: 7919712561916341658\nStarting"
    refused = "\x1b[91mERROR \x1b[0m:     Exit Code: 305\nFailed to initialize the connection"

    assert supernode_node_id(connected) == 7919712561916341658
    assert supernode_node_id(refused) is None
    assert refused_exit_code(refused) == 305
    assert refused_exit_code(connected) is None


# --- processes ------------------------------------------------------------------------

# A parent that, like flower-superlink, starts a child in a new session and waits.
_TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""

_STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""


def _wait_for_line(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return text.strip().splitlines()[0]
        time.sleep(0.05)
    raise AssertionError(f"{path} stayed empty")


def test_stop_ends_a_process_and_the_child_it_started_in_another_session(tmp_path: Path) -> None:
    proc = processes.spawn([sys.executable, "-c", _TREE], env=os.environ, log_path=tmp_path / "t.log",
                           pid_path=tmp_path / "t.pid")
    child = int(_wait_for_line(tmp_path / "t.log"))
    assert processes.read_pid(tmp_path / "t.pid") == proc.pid

    result = processes.stop(proc.pid, proc=proc, timeout=5)

    assert processes.read_pid(tmp_path / "t.pid") is None  # that process is gone
    assert result.was_running and child in result.tree
    assert not processes.pid_alive(proc.pid)
    assert not processes.pid_alive(child)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    proc = processes.spawn([sys.executable, "-c", _STUBBORN], env=os.environ, log_path=tmp_path / "s.log")
    _wait_for_line(tmp_path / "s.log")

    result = processes.stop(proc.pid, proc=proc, timeout=0.5)

    assert result.killed == [proc.pid]
    assert proc.returncode == -signal.SIGKILL


def test_stopping_a_pid_that_is_gone_reports_it_was_not_running() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()

    assert processes.stop(proc.pid).was_running is False


def test_an_exited_but_unreaped_child_counts_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while processes.pid_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert not processes.pid_alive(proc.pid)  # a zombie still answers kill(pid, 0)
    proc.wait()


# --- settings ---------------------------------------------------------------------------


_FEDERATION = ('[federation]\nid = "f"\nworkdir = "w"\n\n[[federation.participants]]\nid = "bank-a"\n'
               'msp_id = "BankAMSP"\ndata = "bank-a.csv"\n')


def test_a_client_spec_takes_data_key_certificate_superlink_and_tls_ca_from_the_file(tmp_path: Path) -> None:
    from fl.config import load_config
    from fl.deploy.client import client_spec

    path = tmp_path / "federation.toml"
    path.write_text(_FEDERATION + '\n[deployment]\naddress = "link.example:9100"\n')
    cfg = load_config(path)
    cfg.workspace.cert("BankAMSP", "bank-a").parent.mkdir(parents=True)
    cfg.workspace.cert("BankAMSP", "bank-a").write_text("certificate")

    spec = client_spec(cfg, path, "bank-a")

    assert spec.data == tmp_path / "bank-a.csv" and spec.superlink == "link.example:9100"
    assert spec.key == tmp_path / "w" / "pki" / "BankAMSP" / "bank-a.key"
    assert spec.cert == tmp_path / "w" / "pki" / "BankAMSP" / "bank-a.crt"
    assert spec.root_certificates == tmp_path / "w" / "coordinator" / "tls" / "ca.crt"
    assert spec.workdir == tmp_path / "w" and spec.config == path


def test_a_client_spec_for_a_participant_the_file_lacks_needs_data_and_a_key(tmp_path: Path) -> None:
    from fl.config import load_config
    from fl.deploy.client import client_spec

    path = tmp_path / "federation.toml"
    path.write_text(_FEDERATION)
    cfg = load_config(path)

    with pytest.raises(ConfigError, match="--data is required"):
        client_spec(cfg, path, "rogue")
    with pytest.raises(ConfigError, match="--key or --signer is required"):
        client_spec(cfg, path, "rogue", data=tmp_path / "x.csv")
    assert client_spec(cfg, path, "rogue", data=tmp_path / "x.csv", signer=tmp_path / "s.sock").key is None


def test_a_detached_service_that_exits_at_once_reports_failed_with_its_exit_code(tmp_path: Path) -> None:
    files = ClientFiles(tmp_path / "svc")

    pid, state = detach([sys.executable, "-c", "raise SystemExit(7)"], files, wait=10, ready=lambda s: True)

    assert state["status"] == "failed" and state["exit_code"] == 7
    assert service_status(files)["status"] == "never started" and not service_status(files)["alive"]


def test_a_service_that_said_running_but_is_gone_reads_dead(tmp_path: Path) -> None:
    files = Workspace(tmp_path).coordinator
    processes.write_json_atomic(files.state_file, {"status": "running", "pid": 1})

    assert service_status(files) == {"status": "dead", "pid": 1, "alive": False}


def test_a_stale_pid_file_naming_a_reused_pid_is_never_signalled(tmp_path):
    """pid + start time name one process: a pid reused by a stranger reads as not running."""
    import subprocess as sp

    stranger = sp.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "svc.pid"
        real_start = processes.start_time(stranger.pid)
        assert real_start is not None
        pid_file.write_text(f"{stranger.pid} {real_start + 1}\n")  # recorded for an earlier process
        assert processes.read_pid(pid_file) is None
        processes.write_pid(pid_file, stranger.pid)
        assert processes.read_pid(pid_file) == stranger.pid
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_second_service_cannot_take_a_live_services_pid_file_nor_remove_it(tmp_path):
    import subprocess as sp

    other = sp.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "svc.pid"
        processes.write_pid(pid_file, other.pid)
        with pytest.raises(processes.AlreadyRunning, match=str(other.pid)):
            processes.claim_pid(pid_file)
        processes.release_pid(pid_file)  # not ours: left alone
        assert processes.read_pid(pid_file) == other.pid
    finally:
        other.kill()
        other.wait()
    processes.claim_pid(pid_file)  # the holder is gone: ours now
    assert processes.read_pid(pid_file) == os.getpid()
    processes.release_pid(pid_file)
    assert not pid_file.exists()


def test_stop_also_ends_children_a_hard_killed_service_left_behind(tmp_path):
    """The service died (SIGKILL); its recorded child still runs and is stopped by tag."""
    import subprocess as sp

    orphan = sp.Popen(["sleep", "30"], start_new_session=True)
    stranger = sp.Popen(["sleep", "30"])
    try:
        files = ClientFiles(tmp_path)
        state = files.state_file
        stale = f"{stranger.pid}:{(processes.start_time(stranger.pid) or 0) + 7}"  # a reused pid
        processes.write_json_atomic(state, {"children": {"superlink": processes.tag(orphan.pid),
                                                         "run": stale}})
        result = stop_service(files, timeout=5)
        assert result["was_running"] is False and list(result["orphans_stopped"]) == ["superlink"]
        assert orphan.wait(timeout=5) is not None
        assert stranger.poll() is None  # never signalled
    finally:
        for proc in (orphan, stranger):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
