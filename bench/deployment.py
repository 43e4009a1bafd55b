"""Deployment mode: per-round wall time of the audited deployment ÷ plain Flower, same machine.

Two federations run one after the other as real processes on 127.0.0.1, on the same
workload — the same credit partitions (CSV files), initial model, seeds and local
training, the same number of institutions and rounds:

* **plain**: ``flower-superlink --insecure``, one ``flower-supernode --insecure`` per
  institution (node config ``participant``/``key``/``data``, as in the real deployment)
  and ``flwr run`` of a throw-away app generated under a temporary directory, whose
  ServerApp runs Flower's own ``FedAvg`` and whose ClientApp is fedledger's train
  function without the signing mod (``make_client_app(..., audited=False)``);
* **audited**: the deployment exactly as a user runs it — ``fedledger coordinator init``,
  onboarding on the embedded ledger, ``fedledger coordinator start`` (SuperLink with TLS
  and SuperNode authentication, ledger-driven node keys, the audited ServerApp) and one
  ``fedledger client start`` per institution.

A round is timed in the ServerApp in both, from the start of ``configure_train`` to the
end of ``aggregate_train`` (audited: to the ledger commit of the new model — the
``seconds`` of ``<workdir>/coordinator/rounds.jsonl``). Round 1 (process start-up, nodes
connecting) is not counted; medians of rounds 2..N are compared.

Where a round's time goes is read from outside, identically for both: a sampler thread
watches ``/proc`` for the ``flwr-clientapp`` process a SuperNode starts for each message
(exact start from ``/proc/<pid>/stat``, end and CPU time within one sampling interval)
and timestamps the SuperNode log lines that mark a message's way (received, reply
sending, reply sent). That splits a round into Flower's polling hops (SuperNode pull
3 s, SuperExec 1 s, SuperNode reply wait 0.5 s, ServerApp pull 3 s) and the ClientApp
process (interpreter, torch import, training, for the audited run signing); see
:func:`_breakdown`. The same thread remembers every process descended from those the
bench starts, so all of them are stopped by pid at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import processes
from fl.deploy.client import free_port
from fl.deploy.flower import flower_executable, service_env, supernode_node_id, write_toml_config

__all__ = ["measure"]

_CLIENTAPP = "flwr-clientapp"  # the process a SuperNode's SuperExec starts per message
_SAMPLE_S = 0.2


# --- sampling /proc and the SuperNode logs ------------------------------------------------
# SuperNode log lines (Flower 1.42) that mark a message's way through a node.
_MARKS = {"Received successfully": "received", "Sending: ": "sending", "Sent successfully": "sent"}


@dataclass
class _Life:
    """One ClientApp process as sampled: exact start (wall clock), end within a sample."""

    node: str
    start: float
    last_seen: float
    end: float | None = None
    cpu: float = 0.0  # user + system seconds at the last sample


@dataclass
class _NodeLog:
    path: Path
    offset: int = 0
    partial: bytes = b""
    events: list[tuple[float, str]] = field(default_factory=list)  # (wall clock, mark)


class _Watcher:
    """Samples every ``interval`` s: the process trees under ``roots`` (to stop them all at
    the end, and to time each ClientApp process) and the SuperNode logs (to time when a
    node received a message and handed its reply on)."""

    def __init__(self, interval: float = _SAMPLE_S) -> None:
        self.interval = interval
        self.roots: dict[int, str] = {}  # pid -> node label ("" for a non-node root)
        self.seen: dict[int, int] = {}  # every descendant: pid -> start ticks (pid reuse guard)
        self.clientapps: dict[tuple[int, int], _Life] = {}
        self.logs: dict[str, _NodeLog] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        # /proc/<pid>/stat start times count clock ticks since boot (CLOCK_BOOTTIME).
        self._boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        self._last = time.time()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def add_root(self, pid: Any, node: str = "") -> None:
        """Watch ``pid`` and its descendants (``node``: the SuperNode label they run for)."""
        if pid:
            with self._lock:
                if node or int(pid) not in self.roots:
                    self.roots[int(pid)] = node

    def add_node_log(self, node: str, path: Path) -> None:
        """Timestamp the marks of this SuperNode log from now on."""
        with self._lock:
            self.logs[node] = _NodeLog(path, path.stat().st_size if path.exists() else 0)

    @staticmethod
    def _stat(pid: int) -> tuple[str, str, int, int, int] | None:
        """(comm, state, ppid, start ticks, cpu ticks) of ``pid``, or None."""
        try:
            raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        comm = raw[raw.find("(") + 1: raw.rfind(")")]
        rest = raw[raw.rfind(")") + 2:].split()
        return comm, rest[0], int(rest[1]), int(rest[19]), int(rest[11]) + int(rest[12])

    def sample(self) -> None:
        """One sample of /proc and of the logs."""
        now = time.time()
        table: dict[int, tuple[str, str, int, int, int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = self._stat(int(entry.name))
                if stat is not None and stat[1] not in ("Z", "X"):
                    table[int(entry.name)] = stat
        children: dict[int, list[int]] = {}
        for pid, stat in table.items():
            children.setdefault(stat[2], []).append(pid)
        with self._lock:
            alive: set[tuple[int, int]] = set()
            for root, node in sorted(self.roots.items(), key=lambda item: not item[1]):  # nodes first
                queue = [root] if root in table else []
                while queue:
                    pid = queue.pop()
                    comm, _, _, start, cpu = table[pid]
                    self.seen[pid] = start
                    if comm == _CLIENTAPP:
                        key = (pid, start)
                        alive.add(key)
                        life = self.clientapps.setdefault(key, _Life(node, self._boot + start / self._tick, now))
                        life.last_seen, life.cpu = now, cpu / self._tick
                    queue.extend(children.get(pid, []))
            for key, life in self.clientapps.items():
                if life.end is None and key not in alive:
                    life.end = (life.last_seen + now) / 2  # gone between two samples
            stamp = (self._last + now) / 2  # a new log line appeared between two samples
            for log in self.logs.values():
                self._read_log(log, stamp)
            self._last = now

    @staticmethod
    def _read_log(log: _NodeLog, stamp: float) -> None:
        try:
            with open(log.path, "rb") as handle:
                handle.seek(log.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        log.offset += len(data)
        *lines, log.partial = (log.partial + data).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", errors="replace")
            for marker, mark in _MARKS.items():
                if marker in text:
                    log.events.append((stamp, mark))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a vanished /proc entry must not end sampling
                self.sample()

    def __enter__(self) -> _Watcher:
        self._thread = threading.Thread(target=self._loop, name="bench-proc-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def lives(self, node: str, since: float, until: float) -> list[_Life]:
        """``node``'s ClientApp processes started within [since, until]."""
        with self._lock:
            return sorted((life for life in self.clientapps.values()
                           if life.node == node and since <= life.start <= until), key=lambda life: life.start)

    def first(self, node: str, mark: str, since: float, until: float) -> float | None:
        """When ``mark`` first appeared in ``node``'s log within [since, until]."""
        with self._lock:
            log = self.logs.get(node)
            times = [t for t, m in (log.events if log else []) if m == mark and since <= t <= until]
        return min(times) if times else None

    def stop_leftovers(self) -> list[int]:
        """Stop (by pid) every remembered process still alive; the pids stopped."""
        with contextlib.suppress(Exception):
            self.sample()
        with self._lock:
            remembered = dict(self.seen)
        stopped = []
        for pid, start in sorted(remembered.items()):
            stat = self._stat(pid)
            if stat is not None and stat[3] == start and processes.pid_alive(pid):
                processes.stop(pid, timeout=5)
                stopped.append(pid)
        return stopped


