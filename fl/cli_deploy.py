"""``fedledger coordinator …`` and ``fedledger client …``: the deployment-mode services.

``start`` runs a service in the foreground (JSON logs on stderr when not on a terminal);
``start --detach`` runs it in the background — pid file, ``service.log``, ``state.json`` —
and returns once it is up (or prints why not). ``stop`` sends SIGTERM to the pid in the
pid file and waits for the whole process tree; ``status`` reads the state file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from fl.config import ConfigError, FederationConfig, load_config
from ledger import processes
from fl.deploy.client import EXIT_REFUSED, ClientPaths, ClientService, ClientSpec
from fl.deploy.coordinator import CoordinatorPaths, CoordinatorService
from fl.deploy.settings import load_deployment
from fl.identities import member_credentials
from fl.runtime import configure_logging
from ledger.errors import LedgerError

__all__ = ["coordinator_app", "client_app"]

coordinator_app = typer.Typer(help="The coordinator: SuperLink with TLS + node auth, and the audited run.",
                              no_args_is_help=True)
client_app = typer.Typer(help="An institution's node: SuperNode with TLS, authenticated by its key.",
                         no_args_is_help=True)

ConfigOpt = typer.Option(Path("federation.toml"), "--config", envvar="FEDLEDGER_CONFIG",
                         help="Federation file (federation and optional deployment tables).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document.")
DetachOpt = typer.Option(False, "--detach", help="Run in the background (pid file, service.log).")
WaitOpt = typer.Option(120.0, "--wait", help="With --detach: seconds to wait for the service to be up.")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (ValueError, LedgerError, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(text)


def _emit(as_json: bool, payload: dict[str, Any], human: Callable[[], str]) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True) if as_json else human())


def _service_logging() -> None:
    configure_logging(json_logs=None, level=logging.INFO)


def _cli_argv(*words: str) -> list[str]:
    """Argv that re-runs this CLI with the same interpreter (for --detach)."""
    return [sys.executable, "-m", "fl.cli", *words]


def _detach(argv: list[str], pid_file: Path, state_file: Path, log_file: Path, wait: float,
            ready: Callable[[dict[str, Any]], bool]) -> tuple[int, dict[str, Any]]:
    """Start ``argv`` in the background and wait until ``ready(state)`` or it ends."""
    running = processes.read_pid(pid_file)
    if running is not None and processes.pid_alive(running):
        raise ValueError(f"already running with pid {running} ({pid_file})")
    state_file.unlink(missing_ok=True)
    proc = processes.spawn(argv, env=dict(os.environ), log_path=log_file,
                           pid_path=pid_file)
    deadline = time.monotonic() + wait
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = processes.read_json(state_file) or {}
        if state.get("pid") == proc.pid and ready(state):
            return proc.pid, state
        if proc.poll() is not None:
            state = processes.read_json(state_file) or {}
            state.setdefault("status", "failed")
            state["exit_code"] = proc.returncode
            return proc.pid, state
        time.sleep(0.25)
    state["status"] = state.get("status", "starting")
    return proc.pid, state


def _stop(pid_file: Path, state_file: Path, timeout: float) -> dict[str, Any]:
    # Only a pid file whose process is still the one that wrote it is signalled: never
    # a pid from state.json or one the kernel has since given to another process.
    pid = processes.read_pid(pid_file)
    if pid is None or not processes.pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        result: dict[str, Any] = {"pid": pid, "was_running": False}
    else:
        result = processes.stop(pid, timeout=timeout).to_json()
        pid_file.unlink(missing_ok=True)
    # A service killed hard leaves its Flower children running in their own sessions:
    # stop those it recorded, if each is still the very process it started.
    state = processes.read_json(state_file) or {}
    orphans = {}
    for name, tag in (state.get("children") or {}).items():
        child = processes.tagged_pid(tag)
        if child is not None:
            orphans[name] = processes.stop(child, timeout=timeout).to_json()
    if orphans:
        result["orphans_stopped"] = orphans
    return result


def _status(pid_file: Path, state_file: Path) -> dict[str, Any]:
    state = processes.read_json(state_file) or {"status": "never started"}
    pid = processes.read_pid(pid_file)
    state["alive"] = pid is not None and processes.pid_alive(pid)
    if not state["alive"] and state.get("status") in ("starting", "running"):
        state["status"] = "dead"
    return state


# --- coordinator ----------------------------------------------------------------------
def _coordinator_context(config: Path, msp_id: Optional[str], identity_cert: Optional[Path]):  # type: ignore[no-untyped-def]
    cfg = load_config(config.resolve())
    msp = msp_id or cfg.coordinator_msp
    return cfg, member_credentials(cfg, msp, "coordinator", cert=identity_cert)


@coordinator_app.command("init")
def coordinator_init(
    config: Path = ConfigOpt,
    msp_id: Optional[str] = typer.Option(None, "--msp-id", help="Coordinator MSP (default: from the file)."),
    identity_cert: Optional[Path] = typer.Option(None, "--identity-cert", help="Coordinator certificate."),
    as_json: bool = JsonOpt,
) -> None:
    """Create the federation on the ledger (InitFederation), as the coordinator."""
    from fl.deploy.federation import init_federation

    with _one_line_errors():
        cfg, identity = _coordinator_context(config, msp_id, identity_cert)
        receipt, policy = init_federation(cfg, identity)
    payload = {"federation": cfg.id, "ledger": str(cfg.ledger_path), "policy": policy.model_dump(mode="json"),
               **receipt.model_dump()}
    _emit(as_json, payload, lambda: f"federation {cfg.id} created tx {receipt.tx_id} block {receipt.block_number}")


@coordinator_app.command("start")
def coordinator_start(
    config: Path = ConfigOpt,
    host: Optional[str] = typer.Option(None, "--host", help="SuperLink bind host."),
    port: Optional[int] = typer.Option(None, "--port", help="SuperLink port (Fleet, Control, Runtime)."),
    address: Optional[str] = typer.Option(None, "--address", help="Address institutions dial (host:port)."),
    app_dir: Optional[Path] = typer.Option(None, "--app", help="Flower app directory (default: this project)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Total rounds (default: from the file)."),
    no_run: bool = typer.Option(False, "--no-run", help="Only serve the SuperLink and keep node keys in sync."),
    exit_after_run: bool = typer.Option(False, "--exit-after-run", help="Stop once the run has finished."),
    msp_id: Optional[str] = typer.Option(None, "--msp-id", help="Coordinator MSP (default: from the file)."),
    identity_cert: Optional[Path] = typer.Option(None, "--identity-cert", help="Coordinator certificate."),
    detach: bool = DetachOpt, wait: float = WaitOpt, as_json: bool = JsonOpt,
) -> None:
    """Start the SuperLink (TLS, node auth), register admitted keys, and run the federation."""
    with _one_line_errors():
        cfg, identity = _coordinator_context(config, msp_id, identity_cert)
        deploy = load_deployment(config, host=host, port=port, address=address, app=app_dir)
    paths = CoordinatorPaths.of(cfg)
    if detach:
        words = ["coordinator", "start", "--config", str(config.resolve())]
        for flag, value in (("--host", host), ("--port", port), ("--address", address), ("--app", app_dir),
                            ("--rounds", rounds), ("--msp-id", msp_id), ("--identity-cert", identity_cert)):
            if value is not None:
                words += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
        words += ["--no-run"] if no_run else []
        words += ["--exit-after-run"] if exit_after_run else []
        with _one_line_errors():
            pid, state = _detach(_cli_argv(*words), paths.pid_file, paths.state_file, paths.service_log, wait,
                                 lambda s: s.get("status") in ("running", "failed", "stopped"))
        payload = {"pid": pid, "log": str(paths.service_log), **state}
        _emit(as_json, payload, lambda: f"coordinator {state.get('status')} pid {pid} at "
                                        f"{state.get('address')} (log {paths.service_log})")
        if state.get("status") != "running":
            _fail(f"coordinator did not start: {state.get('error', 'see ' + str(paths.service_log))}")
        return
    _service_logging()
    service = CoordinatorService(cfg, config, deploy, identity, rounds=rounds, start_run=not no_run,
                                 exit_after_run=exit_after_run)
    with _one_line_errors():  # e.g. already running: one line, not a traceback
        code = service.serve()
    raise typer.Exit(code)


@coordinator_app.command("stop")
def coordinator_stop(config: Path = ConfigOpt, timeout: float = typer.Option(30.0, "--timeout"),
                     as_json: bool = JsonOpt) -> None:
    """Stop a detached coordinator (SIGTERM by pid, then its whole process tree)."""
    with _one_line_errors():
        paths = CoordinatorPaths.of(load_config(config.resolve()))
        result = _stop(paths.pid_file, paths.state_file, timeout)
    _emit(as_json, result, lambda: "coordinator stopped" if result["was_running"] else "coordinator was not running")


@coordinator_app.command("status")
def coordinator_status(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The coordinator's state: SuperLink, node ids per participant, run status."""
    with _one_line_errors():
        paths = CoordinatorPaths.of(load_config(config.resolve()))
        state = _status(paths.pid_file, paths.state_file)
    _emit(as_json, state, lambda: f"coordinator {state['status']} (alive: {state['alive']}), run "
                                  f"{state.get('run_status', '-')}, nodes {state.get('nodes', {})}")


