"""``fedledger signer …``: the institution's signer — start, stop, status, journal, ledger.

Thin commands: parse → :mod:`fl.signer` → print (a line for people, ``--json`` for
machines). A failure prints ``error: <one line>`` on stderr and exits 1. ``start``
runs in the foreground (``--detach``: in the background, pid file and ``service.log``).

The federation file (``--config``) gives the federation id, the ledger, the
participant's organisation and the default key and certificate
(``<workdir>/pki/<msp>/<participant>.key`` / ``.crt``). ``check-ledger`` (also mounted
as ``fedledger audit mine``) compares the journal with the ledger.
"""

from __future__ import annotations

import json
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
from ledger.errors import LedgerError

__all__ = ["signer_app", "audit_mine", "settings_from_config"]

signer_app = typer.Typer(help="The institution's signer: holds the key, signs only what its policy allows.",
                         no_args_is_help=True)

ConfigOpt = typer.Option(Path("federation.toml"), "--config", envvar="FEDLEDGER_CONFIG",
                         help="Federation file (federation id, ledger, the participant's organisation).")
ParticipantOpt = typer.Option(..., "--participant", "-p", help="Participant id (this institution).")
WorkdirOpt = typer.Option(None, "--workdir", help="Where signers/<participant>/ goes (default: the federation's).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document.")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (ValueError, LedgerError, OSError) as exc:  # KeyFileError, ConfigError… are ValueErrors
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(text)


def _emit(as_json: bool, payload: dict[str, Any], human: Callable[[], str]) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) if as_json else human())


def _config(config: Path) -> FederationConfig:
    if not config.exists():
        raise ConfigError(f"{config}: federation file not found (give --config)")
    return load_config(config.resolve())


def _paths(config: Path, participant: str, workdir: Optional[Path]):  # type: ignore[no-untyped-def]
    from fl.signer.settings import SignerPaths

    return SignerPaths.of(workdir or _config(config).workdir, participant)


def _pin(value: Optional[str]) -> tuple[int, str] | None:
    if value is None:
        return None
    seq, sep, digest = value.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise ValueError(f"--pin {value!r} must be SEQ:HASH (as verify-journal printed it)")
    return int(seq), digest


def settings_from_config(cfg: FederationConfig, participant: str, *, key: Optional[Path] = None,
                         cert: Optional[Path] = None, pkcs11_module: Optional[Path] = None,
                         token_label: Optional[str] = None, key_label: Optional[str] = None,
                         pin_file: Optional[Path] = None, max_examples: Optional[int] = None,
                         data: Optional[Path] = None, workdir: Optional[Path] = None,
                         allowed_uids: frozenset[int] = frozenset()):  # type: ignore[no-untyped-def]
    """The signer's settings from the federation file and the command's options."""
    from fl.identities import member_credentials
    from fl.signer.settings import KeySource, SignerPaths, count_rows, ledger_credentials

    entry = next((p for p in cfg.participants if p.id == participant), None)
    msp = entry.msp_id if entry else None
    org_dir = cfg.workdir / "pki" / msp if msp else None
    if pkcs11_module is None:
        key = key or (org_dir / f"{participant}.key" if org_dir else None)
        if key is None:
            raise ConfigError("--key or --pkcs11-module is required (participant not in the federation file)")
    if cert is None and org_dir is not None and (org_dir / f"{participant}.crt").exists():
        cert = org_dir / f"{participant}.crt"
    source = KeySource(pem=key if pkcs11_module is None else None, pkcs11_module=pkcs11_module,
                       token_label=token_label, key_label=key_label or participant, pin_file=pin_file)
    if max_examples is None:
        data = data or (entry.data if entry else None)
        if data is None or not Path(data).exists():
            raise ConfigError("--max-examples is required (no data file to count the examples of)")
        max_examples = count_rows(Path(data))
    if max_examples < 1:
        raise ConfigError("the institution must declare at least one example (--max-examples)")
    network = (lambda: member_credentials(cfg, msp, participant)) if msp else None
    from fl.signer.settings import SignerSettings

    return SignerSettings(
        participant=participant, federation=cfg.id, key=source, max_num_examples=max_examples,
        ledger=cfg.ledger_config, credentials=ledger_credentials(cfg.ledger_config, msp, cert, network),
        paths=SignerPaths.of(workdir or cfg.workdir, participant), cert=cert, allowed_uids=allowed_uids)


