"""``fedledger audit history | balances | export`` and the offline ``audit verify --bundle``.

Thin commands on :mod:`fl.auditing` that follow :mod:`fl.cli_output`;
:func:`register_audit_commands` puts them on ``fedledger audit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from fl.cli_output import ConfigOpt, ExitCode, JsonOpt, ParticipantOpt, emit, failures, load

__all__ = ["register_audit_commands", "audit_history_cmd", "audit_balances_cmd", "audit_export_cmd",
           "verify_bundle_cmd"]

console = Console(width=max(Console().width, 132))


def _ppm(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}"


def _statement_tables(view: dict[str, Any]) -> None:
    reg, adm, rev = view["registration"], view["admission"], view["revocation"]
    console.print(f"[bold]{view['participant']}[/] ({view['msp_id']}) in federation {view['federation']}: "
                  f"{view['status']}")
    console.print(f"  registered {reg['registered_ms']} ms, declared {reg['declared_examples']} examples, "
                  f"tx {str(reg['tx_id'])[:16]}…")
    console.print("  admitted " + (f"{adm['timestamp_ms']} ms, tx {adm['tx_id'][:16]}…" if adm else "-"))
    if rev:
        console.print(f"  revoked {rev['timestamp_ms']} ms, tx {rev['tx_id'][:16]}… ({rev['reason_note']})")
    table = Table(title="rounds")
    for column in ("round", "status", "reason", "score", "weight", "share", "tokens", "evaluation"):
        table.add_column(column)
    for row in view["rounds"]:
        entries = row["entries"] or [{}]
        for entry in entries:
            evaluation = row.get("evaluation") or []
            ev = "; ".join(f"acc {_ppm(e['accuracy_ppm'])} auc {_ppm(e['auc_ppm'])}" if e["status"] == "accepted"
                           else f"rejected ({e['reason']})" for e in evaluation) or "-"
            reason = entry.get("reason") or ""
            if entry.get("detail"):
                reason += f": {entry['detail'][:60]}"
            table.add_row(str(row["round"]), entry.get("status", row["status"]), reason or "-",
                          _ppm(entry.get("score_ppm")), str(row["weight"] if row["weight"] is not None else "-"),
                          _ppm(row["weight_share_ppm"]), str(row["tokens"] if row["tokens"] is not None else "-"), ev)
    console.print(table)
    t = view["totals"]
    by_reason = ", ".join(f"{r} {n}" for r, n in t["rejected_by_reason"].items()) or "none"
    console.print(f"  rounds joined {t['rounds_joined']}: accepted {t['accepted']}, rejected {t['rejected']} "
                  f"({by_reason}), absent while active {t['absent']}")
    console.print(f"  tokens earned {t['tokens_earned']}, balance {t['balance']}, "
                  f"transfers net {t['transfers_net']:+d}")
    console.print(f"  note: {view['note']}")


def audit_history_cmd(participant: str = ParticipantOpt, config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """A participant's statement: registration, every round it was in (or absent from while
    active) with status, reason, score, weight, tokens and evaluation; totals and balance (exit 4 if unknown)."""
    from fl.auditing import audit_history

    with failures(as_json):
        view = audit_history(load(config), participant)
    emit(as_json, view, lambda: _statement_tables(view))


def audit_balances_cmd(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Each participant's balance against the rewards it earned (the difference is transfers),
    and the total supply against the rewards issued (exit 1 if they differ)."""
    from fl.auditing import audit_balances

    with failures(as_json):
        sheet = audit_balances(load(config))

    def human() -> None:
        table = Table(title=f"token balances of federation {sheet['federation']}")
        for column in ("participant", "balance", "earned (rewards)", "transfers net"):
            table.add_column(column)
        for pid, row in sheet["participants"].items():
            table.add_row(pid, str(row["balance"]), str(row["earned"]), f"{row['transfers_net']:+d}")
        console.print(table)
        status = "[green]OK[/]" if sheet["ok"] else "[red]FAILED[/]"
        console.print(f"{status} total supply {sheet['supply']}, rewards issued {sheet['issued']} over "
                      f"{sheet['rounds_rewarded']} rounds")
        for problem in sheet["problems"]:
            console.print(f"  - {problem}")
        console.print(f"  note: {sheet['note']}")

    emit(as_json, sheet, human)
    if not sheet["ok"]:
        raise typer.Exit(ExitCode.FAILED)


