"""Detached services: start one in the background, stop it by pid, read its state.

Every service (coordinator, institution node, signer) keeps the same three files in its
directory (:class:`fl.workspace.ServiceFiles`): a pid file naming pid *and* start time,
``state.json`` it writes itself, and ``service.log``. A detached start returns once the
state says the service is up (or why not); a stop signals only the process the pid file
still names, then the Flower children the state recorded, if each is still the very
process that was started.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from fl.workspace import ServiceFiles
from ledger import processes

__all__ = ["ServiceRunning", "cli_argv", "detach", "stop_service", "service_status"]


class ServiceRunning(processes.AlreadyRunning):
    """The service's pid file names a live process: it is running already."""


def cli_argv(module: str, *words: str) -> list[str]:
    """Argv that runs ``python -m <module> <words>`` with this interpreter (for detaching)."""
    return [sys.executable, "-m", module, *words]


def detach(
    argv: list[str],
    files: ServiceFiles,
    *,
    wait: float,
    ready: Callable[[dict[str, Any]], bool],
    dir_mode: int = 0o755,
    poll: float = 0.25,
) -> tuple[int, dict[str, Any]]:
    """Start ``argv`` in the background (log: ``files.service_log``) and wait up to
    ``wait`` seconds until ``ready(state)`` or it ends; ``(pid, last state)``."""
    running = processes.read_pid(files.pid_file)
    if running is not None and processes.pid_alive(running):
        raise ServiceRunning(f"already running with pid {running} ({files.pid_file})")
    files.root.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    files.state_file.unlink(missing_ok=True)
    proc = processes.spawn(argv, env=dict(os.environ), log_path=files.service_log, pid_path=files.pid_file)
    deadline = time.monotonic() + wait
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = processes.read_json(files.state_file) or {}
        if state.get("pid") == proc.pid and ready(state):
            return proc.pid, state
        if proc.poll() is not None:
            state = processes.read_json(files.state_file) or {}
            state.setdefault("status", "failed")
            state["exit_code"] = proc.returncode
            return proc.pid, state
        time.sleep(poll)
    state["status"] = state.get("status", "starting")
    return proc.pid, state


def stop_service(files: ServiceFiles, timeout: float) -> dict[str, Any]:
    """SIGTERM the process the pid file names and wait for its tree; then stop the
    children a hard-killed service left behind. ``was_running`` says whether it ran."""
    # Only a pid file whose process is still the one that wrote it is signalled: never
    # a pid from state.json or one the kernel has since given to another process.
    pid = processes.read_pid(files.pid_file)
    if pid is None or not processes.pid_alive(pid):
        result: dict[str, Any] = {"pid": pid, "was_running": False}
    else:
        result = processes.stop(pid, timeout=timeout).to_json()
    files.pid_file.unlink(missing_ok=True)
    state = processes.read_json(files.state_file) or {}
    orphans = {}
    for name, tag in (state.get("children") or {}).items():
        child = processes.tagged_pid(tag)
        if child is not None:
            orphans[name] = processes.stop(child, timeout=timeout).to_json()
    if orphans:
        result["orphans_stopped"] = orphans
    return result


def service_status(files: ServiceFiles) -> dict[str, Any]:
    """The service's own state plus ``alive`` (its pid file names a live process);
    a service that claims to run but is gone reads ``dead``."""
    state = processes.read_json(files.state_file) or {"status": "never started"}
    pid = processes.read_pid(files.pid_file)
    state["alive"] = pid is not None and processes.pid_alive(pid)
    if not state["alive"] and state.get("status") in ("starting", "running"):
        state["status"] = "dead"
    return state