# --- the shared federation -----------------------------------------------------------
@dataclass
class _Federation:
    cfg: Any  # fl.config.FederationConfig
    config_path: Path
    data: dict[str, Path]
    keys: dict[str, Path]
    env: dict[str, str]  # for fedledger CLI calls


def _prepare(root: Path, rounds: int, participants: int) -> _Federation:
    """Work directory, federation file, partitions, identities; the federation on the
    ledger (``fedledger coordinator init``) and each institution registered and admitted."""
    from fl import demo_data
    from fl import onboarding
    from fl.config import (DeploymentConfig, FederationConfig, ParticipantConfig, default_participants, msp_for,
                           write_config)
    from ledger import pki

    workdir = root / "audited"
    workdir.mkdir(parents=True)
    names = default_participants(participants)
    cfg = FederationConfig(
        id="bench-deploy", rounds=rounds, workdir=workdir, data=demo_data.credit_schema(),
        participants=[ParticipantConfig(id=n, msp_id=msp_for(n), data=root / "data" / f"{n}.csv") for n in names],
        deployment=DeploymentConfig(host="127.0.0.1", port=free_port()),
    )
    ws = cfg.workspace
    config_path = ws.config_file
    write_config(cfg, config_path)
    paths = demo_data.write_partitions_csv(
        demo_data.partition_credit(participants, cfg.data_seed, cfg.dirichlet_alpha, 0.2), root / "data", names)
    pki.demo_identity(ws.pki_root, "coordinator", cfg.coordinator_msp)
    env = service_env(root / "cli-flwr-home", extra={"FEDLEDGER_CONFIG": str(config_path)})
    _cli(env, workdir, "coordinator", "init", "--json")
    coordinator = onboarding.identity_from_cert(cfg.coordinator_msp, ws.cert(cfg.coordinator_msp, "coordinator"))
    target = onboarding.LedgerTarget.from_config(cfg)
    keys = {}
    for p in cfg.participants:
        pki.demo_identity(ws.pki_root, p.id, p.msp_id)
        own = onboarding.identity_from_cert(p.msp_id, ws.cert(p.msp_id, p.id))
        onboarding.register(target, own, p.id, ws.cert(p.msp_id, p.id), ca_cert_path=ws.ca_cert(p.msp_id),
                            key_path=ws.key(p.msp_id, p.id), examples=onboarding.count_rows(paths[p.id]))
        onboarding.admit(target, coordinator, p.id)
        keys[p.id] = ws.key(p.msp_id, p.id)
    return _Federation(cfg, config_path, {n: paths[n] for n in names}, keys, env)


