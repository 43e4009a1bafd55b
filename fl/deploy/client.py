"""The institution service: one SuperNode over TLS, the signer that holds its key, and
the trainer that does its training.

The institution's single P-256 key both authenticates its SuperNode and signs its
updates — but neither the SuperNode nor the ClientApp it runs (code the coordinator
ships) ever holds it. The key stays with the institution's signer (:mod:`fl.signer`):

* with ``ClientSpec.signer`` the node uses a signer the institution already runs
  (``fedledger signer start``; e.g. under its own user, or with the key in an HSM);
* otherwise this service starts one itself, as its child, from ``ClientSpec.key`` and
  the federation file (``ClientSpec.config``).

The signer's public key must be the certificate's (when one is given). The SuperNode
runs through :mod:`fl.signer.supernode`, which authenticates it by asking the signer to
sign Flower's node-auth timestamps, and the node config — ``participant``, ``data``,
``config`` (the institution's federation file: the data schema and the model),
``signer`` and ``trainer`` (sockets) — names no key: the ClientApp asks the signer for
each signature, and the signer refuses what the institution's policy does not allow.

Before anything starts, ``data`` is checked against the federation's declared schema
(:func:`check_data`); a file that does not fit is refused with every problem named. With
``ClientSpec.trainer`` (the default) the service also runs the institution's trainer
(:mod:`fl.trainer`): torch imported and the data read once, which the project's relay
ClientApp (:mod:`fl.relay_app`) hands each train and evaluate message to.

With ``ClientSpec.approved_apps``/``approved_apps_file`` the node runs only ClientApps
whose FAB hash the institution approved (:mod:`fl.signer.pinning`); a refused run shows
in ``state.json`` as ``refused_apps`` (run id and hash).

Files: :meth:`fl.workspace.Workspace.client` (``supernode.log`` — Flower's output,
``service.log``, ``client.pid``, ``state.json``, ``node-config.toml``, ``flwr-home/``);
the signer's: :meth:`fl.workspace.Workspace.signer`.

Exit codes (:class:`fl.cli_output.ExitCode`): 0 stopped by SIGTERM/SIGINT (or the SuperNode
ended cleanly), 1 the SuperLink refused the node key (Flower exit code 305: not admitted,
or revoked) or anything else failed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
from fl.signer.client import SignerClient, SignerError
from fl.signer.pinning import load_approved, refusals
from fl import data as fl_data
from fl.config import ConfigError, FederationConfig, load_config
from fl.data import DataCheck
from fl.signer.settings import count_rows
from fl.workspace import Workspace
from ledger import pki

__all__ = ["ClientSpec", "ClientService", "EXIT_REFUSED", "check_data", "client_spec", "free_port",
           "signer_supernode_command"]

log = structlog.get_logger("fedledger.client.service")
EXIT_REFUSED = 1  # ExitCode.FAILED: the request (this node's key) was refused
FLOWER_NOT_ACTIVATED = 305


@dataclass(frozen=True)
class ClientSpec:
    """What one institution's node needs."""

    participant: str
    data: Path
    key: Path | None  # the key file a started signer loads; unused with ``signer``
    superlink: str
    root_certificates: Path
    workdir: Path
    runtime_port: int = 0  # 0: pick a free local port
    cert: Path | None = None  # when given, the key must match it
    signer: Path | None = None  # socket of a signer the institution runs; None: start one
    config: Path | None = None  # the federation file: its schema checks ``data``; a started signer reads it
    max_num_examples: int | None = None  # declared to a started signer (default: rows of ``data``)
    signer_wait: float = 30.0  # seconds a started signer may take to serve
    # ClientApps the node runs, by FAB hash (fl.signer.pinning); neither given: any app.
    approved_apps: tuple[str, ...] = ()
    approved_apps_file: Path | None = None
    # Run the institution's trainer (fl.trainer) for the relay ClientApp (fl.relay_app, the
    # project's ClientApp); False only for an app whose ClientApp trains itself.
    trainer: bool = True
    trainer_wait: float = 120.0  # seconds the trainer may take to import torch and read the data


