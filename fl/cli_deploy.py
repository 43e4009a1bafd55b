"""``fedledger coordinator …`` and ``fedledger client …``: the deployment-mode services.

``start`` runs a service in the foreground (JSON logs on stderr when not on a terminal);
``start --detach`` runs it in the background — pid file, ``service.log``, ``state.json``
(:mod:`fl.deploy.services`) — and returns once it is up (or prints why not). ``stop``
sends SIGTERM to the pid in the pid file and waits for the whole process tree;
``status`` reads the state file (exit 3 when the service is not running).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer

from fl.cli_output import ConfigOpt, ExitCode, JsonOpt, ParticipantOpt, emit, fail, failures, load
from fl.config import override
from fl.deploy.services import cli_argv, detach as detach_service, service_status, stop_service
from fl.runtime import configure_logging

__all__ = ["coordinator_app", "client_app"]

coordinator_app = typer.Typer(help="The coordinator: SuperLink with TLS + node auth, and the audited run.",
                              no_args_is_help=True)
client_app = typer.Typer(help="An institution's node: SuperNode with TLS, authenticated by its key.",
                         no_args_is_help=True)

DetachOpt: Any = typer.Option(False, "--detach", help="Run in the background (pid file, service.log).")
WaitOpt: Any = typer.Option(120.0, "--wait", help="With --detach: seconds to wait for the service to be up.")
TimeoutOpt: Any = typer.Option(30.0, "--timeout", help="Seconds to wait after SIGTERM before SIGKILL.")
MspOpt: Any = typer.Option(None, "--msp-id", help="Coordinator MSP (default: coordinator_msp of the file).")
IdentityCertOpt: Any = typer.Option(None, "--identity-cert",
                                    help="Coordinator certificate (default: the workspace's or the network's).")


def _service_logging() -> None:
    configure_logging(json_logs=None, level=logging.INFO)


def _exit_unless_running(state: dict[str, Any]) -> None:
    if not state["alive"]:
        raise typer.Exit(ExitCode.UNAVAILABLE)


# --- coordinator ----------------------------------------------------------------------
@coordinator_app.command("init")
def coordinator_init(
    config: Path = ConfigOpt, msp_id: Optional[str] = MspOpt, identity_cert: Optional[Path] = IdentityCertOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create the federation on the ledger (InitFederation), as the coordinator."""
    from fl.deploy.federation import init_federation
    from fl.onboarding import coordinator_credentials

    with failures(as_json):
        cfg = load(config)
        receipt, policy = init_federation(cfg, coordinator_credentials(cfg, msp_id, identity_cert))
    payload = {"federation": cfg.id, "ledger": str(cfg.ledger_path), "policy": policy.model_dump(mode="json"),
               **receipt.model_dump()}
    emit(as_json, payload, lambda: f"federation {cfg.id} created tx {receipt.tx_id} block {receipt.block_number}")


