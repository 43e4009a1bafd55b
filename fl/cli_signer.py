"""``fedledger signer …``: the institution's signer — start, stop, status, journal, ledger.

Thin commands: parse → :mod:`fl.deploy.signer` / :mod:`fl.signer` → print (see
:mod:`fl.cli_output` for the convention). ``start`` runs in the foreground
(``--detach``: in the background, pid file and ``service.log``).

The federation file (``--config``) gives the federation id, the ledger, the
participant's organisation and the default key and certificate in the workspace.
``check-ledger`` (also mounted as ``fedledger audit mine``) compares the journal — what
the institution signed and the coordinator's signed receipts — with the ledger, one line
per signed reply: what the ledger says, what the receipt says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fl.cli_output import ConfigOpt, ExitCode, JsonOpt, ParticipantOpt, emit, fail, failures, load

__all__ = ["signer_app", "audit_mine"]

signer_app = typer.Typer(help="The institution's signer: holds the key, signs only what its policy allows.",
                         no_args_is_help=True)

JournalOpt: Any = typer.Option(None, "--journal", help="A journal file (default: the signer's in the workspace).")
PinOpt: Any = typer.Option(None, "--pin", help="SEQ:HASH printed by an earlier verification: the journal "
                                              "must still contain that entry unchanged.")


@signer_app.command("start")
def signer_start(
    participant: str = ParticipantOpt,
    key: Optional[Path] = typer.Option(None, "--key", help="The institution's key file (PEM/OpenSSH, 0600); "
                                       "default: the workspace's."),
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
    config: Path = ConfigOpt,
    detach: bool = typer.Option(False, "--detach", help="Run in the background (pid file, service.log)."),
    wait: float = typer.Option(30.0, "--wait", help="With --detach: seconds to wait for the socket."),
    as_json: bool = JsonOpt,
) -> None:
    """Start the signer: a 0600 Unix socket that signs manifests the policy allows."""
    from fl.deploy.services import cli_argv, detach as detach_service
    from fl.deploy.signer import signer_settings
    from fl.runtime import configure_logging
    from fl.signer.runner import SignerProcess

    with failures(as_json):
        settings = signer_settings(
            load(config), participant, key=key, cert=cert, pkcs11_module=pkcs11_module,
            token_label=token_label, key_label=key_label, pin_file=pin_file, max_examples=max_examples,
            data=data, allowed_uids=frozenset(allow_uid))
    paths = settings.paths
    if detach:
        words = ["start", "-p", participant, "--config", str(config.resolve()),
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
        with failures(as_json):
            pid, state = detach_service(cli_argv("fl.cli_signer", *words), paths, wait=wait, dir_mode=0o700,
                                        poll=0.1, ready=lambda s: s.get("status") in ("running", "failed", "stopped"))
        if state.get("status") != "running":
            fail(f"signer did not start: {state.get('error', 'see ' + str(paths.service_log))}", as_json=as_json)
        emit(as_json, {"pid": pid, "log": str(paths.service_log), **state},
             lambda: f"signer {state.get('status')} pid {pid} socket {paths.socket}")
        return
    configure_logging(json_logs=None)
    with failures(as_json):
        code = SignerProcess(settings).serve()
    raise typer.Exit(code)


@signer_app.command("stop")
def signer_stop(participant: str = ParticipantOpt, config: Path = ConfigOpt,
                timeout: float = typer.Option(15.0, "--timeout", help="Seconds to wait before SIGKILL."),
                as_json: bool = JsonOpt) -> None:
    """Stop a detached signer (SIGTERM to the pid in its pid file)."""
    from fl.deploy.services import stop_service

    with failures(as_json):
        result = stop_service(load(config).workspace.signer(participant), timeout)
    emit(as_json, result, lambda: "signer stopped" if result["was_running"] else "signer was not running")


@signer_app.command("status")
def signer_status(participant: str = ParticipantOpt, config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The signer's state: running or not, socket, last signed round; exit 3 unless it runs."""
    from fl.deploy.signer import signer_status as status_of

    with failures(as_json):
        state = status_of(load(config), participant)
    emit(as_json, state, lambda: f"signer {state['status']} (alive: {state['alive']}), socket "
                                 f"{state.get('socket', '-')}, last signed round "
                                 f"{state.get('live', {}).get('last_signed_round', '-')}")
    if not state["alive"]:
        raise typer.Exit(ExitCode.UNAVAILABLE)


@signer_app.command("verify-journal")
def verify_journal_cmd(
    participant: str = ParticipantOpt, config: Path = ConfigOpt, journal: Optional[Path] = JournalOpt,
    pin: Optional[str] = PinOpt, as_json: bool = JsonOpt,
) -> None:
    """Re-check the journal's hash chain (an edited, deleted or moved line fails: exit 1)."""
    from fl.deploy.signer import parse_pin
    from fl.signer.journal import verify_journal

    with failures(as_json):
        path = journal or load(config).workspace.signer(participant).journal
        report = verify_journal(path, parse_pin(pin))
    head = report.head
    emit(as_json, {"journal": str(path), **report.to_json()},
         lambda: (f"OK {report.entries} entries, head {head[0]}:{head[1]} (pin it: --pin {head[0]}:{head[1]})"
                  if report.ok and head else "OK empty journal" if report.ok
                  else "FAILED " + "; ".join(report.problems)))
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)


@signer_app.command("check-ledger")
def audit_mine(
    participant: str = ParticipantOpt, config: Path = ConfigOpt, journal: Optional[Path] = JournalOpt,
    pin: Optional[str] = PinOpt, as_json: bool = JsonOpt,
) -> None:
    """Compare the signer's journal with the ledger: all signed replies there, nothing else (exit 1 if not)."""
    from fl.deploy.signer import parse_pin, reconcile_with_ledger

    with failures(as_json):
        report = reconcile_with_ledger(load(config), participant, journal, parse_pin(pin))

    def human() -> str:
        verdict = "OK" if report.ok else "FAILED"
        lines = [f"{verdict} {participant}: {len(report.signed)} signed replies on the ledger, "
                 f"{len(report.pending)} pending, {report.refused} refused requests"]
        lines += [f"  round {s['round']}: signed here; ledger: {_decision(s['status'], s['reason'])}; receipt: "
                  + (_decision(s['receipt']['status'], s['receipt']['reason']) if s.get("receipt") else "none")
                  for s in report.signed]
        lines += [f"  round {f['round']}: a reply in this name that was not signed here, {f['status']} "
                  f"({f['reason']})" for f in report.stopped_forgeries]
        lines += [f"  - {p}" for p in report.problems]
        return "\n".join(lines)

    emit(as_json, report.to_json(), human)
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)


def _decision(status: str, reason: str | None) -> str:
    return status + (f" ({reason})" if reason else "")


if __name__ == "__main__":  # pragma: no cover - the detached signer and the node's signer run this
    signer_app()