def check_data(spec: ClientSpec) -> DataCheck:
    """The institution's data file checked against the federation's declared schema.

    A node does not start on a file that fails: it would train on something other than
    what the federation agreed. Raises :class:`~fl.data.DataFileError` naming every
    problem (row and column), or ConfigError when the federation declares no schema.
    """
    if spec.config is None:
        raise ConfigError(f"{spec.participant}: the federation file is needed to check the data against its schema")
    check = fl_data.check_csv(spec.data, load_config(spec.config).schema)
    if not check.ok:
        raise fl_data.DataFileError(spec.data, check.problems)
    return check


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def signer_supernode_command(flower: list[str], socket_path: Path, approved_apps: tuple[str, ...] = (),
                             approved_apps_file: Path | None = None) -> list[str]:
    """A ``flower-supernode`` argv rewritten to run through :mod:`fl.signer.supernode`:
    the same arguments, minus the key file, authenticated by the signer at ``socket_path``,
    and running only the approved apps when any are given."""
    args = list(flower[1:])
    if "--auth-supernode-private-key" in args:
        index = args.index("--auth-supernode-private-key")
        del args[index:index + 2]
    pin = [word for h in approved_apps for word in ("--approve-app", h)]
    pin += ["--approved-apps", str(approved_apps_file.absolute())] if approved_apps_file is not None else []
    return [sys.executable, "-m", "fl.signer.supernode", "--signer-socket", str(socket_path.absolute()), *pin, *args]


def client_spec(cfg: FederationConfig, config: Path, participant: str, *, data: Path | None = None,
                key: Path | None = None, cert: Path | None = None, signer: Path | None = None,
                superlink: str | None = None, root_certificates: Path | None = None,
                runtime_port: int = 0, approved_apps: tuple[str, ...] = (),
                approved_apps_file: Path | None = None, trainer: bool = True) -> ClientSpec:
    """What ``client start`` runs, from the federation file and the command's options.

    Defaults: the participant's ``data`` in the file, its key and certificate in the
    workspace, ``[deployment]``'s SuperLink address and the coordinator's TLS CA.
    Approved app hashes are checked here (:class:`~fl.signer.pinning.PinError`).
    """
    approved = tuple(sorted(load_approved(approved_apps)))
    load_approved(file=approved_apps_file)
    entry = next((p for p in cfg.participants if p.id == participant), None)
    workspace = cfg.workspace
    data_path = data or (entry.data if entry else None)
    if data_path is None:
        raise ConfigError(f"--data is required ({participant} has no data path in {config})")
    if key is None and signer is None:
        if entry is None:
            raise ConfigError(f"--key or --signer is required ({participant} is not in {config})")
        key = workspace.key(entry.msp_id, participant)
    if cert is None and entry is not None and workspace.cert(entry.msp_id, participant).exists():
        cert = workspace.cert(entry.msp_id, participant)
    return ClientSpec(participant=participant, data=data_path, key=key if signer is None else None,
                      superlink=superlink or cfg.deployment.superlink_address,
                      root_certificates=root_certificates or workspace.coordinator.tls_ca,
                      workdir=cfg.workdir, config=config, runtime_port=runtime_port, cert=cert, signer=signer,
                      approved_apps=approved, approved_apps_file=approved_apps_file, trainer=trainer)