@coordinator_app.command("start")
def coordinator_start(
    config: Path = ConfigOpt,
    host: Optional[str] = typer.Option(None, "--host", help="SuperLink bind host (default: [deployment] host)."),
    port: Optional[int] = typer.Option(None, "--port", help="SuperLink port for Fleet, Control and Runtime "
                                       "(default: [deployment] port)."),
    address: Optional[str] = typer.Option(None, "--address", help="Address institutions dial, host:port "
                                          "(default: [deployment] address, else host:port)."),
    app_dir: Optional[Path] = typer.Option(None, "--app", help="Flower app directory (default: this project)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Total rounds (default: rounds of the file)."),
    no_run: bool = typer.Option(False, "--no-run", help="Only serve the SuperLink and keep node keys in sync."),
    exit_after_run: bool = typer.Option(False, "--exit-after-run", help="Stop once the run has finished."),
    msp_id: Optional[str] = MspOpt, identity_cert: Optional[Path] = IdentityCertOpt,
    detach: bool = DetachOpt, wait: float = WaitOpt, as_json: bool = JsonOpt,
) -> None:
    """Start the SuperLink (TLS, node auth), register admitted keys, and run the federation."""
    from fl.deploy.coordinator import CoordinatorService
    from fl.onboarding import coordinator_credentials

    with failures(as_json):
        cfg = override(load(config), "command line", rounds=rounds,
                       deployment={"host": host, "port": port, "address": address,
                                   "app": app_dir.resolve() if app_dir else None})
        identity = coordinator_credentials(cfg, msp_id, identity_cert)
    files = cfg.workspace.coordinator
    if detach:
        words = ["coordinator", "start", "--config", str(config.resolve())]
        for flag, value in (("--host", host), ("--port", port), ("--address", address), ("--app", app_dir),
                            ("--rounds", rounds), ("--msp-id", msp_id), ("--identity-cert", identity_cert)):
            if value is not None:
                words += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
        words += ["--no-run"] if no_run else []
        words += ["--exit-after-run"] if exit_after_run else []
        with failures(as_json):
            pid, state = detach_service(cli_argv("fl.cli", *words), files, wait=wait,
                                        ready=lambda s: s.get("status") in ("running", "failed", "stopped"))
        if state.get("status") != "running":
            fail(f"coordinator did not start: {state.get('error', 'see ' + str(files.service_log))}",
                 as_json=as_json)
        emit(as_json, {"pid": pid, "log": str(files.service_log), **state},
             lambda: f"coordinator {state.get('status')} pid {pid} at {state.get('address')} "
                     f"(log {files.service_log})")
        return
    _service_logging()
    service = CoordinatorService(cfg, config, identity, start_run=not no_run, exit_after_run=exit_after_run)
    with failures(as_json):  # e.g. already running: one line, not a traceback
        code = service.serve()
    raise typer.Exit(code)


@coordinator_app.command("stop")
def coordinator_stop(config: Path = ConfigOpt, timeout: float = TimeoutOpt, as_json: bool = JsonOpt) -> None:
    """Stop a detached coordinator (SIGTERM by pid, then its whole process tree)."""
    with failures(as_json):
        result = stop_service(load(config).workspace.coordinator, timeout)
    emit(as_json, result, lambda: "coordinator stopped" if result["was_running"] else "coordinator was not running")