@signer_app.command("start")
def signer_start(
    participant: str = ParticipantOpt,
    key: Optional[Path] = typer.Option(None, "--key", help="The institution's key file (PEM/OpenSSH, 0600)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="Its certificate: the key must match it."),
    pkcs11_module: Optional[Path] = typer.Option(None, "--pkcs11-module",
                                                 help="PKCS#11 library (e.g. libsofthsm2.so): key in a token."),
    token_label: Optional[str] = typer.Option(None, "--token-label", help="The token's label."),
    key_label: Optional[str] = typer.Option(None, "--key-label", help="The key's label (default: participant)."),
    pin_file: Optional[Path] = typer.Option(None, "--pin-file", help="File (0600) with the token's user PIN."),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", min=1,
                                               help="Most examples a round may declare (default: rows of --data)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The institution's CSV (to count its examples)."),
    allow_uid: list[int] = typer.Option([], "--allow-uid", help="Another uid the socket serves (the node's)."),
    workdir: Optional[Path] = WorkdirOpt, config: Path = ConfigOpt,
    detach: bool = typer.Option(False, "--detach", help="Run in the background (pid file, service.log)."),
    wait: float = typer.Option(30.0, "--wait", help="With --detach: seconds to wait for the socket."),
    as_json: bool = JsonOpt,
) -> None:
    """Start the signer: a 0600 Unix socket that signs manifests the policy allows."""
    from fl.runtime import configure_logging
    from fl.signer.runner import SignerProcess

    with _one_line_errors():
        settings = settings_from_config(
            _config(config), participant, key=key, cert=cert, pkcs11_module=pkcs11_module,
            token_label=token_label, key_label=key_label, pin_file=pin_file, max_examples=max_examples,
            data=data, workdir=workdir, allowed_uids=frozenset(allow_uid))
    paths = settings.paths
    if detach:
        words = [sys.executable, "-m", "fl.cli_signer", "start", "-p", participant,
                 "--config", str(config.resolve()), "--workdir", str(paths.root.parent.parent),
                 "--max-examples", str(settings.max_num_examples)]
        for flag, value in (("--key", settings.key.pem), ("--cert", settings.cert),
                            ("--pkcs11-module", settings.key.pkcs11_module),
                            ("--token-label", settings.key.token_label),
                            ("--key-label", settings.key.key_label if pkcs11_module else None),
                            ("--pin-file", settings.key.pin_file)):
            if value is not None:
                words += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
        for uid in allow_uid:
            words += ["--allow-uid", str(uid)]
        with _one_line_errors():
            pid, state = detach_signer(words, paths, wait)
        _emit(as_json, {"pid": pid, "log": str(paths.service_log), **state},
              lambda: f"signer {state.get('status')} pid {pid} socket {paths.socket}")
        if state.get("status") != "running":
            _fail(f"signer did not start: {state.get('error', 'see ' + str(paths.service_log))}")
        return
    configure_logging(json_logs=None)
    with _one_line_errors():
        code = SignerProcess(settings).serve()
    raise typer.Exit(code)


def detach_signer(argv: list[str], paths: Any, wait: float) -> tuple[int, dict[str, Any]]:
    """Start a signer in the background and wait until it serves (or has failed)."""
    running = processes.read_pid(paths.pid_file)
    if running is not None and processes.pid_alive(running):
        raise ValueError(f"a signer is already running with pid {running} ({paths.pid_file})")
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.state_file.unlink(missing_ok=True)
    proc = processes.spawn(argv, env=dict(os.environ), log_path=paths.service_log)
    deadline = time.monotonic() + wait
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = processes.read_json(paths.state_file) or {}
        if state.get("pid") == proc.pid and state.get("status") in ("running", "failed", "stopped"):
            return proc.pid, state
        if proc.poll() is not None:
            state = processes.read_json(paths.state_file) or {}
            state.setdefault("status", "failed")
            return proc.pid, state
        time.sleep(0.1)
    state.setdefault("status", "starting")
    return proc.pid, state


@signer_app.command("stop")
def signer_stop(participant: str = ParticipantOpt, workdir: Optional[Path] = WorkdirOpt, config: Path = ConfigOpt,
                timeout: float = typer.Option(15.0, "--timeout"), as_json: bool = JsonOpt) -> None:
    """Stop a detached signer (SIGTERM to the pid in its pid file)."""
    with _one_line_errors():
        paths = _paths(config, participant, workdir)
        pid = processes.read_pid(paths.pid_file)
        if pid is None or not processes.pid_alive(pid):
            result: dict[str, Any] = {"pid": pid, "was_running": False}
        else:
            result = processes.stop(pid, timeout=timeout).to_json()
        paths.pid_file.unlink(missing_ok=True)
    _emit(as_json, result, lambda: "signer stopped" if result["was_running"] else "signer was not running")