class ClientService:
    """Runs one SuperNode in the foreground until SIGTERM/SIGINT or until it exits."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.workspace = Workspace(spec.workdir)
        self.paths = self.workspace.client(spec.participant)
        self._stop = threading.Event()
        self._state: dict[str, Any] = {}
        self._signer: subprocess.Popen[bytes] | None = None
        self._trainer: subprocess.Popen[bytes] | None = None

    def _update(self, **fields: Any) -> None:
        self._state.update(fields)
        processes.write_json_atomic(self.paths.state_file, self._state)

    def request_stop(self, *_: Any) -> None:
        """Ask the service to stop (signal handler)."""
        self._stop.set()

    def _signer_command(self) -> list[str]:
        """``fedledger signer start`` for this institution, as a child of this service."""
        spec = self.spec
        if spec.key is None:
            raise ValueError("the node needs a key for its signer, or the socket of a running signer")
        if spec.config is None:
            raise ValueError("the node's signer needs the federation file (or run `fedledger signer start` "
                             "and give its socket)")
        examples = spec.max_num_examples or count_rows(spec.data)
        command = [sys.executable, "-m", "fl.cli_signer", "start", "-p", spec.participant,
                   "--config", str(spec.config.resolve()),
                   "--key", str(spec.key.resolve()), "--max-examples", str(examples)]
        return command + (["--cert", str(spec.cert.resolve())] if spec.cert is not None else [])

    def _start_signer(self) -> tuple[subprocess.Popen[bytes], Path]:
        """Start this institution's signer and wait until its socket serves."""
        signer_paths = self.workspace.signer(self.spec.participant)
        signer_paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        signer_paths.state_file.unlink(missing_ok=True)
        proc = processes.spawn(self._signer_command(), env=dict(os.environ), log_path=signer_paths.service_log)
        self._signer = proc
        self._update(signer_pid=proc.pid, children={**self._state.get("children", {}),
                                                    "signer": processes.tag(proc.pid)})
        deadline = time.monotonic() + self.spec.signer_wait
        while time.monotonic() < deadline:
            state = processes.read_json(signer_paths.state_file) or {}
            if state.get("pid") == proc.pid and state.get("status") == "running":
                return proc, signer_paths.socket
            if proc.poll() is not None or state.get("status") == "failed":
                why = state.get("error") or processes.tail(signer_paths.service_log, 3)
                raise ValueError(f"the signer did not start: {why}")
            time.sleep(0.1)
        raise ValueError(f"the signer did not serve within {self.spec.signer_wait:.0f} s")

    def _start_trainer(self, socket_path: Path) -> None:
        """Start the relay ClientApp's trainer (fl.trainer) and wait until its socket accepts."""
        command = [sys.executable, "-m", "fl.trainer", "--socket", str(socket_path.absolute()),
                   "--node-config", str(self.paths.node_config.resolve())]
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        log_path = self.paths.root / "trainer.log"
        proc = processes.spawn(command, env=env, log_path=log_path)
        self._trainer = proc
        self._update(trainer_pid=proc.pid, children={**self._state.get("children", {}),
                                                     "trainer": processes.tag(proc.pid)})
        deadline = time.monotonic() + self.spec.trainer_wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ValueError(f"the trainer did not start: {processes.tail(log_path, 3)}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(socket_path))
                except OSError:
                    time.sleep(0.2)
                    continue
            log.info("trainer_started", participant=self.spec.participant, pid=proc.pid)
            return
        raise ValueError(f"the trainer did not serve within {self.spec.trainer_wait:.0f} s")

    def _check_signer(self, socket_path: Path) -> None:
        """The signer answers, and signs with the certificate's key."""
        try:
            public = SignerClient(socket_path, timeout=10).public_key()
        except SignerError as exc:
            raise ValueError(str(exc)) from None
        if self.spec.cert is not None and pki.spki_pem(pki.load_certificate(self.spec.cert)) != pki.spki_pem(public):
            raise pki.CertificateError(f"{self.spec.cert}: the signer's key is not this certificate's key")

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        """Check the data, start (or check) the signer, write the node config; the
        SuperNode argv + env."""
        spec = self.spec
        check_data(spec)
        if not spec.root_certificates.exists():
            raise FileNotFoundError(f"{spec.root_certificates}: the SuperLink's TLS CA certificate does not exist")
        socket_path = spec.signer if spec.signer is not None else self._start_signer()[1]
        self._check_signer(socket_path)
        trainer_socket = self.paths.root / "trainer" / "trainer.sock"
        write_toml_config(self.paths.node_config, {
            "participant": spec.participant,
            "data": str(spec.data.resolve()),
            "config": str(spec.config.resolve()),
            "signer": str(socket_path.absolute()),
            **({"trainer": str(trainer_socket.absolute())} if spec.trainer else {}),
        })
        if spec.trainer:
            self._start_trainer(trainer_socket)
        port = spec.runtime_port or free_port()
        flower = supernode_command(superlink=spec.superlink, root_certificates=spec.root_certificates.resolve(),
                                   auth_key=Path("-"), node_config=self.paths.node_config.resolve(), port=port)
        env = service_env(self.paths.flwr_home)
        env.pop("SOFTHSM2_CONF", None)  # the node has no business with the institution's token
        if spec.approved_apps or spec.approved_apps_file is not None:
            approved = load_approved(spec.approved_apps, spec.approved_apps_file)
            self._update(approved_apps=sorted(approved), refused_apps=[])
        return signer_supernode_command(flower, socket_path, spec.approved_apps, spec.approved_apps_file), env

    def serve(self) -> int:
        """Start the signer and the SuperNode, supervise them, stop them; the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        processes.claim_pid(self.paths.pid_file)
        self._update(service="client", participant=self.spec.participant, status="starting",
                     pid=os.getpid(), superlink=self.spec.superlink, started_at=time.time(),
                     node_id=None, exit_code=None, children={})
        supernode: subprocess.Popen[bytes] | None = None
        code = 0
        try:
            command, env = self.prepare()
            log_offset = self.paths.supernode_log.stat().st_size if self.paths.supernode_log.exists() else 0
            supernode = processes.spawn(command, env=env, log_path=self.paths.supernode_log,
                                        cwd=self.paths.root)
            log.info("supernode_started", participant=self.spec.participant, pid=supernode.pid,
                     superlink=self.spec.superlink)
            self._update(supernode_pid=supernode.pid, children={**self._state.get("children", {}),
                                                                "supernode": processes.tag(supernode.pid)})
            code = self._supervise(supernode, log_offset)
        except (ValueError, OSError) as exc:
            log.error("client_failed", participant=self.spec.participant, error=str(exc))
            self._update(status="failed", error=str(exc))
            code = 1
        finally:
            if supernode is not None and supernode.poll() is None:
                result = processes.stop(supernode.pid, proc=supernode, timeout=15)
                log.info("supernode_stopped", participant=self.spec.participant, **result.to_json())
            if self._trainer is not None and self._trainer.poll() is None:
                result = processes.stop(self._trainer.pid, proc=self._trainer, timeout=15)
                log.info("trainer_stopped", participant=self.spec.participant, **result.to_json())
            if self._signer is not None and self._signer.poll() is None:
                result = processes.stop(self._signer.pid, proc=self._signer, timeout=15)
                log.info("signer_stopped", participant=self.spec.participant, **result.to_json())
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

    def _note_refusals(self, offset: int) -> int:
        """Record the node's new ``app_refused`` events in the state; the log offset read up to."""
        text = self._new_log(offset)
        complete = text.rfind("\n") + 1  # a line still being written is read next time
        known = self._state.get("refused_apps", [])
        seen = {(e.get("run_id"), e.get("fab_hash")) for e in known}
        new = [e for e in refusals(text[:complete]) if (e.get("run_id"), e.get("fab_hash")) not in seen]
        for event in new:
            log.error("app_refused", participant=self.spec.participant, **event)
        if new:
            self._update(refused_apps=[*known, *new])
        return offset + len(text[:complete].encode("utf-8"))

    def _supervise(self, supernode: subprocess.Popen[bytes], log_offset: int) -> int:
        node_id: int | None = None
        scanned = log_offset
        while not self._stop.wait(0.5):
            if "approved_apps" in self._state:
                scanned = self._note_refusals(scanned)
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