@coordinator_app.command("status")
def coordinator_status(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The coordinator's state: SuperLink, node ids per participant, run status (exit 3 unless running)."""
    with failures(as_json):
        state = service_status(load(config).workspace.coordinator)
    emit(as_json, state, lambda: f"coordinator {state['status']} (alive: {state['alive']}), run "
                                 f"{state.get('run_status', '-')}, nodes {state.get('nodes', {})}")
    _exit_unless_running(state)


# --- client ---------------------------------------------------------------------------
@client_app.command("start")
def client_start(
    participant: str = ParticipantOpt,
    data: Optional[Path] = typer.Option(None, "--data", help="The institution's CSV file "
                                        "(default: the participant's data in the file)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Institution key (PEM or OpenSSH, mode 0600), "
                                       "loaded by a signer the node starts (default: the workspace's)."),
    signer: Optional[Path] = typer.Option(None, "--signer", help="Socket of a running `fedledger signer` "
                                          "(the node then never sees a key)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="Its certificate, to check the key matches."),
    superlink: Optional[str] = typer.Option(None, "--superlink", help="Coordinator address host:port "
                                            "(default: [deployment] of the file)."),
    root_certificates: Optional[Path] = typer.Option(None, "--root-certificates",
                                                     help="The SuperLink's TLS CA certificate "
                                                          "(default: the coordinator's in the workspace)."),
    runtime_port: int = typer.Option(0, "--runtime-port", help="Local port for the ClientApp runtime (0: free)."),
    approve_app: Optional[list[str]] = typer.Option(None, "--approve-app", help="Run only ClientApps whose FAB "
                                                    "hash (SHA-256, `client app-hash DIR`) is approved; repeatable."),
    approved_apps: Optional[Path] = typer.Option(None, "--approved-apps", help="File of approved FAB hashes, "
                                                 "one a line (# comments)."),
    trainer: bool = typer.Option(True, "--trainer/--no-trainer", help="Run the institution's warm trainer, "
                                 "which the relay ClientApp (fl.relay_app, the project's default) forwards "
                                 "train/evaluate to; --no-trainer only for an app whose ClientApp trains itself."),
    config: Path = ConfigOpt, detach: bool = DetachOpt,
    wait: float = typer.Option(30.0, "--wait", help="With --detach: seconds to wait for the SuperLink to "
                               "accept the node (it keeps retrying in the background afterwards)."),
    as_json: bool = JsonOpt,
) -> None:
    """Start this institution's SuperNode (TLS; authenticated by the institution key)."""
    from fl.deploy.client import ClientService, check_data, client_spec

    with failures(as_json):
        cfg = load(config)
        spec = client_spec(cfg, config.resolve(), participant, data=data, key=key, cert=cert, signer=signer,
                           superlink=superlink, root_certificates=root_certificates, runtime_port=runtime_port,
                           approved_apps=tuple(approve_app or ()), approved_apps_file=approved_apps,
                           trainer=trainer)
        check_data(spec)  # refused here, before anything starts, with every problem named
    files = cfg.workspace.client(participant)
    if detach:
        words = ["client", "start", "--participant", participant, "--config", str(config.resolve()),
                 "--data", str(spec.data.resolve()), "--superlink", spec.superlink,
                 "--root-certificates", str(spec.root_certificates.resolve()), "--runtime-port", str(runtime_port)]
        for flag, value in (("--key", spec.key), ("--signer", spec.signer), ("--cert", spec.cert),
                            ("--approved-apps", spec.approved_apps_file)):
            if value is not None:
                words += [flag, str(value.resolve())]
        words += [word for digest in spec.approved_apps for word in ("--approve-app", digest)]
        words += ["--trainer"] if trainer else ["--no-trainer"]
        with failures(as_json):
            pid, state = detach_service(cli_argv("fl.cli", *words), files, wait=wait,
                                        ready=lambda s: s.get("status") not in (None, "starting"))
        status = state.get("status")
        if status == "refused":
            fail(f"{participant}: the SuperLink refused this node's key (not admitted or revoked)",
                 ExitCode.FAILED, as_json)
        if status not in ("running", "starting"):  # starting: still dialling the SuperLink, keeps retrying
            fail(f"{participant}: node {status}: {state.get('error', 'see ' + str(files.supernode_log))}",
                 as_json=as_json)
        emit(as_json, {"pid": pid, "log": str(files.service_log), **state},
             lambda: f"{participant}: {status} pid {pid} node {state.get('node_id')} (log {files.supernode_log})")
        return
    _service_logging()
    with failures(as_json):
        code = ClientService(spec).serve()
    raise typer.Exit(code)


@client_app.command("app-hash")
def client_app_hash(
    app_dir: Optional[Path] = typer.Argument(None, help="The Flower app directory whose source the institution "
                                             "reviewed (default: [deployment] app of the file)."),
    config: Path = ConfigOpt, as_json: bool = JsonOpt,
) -> None:
    """The FAB hash of a Flower app, as a run of it carries it: what `client start --approve-app` takes."""
    from fl.signer.pinning import app_hash

    with failures(as_json):
        directory = app_dir if app_dir is not None else load(config).deployment.app_dir
        digest = app_hash(directory)
    emit(as_json, {"app": str(directory.resolve()), "fab_hash": digest}, lambda: digest)


@client_app.command("stop")
def client_stop(participant: str = ParticipantOpt, config: Path = ConfigOpt, timeout: float = TimeoutOpt,
                as_json: bool = JsonOpt) -> None:
    """Stop a detached institution node (SIGTERM by pid, then its process tree)."""
    with failures(as_json):
        result = stop_service(load(config).workspace.client(participant), timeout)
    emit(as_json, result, lambda: f"{participant} stopped" if result["was_running"] else f"{participant} was not running")


@client_app.command("status")
def client_status(participant: str = ParticipantOpt, config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """An institution node's state: connected node id, or why it stopped (exit 3 unless running)."""
    with failures(as_json):
        state = service_status(load(config).workspace.client(participant))
    emit(as_json, state, lambda: f"{participant}: {state['status']} (alive: {state['alive']}) node {state.get('node_id')}")
    _exit_unless_running(state)