def _rounds(value: Optional[str]) -> Optional[list[int]]:
    if value is None:
        return None
    from ledger.bundle import parse_rounds

    try:
        return parse_rounds(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def audit_export_cmd(
    out: Path = typer.Option(..., "--out", help="The bundle file to write (.tar.gz)."),
    rounds: Optional[str] = typer.Option(None, "--rounds", help="Rounds whose artifacts to include, e.g. 1,3-5 "
                                         "(default: all); every round's record is included regardless."),
    config: Path = ConfigOpt, as_json: bool = JsonOpt,
) -> None:
    """Run the full audit, then write an evidence bundle anyone can check offline with
    `audit verify --bundle` (exit 1 if the audit found problems; the bundle is written anyway)."""
    from fl.auditing import export_bundle

    chosen = _rounds(rounds)
    with failures(as_json):
        result = export_bundle(load(config), out, chosen)

    def human() -> None:
        status = "[green]audit OK[/]" if result["audit_ok"] else "[red]audit FAILED[/]"
        console.print(f"{status}; wrote {result['path']} ({result['bytes']} bytes, {result['members']} members, "
                      f"{result['artifacts']} artifacts of {result['artifact_bytes']} bytes)")
        console.print(f"  rounds exported {result['rounds_exported']}, records of rounds {result['rounds_included']}")
        for digest, what in result["missing_artifacts"].items():
            console.print(f"  - not in the artifact store: {what} ({digest[:16]}…)")
        for problem in result["audit"]["problems"]:
            console.print(f"  - {problem}")
        console.print(f"  check it anywhere: fedledger audit verify --bundle {Path(result['path']).name}")

    emit(as_json, result, human)
    if not result["audit_ok"]:
        raise typer.Exit(ExitCode.FAILED)


def verify_bundle_cmd(bundle: Path, as_json: bool) -> None:
    """``audit verify --bundle``: the offline audit of an evidence bundle (no federation file)."""
    from fl.auditing import verify_bundle_file

    with failures(as_json):
        audit, check = verify_bundle_file(bundle)
    report = audit.report
    policy, evaluations = audit.policy_summary(), audit.evaluations()

    def human() -> None:
        status = "[green]OK[/]" if check.ok else "[red]FAILED[/]"
        m = check.manifest
        console.print(f"{status} bundle {bundle.name}: federation {audit.federation}, exported {m.get('created')} "
                      f"by {(m.get('auditor') or {}).get('msp_id')} from {m.get('backend')}")
        console.print(f"  {report.rounds} rounds, {report.signatures_checked} signatures, "
                      f"{report.aggregates_recomputed} aggregates and {report.scores_recomputed} score sets "
                      f"recomputed, {report.rewards_recomputed} reward sets, {report.evaluations_checked} signed "
                      f"evaluations; {len(m.get('members') or {})} members match manifest.json"
                      if not check.bundle_problems else "  some members do not match manifest.json")
        console.print(f"  {check.integrity_note()}")
        for number, problems in sorted(check.not_rechecked.items()):
            console.print(f"  round {number}: included for the chain only, its artifacts were not exported: "
                          f"{len(problems)} check(s) not re-done")
        from fl.cli import print_audit_details

        print_audit_details(policy, evaluations, check.problems)

    emit(as_json, {**check.to_json(), "policy": policy, "evaluations": evaluations}, human)
    if not check.ok:
        raise typer.Exit(ExitCode.FAILED)


def register_audit_commands(audit_app: typer.Typer) -> None:
    """Add ``history``, ``balances`` and ``export`` to the ``audit`` command group."""
    audit_app.command("history")(audit_history_cmd)
    audit_app.command("balances")(audit_balances_cmd)
    audit_app.command("export")(audit_export_cmd)
