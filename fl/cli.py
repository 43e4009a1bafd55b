"""``fedledger`` command line: thin commands that parse, call a service and print.

A failed command exits non-zero with a one-line reason; ``--json`` prints one JSON
document for machines.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from fl.cli_deploy import client_app, coordinator_app
from fl.cli_k8s import k8s_app
from fl.cli_signer import audit_mine, signer_app
from fl.cli_network import network_app
from fl.cli_participant import participant_app
from fl.config import ConfigError, load_config
from ledger.errors import LedgerError
from fl.runtime import configure_logging, flower_env

app = typer.Typer(
    name="fedledger",
    help="Blockchain-audited federated learning: signed updates, recorded before FedAvg uses them.",
    no_args_is_help=True,
    add_completion=False,
)
audit_app = typer.Typer(help="Verify a federation as an auditor.", no_args_is_help=True)
rewards_app = typer.Typer(help="Token incentives recorded on the ledger.", no_args_is_help=True)
data_app = typer.Typer(help="Institutions' data: demo partitions, schema checks.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(data_app, name="data")
app.add_typer(rewards_app, name="rewards")
app.add_typer(network_app, name="network")

console = Console(width=max(Console().width, 132))


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False))


@app.callback()
def _main(
    log_json: bool = typer.Option(False, "--log-json", help="Structured JSON logs on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    flower_env()
    configure_logging(json_logs=log_json or None, level=logging.DEBUG if verbose else logging.WARNING)


@app.command()
def demo(
    rounds: int = typer.Option(3, min=1, help="Rounds to run."),
    participants: int = typer.Option(3, min=2, max=26, help="Institutions (bank-a, bank-b, …)."),
    workdir: Path = typer.Option(Path("fedledger-demo"), help="Where the demo writes everything."),
    adversary: list[str] = typer.Option([], help="PARTICIPANT:KIND, repeatable (tamper, replay, foreign-key, wrong-base, nan, shape)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
    verbose: bool = typer.Option(False, help="Show Flower's own log."),
    ledger: str = typer.Option("embedded", "--ledger", help="embedded, or fabric (a running `fedledger network`)."),
    fabric_profile: Optional[Path] = typer.Option(
        None, "--fabric-profile", help="Connection profile (default: the local network's, see `network up`)."),
) -> None:
    """Run a federation of K institutions × N rounds on the embedded ledger or on Fabric."""
    from fl.adversary import parse_adversaries
    from fl.cli_network import default_profile
    from fl.demo import DemoError, run_demo

    if ledger not in ("embedded", "fabric"):
        _fail(f"--ledger must be embedded or fabric, not {ledger!r}", code=2)
    profile = (fabric_profile or default_profile()) if ledger == "fabric" else None
    try:
        adversaries = parse_adversaries(adversary)
        result = run_demo(workdir, rounds=rounds, participants=participants,
                          adversaries=adversaries, verbose=verbose, ledger=ledger, fabric_profile=profile)
    except (DemoError, ValueError, LedgerError) as exc:
        _fail(str(exc))
    summary = result.to_json()
    if as_json:
        _print_json(summary)
        return
    _print_demo(summary)


def _print_demo(summary: dict[str, Any]) -> None:
    where = summary["ledger"].get("path") or summary["ledger"].get("profile")
    console.print(f"[bold]federation[/] {summary['federation']}  ledger {summary['ledger']['backend']} ({where})")
    for line in summary["onboarding"]:
        console.print(f"  {line['participant']} ({line['msp_id']}) registered tx {line['register_tx'][:12]}…, "
                      f"admitted tx {line['admit_tx'][:12]}…")
    table = Table(title="audited rounds")
    for column in ("round", "accepted (score)", "rejected (reason)", "RecordRound tx", "CommitModel tx",
                   "model", "accuracy"):
        table.add_column(column)
    for r in summary["rounds"]:
        accepted = "\n".join(f"{p} ({r['scores'][p] / 1e6:+.3f})" for p in r["accepted"]) or "-"
        rejected = "\n".join(f"{x['participant']} ({x['reason']})" for x in r["rejected"]) or "-"
        table.add_row(str(r["round"]), accepted, rejected,
                      f"{r['record_tx'][:12]}… #{r['record_block']}",
                      f"{r['commit_tx'][:12]}… #{r['commit_block']}",
                      f"{r['model'][:16]}…", f"{r['accuracy']:.4f}")
    console.print(table)
    console.print(f"accuracy {summary['initial_accuracy']:.4f} → {summary['final_accuracy']:.4f}")
    balances = ", ".join(f"{p} {b}" for p, b in summary["balances"].items())
    console.print(f"token balances after IssueRewards for every round: {balances}")
    console.print(f"verify it: ./run fedledger audit verify --workdir {summary['workdir']}")


def _load_workdir_config(workdir: Path):  # type: ignore[no-untyped-def]
    """The federation file of ``workdir``; the directory given wins over the one it names."""
    try:
        return load_config(workdir / "federation.toml").model_copy(update={"workdir": workdir.resolve()})
    except ConfigError as exc:
        _fail(str(exc))


def _open_audit(workdir: Path, federation: Optional[str]):  # type: ignore[no-untyped-def]
    from fl.identities import member_credentials
    from ledger.factory import open_ledger

    cfg = _load_workdir_config(workdir)
    msp = cfg.auditor_msps[0] if cfg.auditor_msps else "AuditorMSP"
    if cfg.ledger == "embedded" and not cfg.ledger_path.exists():
        _fail(f"{cfg.ledger_path}: no ledger here")
    try:
        credentials = member_credentials(cfg, msp, "auditor")
        return cfg, open_ledger(cfg.ledger_config, credentials), federation or cfg.id
    except (ValueError, LedgerError) as exc:  # KeyFileError, CertificateError are ValueErrors
        _fail(str(exc))


def _run_audit(workdir: Path, federation: Optional[str], pins: list[str],  # type: ignore[no-untyped-def]
               with_views: bool = False):
    """Audit ``workdir`` as its auditor; return (config, federation, report, round views)."""
    from ledger.artifacts import ArtifactStore
    from ledger.audit import audit_federation, backend_integrity

    cfg, ledger, fed = _open_audit(workdir, federation)
    try:
        report = audit_federation(ledger, fed, ArtifactStore(cfg.artifacts_path), backend_integrity(ledger, pins))
        views = ledger.list_rounds(fed) if with_views else []
    except LedgerError as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    return cfg, fed, report, views


@audit_app.command("verify")
def audit_verify(
    workdir: Path = typer.Option(Path("fedledger-demo"), help="The federation's work directory."),
    federation: Optional[str] = typer.Option(None, help="Federation id (default: from federation.toml)."),
    pin: list[str] = typer.Option([], help="BLOCK:HASH an earlier audit printed as the head; repeatable. "
                                           "Catches a rewrite of every block from some point on."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-check signatures, digests, aggregates, scores, rewards and the ledger's integrity."""
    _, fed, report, _ = _run_audit(workdir, federation, pin)
    if as_json:
        _print_json(report.to_json())
    else:
        status = "[green]OK[/]" if report.ok else "[red]FAILED[/]"
        console.print(f"{status} federation {fed}: {report.rounds} rounds, {report.signatures_checked} "
                      f"signatures, {report.aggregates_recomputed} aggregates and "
                      f"{report.scores_recomputed} score sets recomputed, {report.blocks_checked} blocks")
        if report.head:
            console.print(f"  head block {report.head['block']} {report.head['hash']} (pin it: --pin "
                          f"{report.head['block']}:{report.head['hash']})")
        for problem in report.problems:
            console.print(f"  - {problem}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("round")
def audit_round(
    number: int = typer.Argument(..., min=1),
    workdir: Path = typer.Option(Path("fedledger-demo")),
    federation: Optional[str] = typer.Option(None),
) -> None:
    """Print one round as recorded on the ledger (JSON)."""
    _, ledger, fed = _open_audit(workdir, federation)
    try:
        view = ledger.get_round(fed, number)
    except LedgerError as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    _print_json(view.model_dump(mode="json"))


@audit_app.command("participant")
def audit_participant(
    participant: str = typer.Argument(...),
    workdir: Path = typer.Option(Path("fedledger-demo")),
    federation: Optional[str] = typer.Option(None),
) -> None:
    """Print a participant's registration, history and balance (JSON)."""
    _, ledger, fed = _open_audit(workdir, federation)
    try:
        record = ledger.participant(fed, participant)
        history = ledger.history(fed, participant)
        balance = ledger.balance(fed, participant)
    except LedgerError as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    _print_json({
        "participant": record.model_dump(mode="json", exclude={"cert_pem"}),
        "history": [{"tx_id": h.tx_id, "timestamp_ms": h.timestamp_ms,
                     "status": h.value.status if h.value else None} for h in history],
        "balance": balance,
    })


@rewards_app.command("issue")
def rewards_issue(
    workdir: Path = typer.Option(Path("fedledger-demo"), help="The federation's work directory."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Coordinator: issue rewards for every committed round that has none (idempotent)."""
    from fl.server_app import coordinator_identity
    from ledger.factory import open_ledger
    from ledger.incentives import issue_pending_rewards

    cfg = _load_workdir_config(workdir)
    try:
        ledger = open_ledger(cfg.ledger_config, coordinator_identity(cfg))
    except (ValueError, LedgerError) as exc:
        _fail(str(exc))
    try:
        issued = issue_pending_rewards(ledger, cfg.id)
    except LedgerError as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    rows = [{"round": i.round, "rewards": i.rewards, "tx_id": i.receipt.tx_id} for i in issued]
    if as_json:
        _print_json(rows)
    else:
        console.print(f"issued rewards for {len(rows)} round(s)")
        for row in rows:
            console.print(f"  round {row['round']}: {row['rewards']} tx {row['tx_id'][:12]}…")


@rewards_app.command("balances")
def rewards_balances(
    workdir: Path = typer.Option(Path("fedledger-demo"), help="The federation's work directory."),
) -> None:
    """Every participant's token balance, read as an auditor (JSON)."""
    cfg, ledger, fed = _open_audit(workdir, None)
    try:
        _print_json({p.id: ledger.balance(fed, p.id) for p in ledger.participants(fed)})
    finally:
        ledger.close()


@data_app.command("split")
def data_split(
    out: Path = typer.Option(Path("data"), help="Directory for one CSV per institution (+ test.csv)."),
    participants: int = typer.Option(3, min=1, max=26, help="Institutions bank-a, bank-b, …"),
    seed: int = typer.Option(7, help="Split seed (the federation's data_seed)."),
    alpha: float = typer.Option(0.5, help="Dirichlet label-skew concentration (smaller: more skewed)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a non-IID split of the bundled credit data as institution CSV files."""
    from fl import data as fl_data
    from fl.config import default_participants

    names = default_participants(participants)
    paths = fl_data.write_partitions_csv(fl_data.partition_credit(participants, seed, alpha), out, names)
    rows = {name: str(path) for name, path in paths.items()}
    if as_json:
        _print_json(rows)
    else:
        for name, path in rows.items():
            console.print(f"{name}: {path}")


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="An institution's CSV file."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check a CSV against the federation's preprocessing schema (columns, labels, values)."""
    from fl import data as fl_data

    schema = fl_data.credit_schema()
    try:
        X, y = fl_data.load_csv(path, schema)
    except fl_data.DataMismatchError as exc:
        _fail(str(exc))
    result = {"file": str(path), "rows": int(X.shape[0]), "features": int(X.shape[1]),
              "positive_rate": float(y.mean()) if len(y) else 0.0, "schema_digest": schema.digest()}
    if as_json:
        _print_json(result)
    else:
        console.print(f"{path}: {result['rows']} rows, {result['features']} features after preprocessing, "
                      f"{result['positive_rate']:.1%} positive; schema {result['schema_digest'][:16]}…")


@app.command()
def report(
    workdir: Path = typer.Option(Path("fedledger-demo"), help="The federation's work directory."),
    federation: Optional[str] = typer.Option(None, help="Federation id (default: from federation.toml)."),
    round_: Optional[int] = typer.Option(None, "--round", min=1, help="Only this round (default: every round)."),
    out: Optional[Path] = typer.Option(None, help="Directory for round-NNNN.md/.json (default: WORKDIR/reports)."),
    pin: list[str] = typer.Option([], help="BLOCK:HASH pinned from an earlier audit; repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON instead of writing files."),
) -> None:
    """Compliance report for every round, from the auditor's own audit of the ledger."""
    from ledger.reports import round_report, write_reports

    cfg, fed, audit, views = _run_audit(workdir, federation, pin, with_views=True)
    msp = cfg.auditor_msps[0] if cfg.auditor_msps else "AuditorMSP"
    reports = [round_report(v, audit, backend=cfg.ledger, auditor_msp=msp)
               for v in views if round_ is None or v.round == round_]
    if round_ is not None and not reports:
        _fail(f"round {round_} is not on the ledger of federation {fed}")
    if as_json:
        _print_json(reports)
    else:
        paths = write_reports(reports, out or workdir / "reports")
        for r in reports:
            status = "[green]compliant[/]" if r["compliant"] else "[red]NOT compliant[/]"
            console.print(f"round {r['round']}: {status}, {r['accepted']} accepted, {r['rejected']} rejected")
        console.print(f"wrote {len(paths)} files to {(out or workdir / 'reports')}")
    if not all(r["compliant"] for r in reports):
        raise typer.Exit(1)


# Onboarding and deployment commands live in their own modules.
app.add_typer(participant_app, name="participant")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(client_app, name="client")
app.add_typer(k8s_app, name="k8s")
app.add_typer(signer_app, name="signer")
audit_app.command("mine")(audit_mine)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
