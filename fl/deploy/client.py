"""The institution service: one SuperNode over TLS, authenticated by the institution's key.

The institution's single P-256 key both authenticates its SuperNode (Flower wants it in
OpenSSH format: a 0600 copy is written when the given file is PEM) and signs its updates
(the ClientApp loads it from the ``key`` entry of the node config). The node config is a
TOML file with ``participant``, ``key`` and ``data`` — what :mod:`fl.client_app` reads.

Files under ``<workdir>/clients/<participant>/``: ``supernode.log`` (Flower's output),
``service.log`` (this service's JSON log when detached), ``client.pid``, ``state.json``,
``node-config.toml``, ``node-key.ssh``, ``flwr-home/``.

Exit codes: 0 stopped by SIGTERM/SIGINT (or the SuperNode ended cleanly), 3 the SuperLink
refused the node key (Flower exit code 305: not admitted, or revoked), 1 anything else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ledger import processes
from fl.deploy.flower import (
    refused_exit_code,
    service_env,
    supernode_command,
    supernode_node_id,
    write_toml_config,
)
from ledger import pki
from ledger.formats import validate_id

__all__ = ["ClientPaths", "ClientSpec", "ClientService", "EXIT_REFUSED", "free_port"]

log = structlog.get_logger("fedledger.client.service")
EXIT_REFUSED = 3
FLOWER_NOT_ACTIVATED = 305


class ClientPaths:
    """Everything an institution's service writes."""

    def __init__(self, root: Path) -> None:
        self.root = root = Path(root).resolve()
        self.flwr_home = root / "flwr-home"
        self.node_config = root / "node-config.toml"
        self.node_key = root / "node-key.ssh"
        self.supernode_log = root / "supernode.log"
        self.service_log = root / "service.log"
        self.pid_file = root / "client.pid"
        self.state_file = root / "state.json"

    @classmethod
    def of(cls, workdir: Path, participant: str) -> ClientPaths:
        """``<workdir>/clients/<participant>`` (the id is checked: no path tricks)."""
        return cls(workdir / "clients" / validate_id(participant, "participant"))


@dataclass(frozen=True)
class ClientSpec:
    """What one institution's node needs."""

    participant: str
    data: Path
    key: Path
    superlink: str
    root_certificates: Path
    workdir: Path
    runtime_port: int = 0  # 0: pick a free local port
    cert: Path | None = None  # when given, the key must match it


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _auth_key_file(spec: ClientSpec, paths: ClientPaths) -> Path:
    """The key in OpenSSH format for ``--auth-supernode-private-key`` (the same key)."""
    key = pki.load_private_key(spec.key)  # refuses open permissions, wrong curve, encryption
    if spec.cert is not None and pki.spki_pem(pki.load_certificate(spec.cert)) != pki.spki_pem(key):
        raise pki.CertificateError(f"{spec.cert}: {spec.key} is not this certificate's key")
    if spec.key.read_bytes().lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        return spec.key
    return pki.write_private_key(paths.node_key, key, fmt="openssh")


class ClientService:
    """Runs one SuperNode in the foreground until SIGTERM/SIGINT or until it exits."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.paths = ClientPaths.of(spec.workdir, spec.participant)
        self._stop = threading.Event()
        self._state: dict[str, Any] = {}

    def _update(self, **fields: Any) -> None:
        self._state.update(fields)
        processes.write_json_atomic(self.paths.state_file, self._state)

    def request_stop(self, *_: Any) -> None:
        """Ask the service to stop (signal handler)."""
        self._stop.set()

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        """Check the key, write the node config and the OpenSSH key; the SuperNode argv + env."""
        spec = self.spec
        if not spec.data.exists():
            raise FileNotFoundError(f"{spec.data}: data file does not exist")
        if not spec.root_certificates.exists():
            raise FileNotFoundError(f"{spec.root_certificates}: the SuperLink's TLS CA certificate does not exist")
        auth_key = _auth_key_file(spec, self.paths)
        write_toml_config(self.paths.node_config, {
            "participant": spec.participant,
            "key": str(spec.key.resolve()),
            "data": str(spec.data.resolve()),
        })
        port = spec.runtime_port or free_port()
        command = supernode_command(superlink=spec.superlink, root_certificates=spec.root_certificates.resolve(),
                                    auth_key=auth_key.resolve(), node_config=self.paths.node_config.resolve(),
                                    port=port)
        return command, service_env(self.paths.flwr_home)

    def serve(self) -> int:
        """Start the SuperNode, supervise it, stop it; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        processes.claim_pid(self.paths.pid_file)
        self._update(service="client", participant=self.spec.participant, status="starting",
                     pid=os.getpid(), superlink=self.spec.superlink, started_at=time.time(),
                     node_id=None, exit_code=None)
        supernode: subprocess.Popen[bytes] | None = None
        code = 0
        try:
            command, env = self.prepare()
            log_offset = self.paths.supernode_log.stat().st_size if self.paths.supernode_log.exists() else 0
            supernode = processes.spawn(command, env=env, log_path=self.paths.supernode_log,
                                        cwd=self.paths.root)
            log.info("supernode_started", participant=self.spec.participant, pid=supernode.pid,
                     superlink=self.spec.superlink)
            self._update(supernode_pid=supernode.pid, children={"supernode": processes.tag(supernode.pid)})
            code = self._supervise(supernode, log_offset)
        except (ValueError, OSError) as exc:
            log.error("client_failed", participant=self.spec.participant, error=str(exc))
            self._update(status="failed", error=str(exc))
            code = 1
        finally:
            if supernode is not None and supernode.poll() is None:
                result = processes.stop(supernode.pid, proc=supernode, timeout=15)
                log.info("supernode_stopped", participant=self.spec.participant, **result.to_json())
            if self._state.get("status") in ("starting", "running"):
                self._update(status="stopped")
            self._update(stopped_at=time.time())
            processes.release_pid(self.paths.pid_file)
        return code

    def _new_log(self, offset: int) -> str:
        try:
            with open(self.paths.supernode_log, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _supervise(self, supernode: subprocess.Popen[bytes], log_offset: int) -> int:
        node_id: int | None = None
        while not self._stop.wait(0.5):
            if node_id is None:
                node_id = supernode_node_id(self._new_log(log_offset))
                if node_id is not None:
                    log.info("supernode_connected", participant=self.spec.participant, node_id=str(node_id))
                    self._update(status="running", node_id=str(node_id))
            status = supernode.poll()
            if status is None:
                continue
            text = self._new_log(log_offset)
            flower_code = refused_exit_code(text)
            if flower_code == FLOWER_NOT_ACTIVATED:
                log.error("node_refused", participant=self.spec.participant, flower_exit_code=flower_code,
                          detail="the SuperLink does not accept this key (not admitted, or revoked)")
                self._update(status="refused", exit_code=status, flower_exit_code=flower_code)
                return EXIT_REFUSED
            if status == 0:
                # A node whose key is unregistered gets HTTP 401 and stops itself cleanly.
                log.warning("supernode_exited", participant=self.spec.participant, exit_code=status,
                            detail="the SuperLink stopped accepting this node (revoked?)")
                self._update(status="disconnected", exit_code=status)
                return 0
            log.error("supernode_failed", participant=self.spec.participant, exit_code=status,
                      flower_exit_code=flower_code)
            self._update(status="failed", exit_code=status, flower_exit_code=flower_code)
            return 1
        return 0