# --- client ---------------------------------------------------------------------------
def _client_spec(cfg: FederationConfig | None, participant: str, data: Optional[Path], key: Optional[Path],
                 cert: Optional[Path], superlink: Optional[str], root_certificates: Optional[Path],
                 workdir: Optional[Path], runtime_port: int, config: Path,
                 signer: Optional[Path] = None) -> ClientSpec:
    entry = next((p for p in cfg.participants if p.id == participant), None) if cfg else None
    base = workdir or (cfg.workdir if cfg else Path("."))
    org_dir = cfg.workdir / "pki" / entry.msp_id if cfg and entry else None
    data_path = data or (entry.data if entry else None)
    if data_path is None:
        raise ConfigError("--data is required (no data path for this participant in the federation file)")
    key_path = key or (org_dir / f"{participant}.key" if org_dir and signer is None else None)
    if key_path is None and signer is None:
        raise ConfigError("--key or --signer is required (participant not in the federation file)")
    if cert is None and org_dir is not None and (org_dir / f"{participant}.crt").exists():
        cert = org_dir / f"{participant}.crt"
    deploy = load_deployment(config if config.exists() else None, address=superlink)
    roots = root_certificates or (CoordinatorPaths.of(cfg).tls_dir / "ca.crt" if cfg else None)
    if roots is None:
        raise ConfigError("--root-certificates is required (the SuperLink's TLS CA certificate)")
    return ClientSpec(participant=participant, data=data_path, key=key_path, superlink=deploy.superlink_address,
                      root_certificates=roots, workdir=base, runtime_port=runtime_port, cert=cert,
                      signer=signer, config=config.resolve() if config.exists() else None)