def _fedledger() -> list[str]:
    script = Path(sys.executable).parent / "fedledger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fl.cli"]


def _cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 180, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*_fedledger(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"fedledger {' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stderr.strip()[-2000:]}\n{result.stdout.strip()[-1000:]}")
    return result


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class _Rounds:
    """Per round: seconds, end (wall clock), seconds in aggregate_train; the whole wall time."""

    nodes: list[str]  # the watcher's labels of this federation's SuperNodes
    seconds: list[float]
    ends: list[float]
    aggregate: list[float]
    wall_s: float
    load: float  # 1-minute load average when this federation started


# --- plain Flower ----------------------------------------------------------------------
_PLAIN_PYPROJECT = """\
[project]
name = "fedledger-plain"
version = "1.0.0"
description = "Plain Flower baseline of fedledger's deployment benchmark (generated; not part of fedledger)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedledger-bench"

[tool.flwr.app.components]
serverapp = "fedledger_plain_server:app"
clientapp = "fedledger_plain_client:app"

[tool.flwr.app.config]
num-server-rounds = 4
nodes = 3
federation = "bench-deploy"
local-epochs = 2
learning-rate = 0.05
batch-size = 64
seed = 42
timings = ""
"""

_PLAIN_SERVER = '''\
"""Plain Flower ServerApp of fedledger's deployment benchmark (generated at bench time).

Flower's own FedAvg from fedledger's initial model; per round, the time from the start
of configure_train to the end of aggregate_train is appended to the run config's
``timings`` file as one JSON line (the audited coordinator's rounds.jsonl equivalent).
"""

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl import demo_data
from fl import model as fl_model
from fl.records import to_record


class TimedFedAvg(FedAvg):
    def __init__(self, nodes, timings):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0,
                         min_train_nodes=nodes, min_available_nodes=nodes)
        self.timings = timings
        self._t0 = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._t0 = time.perf_counter()
        config = ConfigRecord({**dict(config), "round": server_round})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        t1 = time.perf_counter()
        out = super().aggregate_train(server_round, replies)
        done = time.perf_counter()
        line = {"round": server_round, "seconds": done - self._t0, "aggregate_seconds": done - t1,
                "ended_at": time.time(), "replies": len(replies)}
        with open(self.timings, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\\n")
        return out


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    strategy = TimedFedAvg(int(rc["nodes"]), Path(str(rc["timings"])))
    arrays = to_record(fl_model.initial_arrays(
        fl_model.ModelSpec(seed=int(rc["seed"])), demo_data.credit_schema().n_features))
    settings = {"federation": str(rc["federation"]), "round": 0,
                "local-epochs": int(rc["local-epochs"]), "learning-rate": float(rc["learning-rate"]),
                "batch-size": int(rc["batch-size"]), "seed": int(rc["seed"])}
    strategy.start(grid, arrays, num_rounds=int(rc["num-server-rounds"]),
                   train_config=ConfigRecord(settings))
'''

