"""Detached processes with pid and log files, stopped cleanly by pid.

Flower's daemons start children of their own (``flower-superexec``, which starts
``flwr-serverapp`` / ``flwr-clientapp``) in *new sessions*, so signalling a process group
misses them. They watch their parent with ``kill(pid, 0)`` and exit when it is gone — but
a parent that is a zombie still passes that test, so whoever started a daemon must reap
it promptly (:func:`stop` does). :func:`stop` therefore lists the whole process tree by
parent pid (from ``/proc``, Linux) *before* signalling, sends SIGTERM to the root, waits,
then SIGTERM and finally SIGKILL to every listed pid still alive. Nothing is signalled by
name, only by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "StopResult",
    "spawn",
    "pid_alive",
    "descendants",
    "stop",
    "write_json_atomic",
    "read_json",
    "read_pid",
    "AlreadyRunning",
    "tag",
    "tagged_pid",
    "claim_pid",
    "release_pid",
    "start_time",
    "tail",
]


def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
    pid_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, stdout+stderr appended to ``log_path``.

    The child has no terminal and no stdin, so it survives the shell that started it
    and ignores the terminal's Ctrl-C; it is stopped with :func:`stop`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - a fixed argv, never a shell
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
        )
    if pid_path is not None:
        write_pid(pid_path, proc.pid)
    return proc


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22), or ``None``.

    A pid and its start time name one process: a pid reused by another process later
    has another start time, so a stale pid file can never make us signal a stranger.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def write_pid(path: Path, pid: int) -> None:
    """Write ``pid`` and its start time to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid} {start_time(pid) or 0}\n", encoding="ascii")
    os.replace(tmp, path)


def tag(pid: int) -> str:
    """``"pid:start_time"``: names one process for good, even after the pid is reused."""
    return f"{pid}:{start_time(pid) or 0}"


def tagged_pid(value: str) -> int | None:
    """The pid of a :func:`tag` if that very process still runs, else ``None``."""
    pid_text, _, start_text = str(value).partition(":")
    if not pid_text.isdigit() or not start_text.isdigit():
        return None
    pid = int(pid_text)
    return pid if int(start_text) and start_time(pid) == int(start_text) else None


class AlreadyRunning(ValueError):
    """Another live process holds the service's pid file."""


def claim_pid(path: Path) -> None:
    """Write this process's pid to ``path`` unless another live process holds it."""
    holder = read_pid(path)
    if holder is not None and holder != os.getpid() and pid_alive(holder):
        raise AlreadyRunning(f"already running with pid {holder} ({path})")
    write_pid(path, os.getpid())


def release_pid(path: Path) -> None:
    """Remove ``path`` if it still names this process (never another's pid file)."""
    if read_pid(path) == os.getpid():
        path.unlink(missing_ok=True)


def read_pid(path: Path) -> int | None:
    """The pid in ``path`` if that very process still runs, else ``None``.

    ``None`` when the file is missing or malformed, and when the pid now belongs to a
    process started at another time than the one recorded (pid reuse).
    """
    try:
        words = path.read_text(encoding="ascii").split()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if not words or not all(w.isdigit() for w in words[:2]):
        return None
    pid = int(words[0])
    recorded = int(words[1]) if len(words) > 1 else None
    if recorded and start_time(pid) != recorded:
        return None
    return pid


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write a JSON document atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON document, or ``None`` when missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from /proc, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie — exited, not yet reaped — counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from /proc parent links."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[0] not in ("Z", "X"):
            parents.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in parents.get(queue.pop(0), []):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


@dataclass
class StopResult:
    """What :func:`stop` did: pids signalled, and those that needed SIGKILL."""

    pid: int
    was_running: bool
    tree: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    exit_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``--json`` output and state files."""
        return {"pid": self.pid, "was_running": self.was_running, "tree": self.tree,
                "killed": self.killed, "exit_code": self.exit_code}


def _reap(pid: int, proc: subprocess.Popen[bytes] | None) -> int | None:
    """Reap ``pid`` if it is our child and has exited; its exit code or None."""
    if proc is not None:
        return proc.poll()
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def _wait_gone(pids: Sequence[int], deadline: float, proc: subprocess.Popen[bytes] | None,
               root: int) -> None:
    while time.monotonic() < deadline:
        _reap(root, proc)
        if not any(pid_alive(p) for p in pids):
            return
        time.sleep(0.1)


def stop(
    pid: int,
    *,
    timeout: float = 20.0,
    proc: subprocess.Popen[bytes] | None = None,
    sig: int = signal.SIGTERM,
) -> StopResult:
    """Stop ``pid`` and everything it started: ``sig``, wait up to ``timeout`` s, then
    SIGTERM the leftovers, then SIGKILL. Returns what it did; never raises for a pid
    that is already gone."""
    result = StopResult(pid=pid, was_running=pid_alive(pid))
    if not result.was_running:
        result.exit_code = _reap(pid, proc)
        return result
    result.tree = [pid, *descendants(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    _wait_gone(result.tree, time.monotonic() + timeout, proc, pid)
    leftovers = [p for p in result.tree if pid_alive(p)]
    if leftovers:
        # Children may have started grandchildren after the tree was listed.
        for p in list(leftovers):
            leftovers.extend(d for d in descendants(p) if d not in leftovers)
        for p in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        _wait_gone(leftovers, time.monotonic() + 5.0, proc, pid)
        for p in leftovers:
            if pid_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
                result.killed.append(p)
        _wait_gone(leftovers, time.monotonic() + 5.0, proc, pid)
    result.exit_code = _reap(pid, proc)
    return result


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