@signer_app.command("status")
def signer_status(participant: str = ParticipantOpt, workdir: Optional[Path] = WorkdirOpt, config: Path = ConfigOpt,
                  as_json: bool = JsonOpt) -> None:
    """The signer's state: running or not, socket, last signed round, journal head."""
    from fl.signer.client import SignerClient, SignerError

    with _one_line_errors():
        paths = _paths(config, participant, workdir)
        state = processes.read_json(paths.state_file) or {"status": "never started"}
        pid = processes.read_pid(paths.pid_file)
        state["alive"] = pid is not None and processes.pid_alive(pid)
        if state["alive"]:
            try:
                state["live"] = SignerClient(paths.socket, timeout=5).status()
            except SignerError as exc:
                state["live_error"] = str(exc)
        elif state.get("status") in ("starting", "running"):
            state["status"] = "dead"
    _emit(as_json, state, lambda: f"signer {state['status']} (alive: {state['alive']}), socket "
                                  f"{state.get('socket', '-')}, last signed round "
                                  f"{state.get('live', {}).get('last_signed_round', '-')}")


@signer_app.command("verify-journal")
def verify_journal_cmd(
    participant: str = ParticipantOpt, workdir: Optional[Path] = WorkdirOpt, config: Path = ConfigOpt,
    journal: Optional[Path] = typer.Option(None, "--journal", help="A journal file (default: the signer's)."),
    pin: Optional[str] = typer.Option(None, "--pin", help="SEQ:HASH printed by an earlier verification."),
    as_json: bool = JsonOpt,
) -> None:
    """Re-check the journal's hash chain (an edited, deleted or moved line fails)."""
    from fl.signer.journal import verify_journal

    with _one_line_errors():
        path = journal or _paths(config, participant, workdir).journal
        report = verify_journal(path, _pin(pin))
    head = report.head
    _emit(as_json, {"journal": str(path), **report.to_json()},
          lambda: (f"OK {report.entries} entries, head {head[0]}:{head[1]} (pin it: --pin {head[0]}:{head[1]})"
                   if report.ok and head else "OK empty journal" if report.ok
                   else "FAILED " + "; ".join(report.problems)))
    if not report.ok:
        raise typer.Exit(1)


@signer_app.command("check-ledger")
def audit_mine(
    participant: str = ParticipantOpt, workdir: Optional[Path] = WorkdirOpt, config: Path = ConfigOpt,
    journal: Optional[Path] = typer.Option(None, "--journal", help="A journal file (default: the signer's)."),
    pin: Optional[str] = typer.Option(None, "--pin", help="SEQ:HASH printed by an earlier verification."),
    as_json: bool = JsonOpt,
) -> None:
    """Compare the signer's journal with the ledger: all signed replies there, nothing else."""
    from fl.identities import member_credentials
    from fl.signer.ledger_view import LedgerView
    from fl.signer.reconcile import reconcile
    from fl.signer.settings import ledger_credentials

    with _one_line_errors():
        cfg = _config(config)
        entry = next((p for p in cfg.participants if p.id == participant), None)
        if entry is None:
            raise ConfigError(f"{participant} is not a participant of the federation file")
        cert = cfg.workdir / "pki" / entry.msp_id / f"{participant}.crt"
        view = LedgerView(cfg.ledger_config, ledger_credentials(
            cfg.ledger_config, entry.msp_id, cert if cert.exists() else None,
            lambda: member_credentials(cfg, entry.msp_id, participant)))
        path = journal or _paths(config, participant, workdir).journal
        report = reconcile(path, view.rounds(cfg.id), participant, cfg.id, _pin(pin))

    def human() -> str:
        verdict = "OK" if report.ok else "FAILED"
        lines = [f"{verdict} {participant}: {len(report.signed)} signed replies on the ledger, "
                 f"{len(report.pending)} pending, {report.refused} refused requests"]
        lines += [f"  round {s['round']}: {s['status']}" + (f" ({s['reason']})" if s["reason"] else "")
                  for s in report.signed]
        lines += [f"  round {f['round']}: a reply in this name that was not signed here, {f['status']} "
                  f"({f['reason']})" for f in report.stopped_forgeries]
        lines += [f"  - {p}" for p in report.problems]
        return "\n".join(lines)

    _emit(as_json, report.to_json(), human)
    if not report.ok:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover - the detached signer and the node's signer run this
    signer_app()