_PLAIN_CLIENT = '''\
"""Plain Flower ClientApp of fedledger's deployment benchmark (generated at bench time):
fedledger's train function without the signing mod; participant, key and data come from
the SuperNode's node config, as in the real deployment."""

from fl.client_app import make_client_app, node_config_resolver

app = make_client_app(node_config_resolver, audited=False)
'''


def _write_plain_app(directory: Path) -> Path:
    app = directory / "fedledger-plain"
    app.mkdir(parents=True)
    (app / "pyproject.toml").write_text(_PLAIN_PYPROJECT, encoding="utf-8")
    (app / "fedledger_plain_server.py").write_text(_PLAIN_SERVER, encoding="utf-8")
    (app / "fedledger_plain_client.py").write_text(_PLAIN_CLIENT, encoding="utf-8")
    return app


def _wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with status {proc.returncode} during start")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    _wait_for(up, timeout, f"the plain SuperLink on port {port}")


def _run_plain(root: Path, fed: _Federation, rounds: int, watcher: _Watcher) -> _Rounds:
    base = root / "plain"
    app = _write_plain_app(base)
    timings = base / "rounds.jsonl"
    port = free_port()
    home = base / "flwr-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "plain"\n\n[superlink.plain]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8")
    started: list[subprocess.Popen[bytes]] = []

    def spawn(command: Sequence[str], log: Path, flwr_home: Path, node: str = "") -> subprocess.Popen[bytes]:
        if node:
            watcher.add_node_log(node, log)
        proc = processes.spawn(command, env=service_env(flwr_home), log_path=log, cwd=base)
        started.append(proc)
        watcher.add_root(proc.pid, node)
        return proc

    t0, load = time.monotonic(), os.getloadavg()[0]
    try:
        link = spawn([flower_executable("flower-superlink"), "--insecure", "--database", str(base / "superlink.db"),
                      "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"],
                     base / "superlink.log", home)
        _wait_http(port, link)
        nodes = []
        for name in fed.cfg.participant_ids():
            node_dir = base / "clients" / name
            node_config = write_toml_config(node_dir / "node-config.toml", {
                "participant": name, "key": str(fed.keys[name].resolve()), "data": str(fed.data[name].resolve())})
            nodes.append((node_dir / "supernode.log", spawn(
                [flower_executable("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--node-config", str(node_config), "--host", "127.0.0.1", "--port", str(free_port())],
                node_dir / "supernode.log", node_dir / "flwr-home", f"plain/{name}")))
        for log, proc in nodes:
            _wait_for(lambda: proc.poll() is not None or supernode_node_id(processes.tail(log, 200)), 60,
                      f"plain SuperNode {log.parent.name} to connect", lambda: processes.tail(log))
            if proc.poll() is not None:
                raise RuntimeError(f"plain SuperNode exited with {proc.returncode}:\n{processes.tail(log)}")
        run_config = write_toml_config(base / "run-config.toml", {
            "num-server-rounds": rounds, "nodes": len(nodes), "federation": fed.cfg.id,
            "local-epochs": fed.cfg.training.local_epochs, "learning-rate": fed.cfg.training.learning_rate,
            "batch-size": fed.cfg.training.batch_size, "seed": fed.cfg.training.seed, "timings": str(timings)})
        run_log = base / "run.log"
        run = spawn([flower_executable("flwr"), "run", str(app), "plain", "--stream", "--run-config", str(run_config)],
                    run_log, home)
        _wait_for(lambda: run.poll() is not None, 120 + 120 * rounds, "the plain run to finish",
                  lambda: processes.tail(run_log, 40))
        lines = _read_rounds(timings)
        if run.returncode != 0 or len(lines) < rounds:
            raise RuntimeError(f"plain run ended after {len(lines)} of {rounds} rounds "
                               f"(flwr run exit {run.poll()}):\n{processes.tail(run_log, 40)}")
        if any(line["replies"] != len(nodes) for line in lines):
            raise RuntimeError(f"plain run: a round had fewer replies than nodes: {lines}")
        wall = time.monotonic() - t0
    finally:
        for proc in reversed(started):
            processes.stop(proc.pid, proc=proc, timeout=15)
    return _Rounds([f"plain/{n}" for n in fed.cfg.participant_ids()],
                   [line["seconds"] for line in lines], [line["ended_at"] for line in lines],
                   [line["aggregate_seconds"] for line in lines], wall, load)


# --- the audited deployment ------------------------------------------------------------
def _run_audited(fed: _Federation, rounds: int, watcher: _Watcher) -> _Rounds:
    workdir = fed.cfg.workdir
    coordinator = fed.cfg.workspace.coordinator
    rounds_log = coordinator.rounds_log
    ends: dict[int, float] = {}

    def remember(state: dict[str, Any]) -> None:
        for key in ("pid", "superlink_pid", "run_pid", "supernode_pid"):
            watcher.add_root(state.get(key))

    def note_rounds() -> int:
        # The coordinator appends a round's line right after its commit (and evaluation);
        # the file's mtime when a new line appears is that round's end.
        lines = _read_rounds(rounds_log)
        if len(lines) > len(ends):
            mtime = rounds_log.stat().st_mtime
            for line in lines[len(ends):]:
                ends[int(line["round"])] = mtime
        return len(lines)

    def coordinator_log() -> str:
        return "\n".join(f"--- {path.name}\n{processes.tail(path, 30)}"
                         for path in (coordinator.service_log, coordinator.run_log, coordinator.superlink_log))

    t0, load = time.monotonic(), os.getloadavg()[0]
    try:
        started = json.loads(_cli(fed.env, workdir, "coordinator", "start", "--detach", "--rounds", str(rounds),
                                  "--exit-after-run", "--json").stdout)
        remember(started)
        for name in fed.cfg.participant_ids():
            watcher.add_node_log(f"audited/{name}", fed.cfg.workspace.client(name).supernode_log)
            result = json.loads(_cli(fed.env, workdir, "client", "start", "-p", name, "--detach", "--json").stdout)
            watcher.add_root(result.get("pid"), f"audited/{name}")
            watcher.add_root(result.get("supernode_pid"), f"audited/{name}")
        # The services' own children are found through their pids from here on.

        def finished() -> bool:
            note_rounds()
            state = processes.read_json(coordinator.state_file) or {}
            remember(state)
            return state.get("status") in ("stopped", "failed")

        _wait_for(finished, 120 + 120 * rounds, "the audited run", coordinator_log)
        note_rounds()
        state = processes.read_json(coordinator.state_file) or {}
        lines = _read_rounds(rounds_log)
        if state.get("run_status") != "finished:completed" or len(lines) < rounds:
            raise RuntimeError(f"audited run: {state.get('run_status')} after {len(lines)} of {rounds} rounds\n"
                               f"{coordinator_log()}")
        wall = time.monotonic() - t0
    finally:
        for name in fed.cfg.participant_ids():
            with contextlib.suppress(Exception):
                _cli(fed.env, workdir, "client", "stop", "-p", name, timeout=60, check=False)
        with contextlib.suppress(Exception):
            _cli(fed.env, workdir, "coordinator", "stop", timeout=60, check=False)
        # Whatever a CLI call could not stop: the pid files, then the watcher's list.
        for pid_file in [coordinator.pid_file,
                         *(fed.cfg.workspace.client(n).pid_file for n in fed.cfg.participant_ids())]:
            pid = processes.read_pid(pid_file)
            if pid is not None and processes.pid_alive(pid):
                processes.stop(pid, timeout=15)
    return _Rounds([f"audited/{n}" for n in fed.cfg.participant_ids()],
                   [line["seconds"] for line in lines], [ends[int(line["round"])] for line in lines],
                   [line["aggregate_seconds"] for line in lines], wall, load)


# --- analysis ----------------------------------------------------------------------------
def _breakdown(run: _Rounds, watcher: _Watcher) -> dict[str, Any]:
    """Where a counted round's time goes (medians over nodes, then over rounds; marks
    from the logs are known within half a sampling interval):

    * ``to_node_s``: round start → the SuperNode has pulled the message (its 3 s poll);
    * ``to_clientapp_s``: → the ClientApp process starts (SuperExec's 1 s poll, fork/exec);
    * ``clientapp_s``: → the SuperNode starts sending the reply (interpreter, imports, FAB,
      training, signing, and the SuperNode's 0.5 s wait for the reply);
    * ``to_server_s``: the last reply sent → round end (the ServerApp's 3 s pull poll and
      ``aggregate_train``, whose own time is ``aggregate_s``);
    * ``clientapp_life_s`` / ``clientapp_cpu_s``: a ClientApp process's whole life and CPU time.
    """
    parts: dict[str, list[float]] = {k: [] for k in ("to_node_s", "to_clientapp_s", "clientapp_s", "to_server_s",
                                                      "clientapp_life_s", "clientapp_cpu_s")}
    counts = []
    for seconds, end in list(zip(run.seconds, run.ends))[1:]:
        begin = end - seconds
        per_node: dict[str, list[float]] = {k: [] for k in parts}
        sent_last = None
        count = 0
        for node in run.nodes:
            lives = watcher.lives(node, begin, end)
            count += len(lives)
            received = watcher.first(node, "received", begin, end)
            sending = watcher.first(node, "sending", lives[0].start, end + 1) if lives else None
            sent = watcher.first(node, "sent", sending, end + 1) if sending is not None else None
            if lives:
                life = lives[0]
                if life.end is not None:
                    per_node["clientapp_life_s"].append(life.end - life.start)
                per_node["clientapp_cpu_s"].append(life.cpu)
                if received is not None:
                    per_node["to_node_s"].append(received - begin)
                    per_node["to_clientapp_s"].append(life.start - received)
                if sending is not None:
                    per_node["clientapp_s"].append(sending - life.start)
            if sent is not None:
                sent_last = sent if sent_last is None else max(sent_last, sent)
        counts.append(count)
        if sent_last is not None:
            per_node["to_server_s"].append(max(0.0, end - sent_last))
        for key, values in per_node.items():
            if values:
                parts[key].append(statistics.median(values))
    out: dict[str, Any] = {k: (statistics.median(v) if v else None) for k, v in parts.items()}
    out.update(aggregate_s=statistics.median(run.aggregate[1:]), clientapps_per_round=counts,
               load_avg_1m=run.load)
    return out


def _train_seconds(fed: _Federation) -> float:
    """Median wall time of one institution's local training alone (in this process, warm)."""
    from fl import data as fl_data
    from fl import model as fl_model
    from fl.server_app import initial_model

    t = fed.cfg.training
    times = []
    for name in fed.cfg.participant_ids():
        X, y = fl_data.load_csv(fed.data[name], fed.cfg.schema)
        for _ in range(2):  # the first is a warm-up
            model = fl_model.build_model(fed.cfg.model, X.shape[1])
            fl_model.set_arrays(model, initial_model(fed.cfg))
            started = time.perf_counter()
            fl_model.train(model, X, y, epochs=t.local_epochs, lr=t.learning_rate, batch_size=t.batch_size,
                           seed=t.seed + 1)
            elapsed = time.perf_counter() - started
        times.append(elapsed)
    return statistics.median(times)


def measure(rounds: int = 4, participants: int = 3) -> dict[str, Any]:
    """Median per-round time (rounds 2..N) of plain Flower and of the audited deployment,
    their ratio, and where a round's time goes."""
    if rounds < 2:
        raise ValueError("rounds must be ≥ 2 (round 1 is a warm-up and not counted)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedledger-bench-deploy-", ignore_cleanup_errors=True) as tmp, \
            _Watcher() as watcher:
        root = Path(tmp)
        try:
            fed = _prepare(root, rounds, participants)
            plain = _run_plain(root, fed, rounds, watcher)
            audited = _run_audited(fed, rounds, watcher)
            plain_parts = _breakdown(plain, watcher)
            audited_parts = _breakdown(audited, watcher)
            train_s = _train_seconds(fed)
        finally:
            leftovers = watcher.stop_leftovers()
    med = statistics.median
    plain_s, audited_s = med(plain.seconds[1:]), med(audited.seconds[1:])
    return {
        "participants": participants, "rounds": rounds, "rounds_counted": rounds - 1,
        "local_epochs": fed.cfg.training.local_epochs,
        "plain_round_s": plain_s, "audited_round_s": audited_s, "ratio": audited_s / plain_s,
        "plain_rounds_s": plain.seconds, "audited_rounds_s": audited.seconds,
        "plain_breakdown": plain_parts, "audited_breakdown": audited_parts,
        "local_training_s": train_s,
        "plain_wall_s": plain.wall_s, "audited_wall_s": audited.wall_s,
        "bench_wall_s": time.monotonic() - started,
        "leftover_processes_stopped": leftovers,
    }
