"""Deployment round time: the per-message ClientApp vs the relay ClientApp, side by side.

Two fresh federations run one after the other as real processes on 127.0.0.1, exactly
as a user runs them (``fedledger coordinator start``: TLS, node auth, embedded ledger;
one ``fedledger client start`` per institution), on the same workload:

* **per-message** (``clientapp = "fl.client_app:app"``, nodes started with
  ``--no-trainer``): each message starts a fresh ClientApp process that imports torch
  and reads the data;
* **relay**, the project's default (``clientapp = "fl.relay_app:app"``, nodes with their
  trainer): the ClientApp process only relays to the institution's warm trainer and
  signs the reply.

Each runs from a generated app directory (the project's shipped files, the one
``clientapp`` line set), so the comparison does not depend on the project's default.

A round's time is the coordinator's (``seconds`` in ``rounds.jsonl``: from the start of
``configure_train`` to the ledger commit and evaluation). Round 1 (start-up, nodes
connecting) is not counted; min/median/max of rounds 2..N are reported. Every process
the bench starts is stopped by pid at the end (the deployment bench's watcher).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.deployment import _cli, _prepare, _read_rounds, _wait_for, _Watcher
from fl.config import project_root, write_config
from ledger import processes

__all__ = ["app_dir", "measure", "relay_app_dir"]

_COMPONENT = re.compile(r'^clientapp = "[^"]*"$', re.MULTILINE)


def app_dir(dest: Path, component: str) -> Path:
    """The project's Flower app with ``component`` as its ClientApp (a copy under ``dest``)."""
    root = project_root()
    dest.mkdir(parents=True)
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    if _COMPONENT.search(text) is None:
        raise ValueError(f"{root / 'pyproject.toml'}: no clientapp line to replace")
    (dest / "pyproject.toml").write_text(_COMPONENT.sub(f'clientapp = "{component}"', text), encoding="utf-8")
    for package in ("fl", "ledger", "chaincode"):
        shutil.copytree(root / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def relay_app_dir(dest: Path) -> Path:
    """The project's Flower app with the relay ClientApp (a copy under ``dest``)."""
    return app_dir(dest, "fl.relay_app:app")


def _run(root: Path, rounds: int, participants: int, watcher: _Watcher, relay: bool) -> dict[str, Any]:
    fed = _prepare(root, rounds, participants)
    component = "fl.relay_app:app" if relay else "fl.client_app:app"
    app = app_dir(root / "app" / "fedledger", component)
    cfg = fed.cfg.model_copy(update={"deployment": fed.cfg.deployment.model_copy(update={"app": app})})
    write_config(cfg, fed.config_path)
    workdir, ws = fed.cfg.workdir, fed.cfg.workspace
    coordinator = ws.coordinator

    def remember(state: dict[str, Any]) -> None:
        for key in ("pid", "superlink_pid", "run_pid", "supernode_pid", "trainer_pid"):
            watcher.add_root(state.get(key))

    def coordinator_log() -> str:
        return "\n".join(f"--- {path.name}\n{processes.tail(path, 30)}"
                         for path in (coordinator.service_log, coordinator.run_log, coordinator.superlink_log))

    t0, load = time.monotonic(), os.getloadavg()[0]
    try:
        remember(json.loads(_cli(fed.env, workdir, "coordinator", "start", "--detach", "--rounds", str(rounds),
                                 "--exit-after-run", "--json").stdout))
        for name in fed.cfg.participant_ids():
            extra = ["--trainer", "--wait", "180"] if relay else ["--no-trainer"]
            remember(json.loads(_cli(fed.env, workdir, "client", "start", "-p", name, "--detach", "--json",
                                     *extra).stdout))

        def finished() -> bool:
            state = processes.read_json(coordinator.state_file) or {}
            remember(state)
            return state.get("status") in ("stopped", "failed")

        _wait_for(finished, 180 + 120 * rounds, "the run", coordinator_log)
        state = processes.read_json(coordinator.state_file) or {}
        lines = _read_rounds(coordinator.rounds_log)
        if state.get("run_status") != "finished:completed" or len(lines) < rounds:
            raise RuntimeError(f"{'relay' if relay else 'default'} run: {state.get('run_status')} after "
                               f"{len(lines)} of {rounds} rounds\n{coordinator_log()}")
        wall = time.monotonic() - t0
    finally:
        for name in fed.cfg.participant_ids():
            with contextlib.suppress(Exception):
                _cli(fed.env, workdir, "client", "stop", "-p", name, timeout=60, check=False)
        with contextlib.suppress(Exception):
            _cli(fed.env, workdir, "coordinator", "stop", timeout=60, check=False)
        for pid_file in [coordinator.pid_file, *(ws.client(n).pid_file for n in fed.cfg.participant_ids())]:
            pid = processes.read_pid(pid_file)
            if pid is not None and processes.pid_alive(pid):
                processes.stop(pid, timeout=15)
    seconds = [float(line["seconds"]) for line in lines]
    counted = seconds[1:]
    return {"rounds_s": seconds, "min_s": min(counted), "median_s": statistics.median(counted),
            "max_s": max(counted), "wall_s": wall, "load_avg_1m": load}


def measure(rounds: int = 6, participants: int = 3) -> dict[str, Any]:
    """Round time (rounds 2..N) of the default and the relay ClientApp, and the median ratio."""
    if rounds < 2:
        raise ValueError("rounds must be ≥ 2 (round 1 is a warm-up and not counted)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedledger-bench-relay-", ignore_cleanup_errors=True) as tmp, \
            _Watcher() as watcher:
        root = Path(tmp)
        try:
            default = _run(root / "default", rounds, participants, watcher, relay=False)
            relay = _run(root / "relay", rounds, participants, watcher, relay=True)
        finally:
            leftovers = watcher.stop_leftovers()
    return {"participants": participants, "rounds": rounds, "rounds_counted": rounds - 1,
            "default": default, "relay": relay, "median_ratio": relay["median_s"] / default["median_s"],
            "bench_wall_s": time.monotonic() - started, "leftover_processes_stopped": leftovers}