@client_app.command("start")
def client_start(
    participant: str = typer.Option(..., "--participant", "-p", help="Participant id."),
    data: Optional[Path] = typer.Option(None, "--data", help="The institution's CSV file."),
    key: Optional[Path] = typer.Option(None, "--key", help="Institution key (PEM or OpenSSH, mode 0600), "
                                       "loaded by a signer the node starts."),
    signer: Optional[Path] = typer.Option(None, "--signer", help="Socket of a running `fedledger signer` "
                                          "(the node then never sees a key)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="Its certificate, to check the key matches."),
    superlink: Optional[str] = typer.Option(None, "--superlink", help="Coordinator address host:port."),
    root_certificates: Optional[Path] = typer.Option(None, "--root-certificates",
                                                     help="The SuperLink's TLS CA certificate."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where clients/<participant>/ goes."),
    runtime_port: int = typer.Option(0, "--runtime-port", help="Local port for the ClientApp runtime (0: free)."),
    config: Path = ConfigOpt, detach: bool = DetachOpt,
    wait: float = typer.Option(30.0, "--wait", help="With --detach: seconds to wait for the SuperLink to "
                               "accept the node (it keeps retrying in the background afterwards)."),
    as_json: bool = JsonOpt,
) -> None:
    """Start this institution's SuperNode (TLS; authenticated by the institution key)."""
    with _one_line_errors():
        cfg = load_config(config.resolve()) if config.exists() else None
        spec = _client_spec(cfg, participant, data, key, cert, superlink, root_certificates, workdir,
                            runtime_port, config, signer)
        paths = ClientPaths.of(spec.workdir, participant)
    if detach:
        words = ["client", "start", "--participant", participant, "--data", str(spec.data.resolve()),
                 *(["--key", str(spec.key.resolve())] if spec.key else []),
                 *(["--signer", str(spec.signer.resolve())] if spec.signer else []),
                 "--superlink", spec.superlink,
                 "--root-certificates", str(spec.root_certificates.resolve()),
                 "--workdir", str(spec.workdir.resolve()), "--runtime-port", str(runtime_port)]
        words += ["--cert", str(spec.cert.resolve())] if spec.cert else []
        if config.exists():
            words += ["--config", str(config.resolve())]
        with _one_line_errors():
            pid, state = _detach(_cli_argv(*words), paths.pid_file, paths.state_file, paths.service_log, wait,
                                 lambda s: s.get("status") not in (None, "starting"))
        payload = {"pid": pid, "log": str(paths.service_log), **state}
        _emit(as_json, payload, lambda: f"{participant}: {state.get('status')} pid {pid} node "
                                        f"{state.get('node_id')} (log {paths.supernode_log})")
        status = state.get("status")
        if status == "refused":
            _fail(f"{participant}: the SuperLink refused this node's key (not admitted or revoked)", EXIT_REFUSED)
        if status not in ("running", "starting"):  # starting: still dialling the SuperLink, keeps retrying
            _fail(f"{participant}: node {status}: {state.get('error', 'see ' + str(paths.supernode_log))}")
        return
    _service_logging()
    with _one_line_errors():
        code = ClientService(spec).serve()
    raise typer.Exit(code)


def _client_paths(config: Path, participant: str, workdir: Optional[Path]) -> ClientPaths:
    if workdir is None:
        workdir = load_config(config.resolve()).workdir if config.exists() else Path(".")
    return ClientPaths.of(workdir, participant)


@client_app.command("stop")
def client_stop(
    participant: str = typer.Option(..., "--participant", "-p"),
    workdir: Optional[Path] = typer.Option(None, "--workdir"),
    config: Path = ConfigOpt, timeout: float = typer.Option(30.0, "--timeout"), as_json: bool = JsonOpt,
) -> None:
    """Stop a detached institution node (SIGTERM by pid, then its process tree)."""
    with _one_line_errors():
        paths = _client_paths(config, participant, workdir)
        result = _stop(paths.pid_file, paths.state_file, timeout)
    _emit(as_json, result, lambda: f"{participant} stopped" if result["was_running"] else f"{participant} was not running")


@client_app.command("status")
def client_status(
    participant: str = typer.Option(..., "--participant", "-p"),
    workdir: Optional[Path] = typer.Option(None, "--workdir"),
    config: Path = ConfigOpt, as_json: bool = JsonOpt,
) -> None:
    """An institution node's state: connected node id, or why it stopped."""
    with _one_line_errors():
        paths = _client_paths(config, participant, workdir)
        state = _status(paths.pid_file, paths.state_file)
    _emit(as_json, state, lambda: f"{participant}: {state['status']} (alive: {state['alive']}) node {state.get('node_id')}")
