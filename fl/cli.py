"""``fedledger`` command line: thin commands that parse, call a service and print.

Every command follows :mod:`fl.cli_output`: ``--config`` (else ``$FEDLEDGER_CONFIG``,
else ``./federation.toml``) points at the federation, ``-p/--participant`` names a
participant, ``--json`` prints one JSON document, and the exit code says what happened
(0 ok, 1 check failed or refused, 2 usage or configuration error, 3 unavailable,
4 not found).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from fl.cli_deploy import client_app, coordinator_app
from fl.cli_k8s import k8s_app
from fl.cli_network import network_app
from fl.cli_output import (
    CONVENTION,
    CommandError,
    ConfigOpt,
    ExitCode,
    JsonOpt,
    ParticipantOpt,
    emit,
    fail,
    failures,
    load,
)
from fl.cli_participant import participant_app
from fl.cli_signer import audit_mine, signer_app
from fl.runtime import configure_logging, flower_env

app = typer.Typer(
    name="fedledger",
    help="Blockchain-audited federated learning: signed updates, recorded before FedAvg uses them.\n\n"
         + CONVENTION,
    no_args_is_help=True,
    add_completion=False,
)
audit_app = typer.Typer(help="Verify a federation as its auditor (identity: the file's first auditor_msps).",
                        no_args_is_help=True)
rewards_app = typer.Typer(help="Token incentives recorded on the ledger.", no_args_is_help=True)
data_app = typer.Typer(help="Institutions' data: demo partitions, schema checks.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(data_app, name="data")
app.add_typer(rewards_app, name="rewards")
app.add_typer(network_app, name="network")

console = Console(width=max(Console().width, 132))

PinOpt: Any = typer.Option([], "--pin", help="BLOCK:HASH an earlier audit printed as the head; repeatable. "
                                             "Catches a rewrite of every block from some point on.")


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
    workdir: Path = typer.Option(Path("fedledger-demo"), help="Where the demo writes everything, "
                                 "including WORKDIR/federation.toml for the commands that follow."),
    adversary: list[str] = typer.Option([], help="PARTICIPANT:KIND, repeatable (tamper, replay, foreign-key, "
                                                 "wrong-base, nan, shape)."),
    as_json: bool = JsonOpt,
    verbose: bool = typer.Option(False, help="Show Flower's own log."),
    ledger: str = typer.Option("embedded", "--ledger", help="embedded, or fabric (a running `fedledger network`)."),
    fabric_profile: Optional[Path] = typer.Option(
        None, "--fabric-profile", help="Connection profile (default: the local network's, see `network up`)."),
    scorer: Optional[str] = typer.Option(None, "--scorer", help="cosine (default), loo or shapley."),
    aggregation: Optional[str] = typer.Option(
        None, "--aggregation", help="fedavg (default), median, trimmed-mean or multi-krum."),
    fedprox_mu: Optional[float] = typer.Option(None, "--fedprox-mu", help="FedProx μ (default 0: FedAvg)."),
    dp_epsilon: Optional[float] = typer.Option(
        None, "--dp-epsilon", help="DP-SGD with this ε per round (Opacus); total budget ε × rounds."),
    compression: Optional[str] = typer.Option(None, "--compression", help="none (default) or int8."),
) -> None:
    """Create a federation of K institutions in WORKDIR and run N audited rounds (embedded ledger or Fabric).

    The policy options are written into WORKDIR/federation.toml and onto the ledger."""
    from fl.adversary import parse_adversaries
    from fl.cli_network import default_profile
    from fl.demo import run_demo

    if ledger not in ("embedded", "fabric"):
        fail(f"--ledger must be embedded or fabric, not {ledger!r}", ExitCode.USAGE, as_json)
    profile = (fabric_profile or default_profile()) if ledger == "fabric" else None
    with failures(as_json):
        try:
            adversaries = parse_adversaries(adversary)
        except ValueError as exc:
            raise CommandError(str(exc), ExitCode.USAGE) from None
        policy = {"scorer": scorer, "aggregation": aggregation,
                  "training": {"fedprox_mu": fedprox_mu, "dp_epsilon": dp_epsilon, "compression": compression}}
        result = run_demo(workdir, rounds=rounds, participants=participants, adversaries=adversaries,
                          verbose=verbose, ledger=ledger, fabric_profile=profile,
                          policy={k: v for k, v in policy.items() if v is not None})
    summary = result.to_json()
    emit(as_json, summary, lambda: _print_demo(summary))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_demo(summary: dict[str, Any]) -> None:
    where = summary["ledger"].get("path") or summary["ledger"].get("profile")
    console.print(f"[bold]federation[/] {summary['federation']}  ledger {summary['ledger']['backend']} ({where})")
    for line in summary["onboarding"]:
        console.print(f"  {line['participant']} ({line['msp_id']}) registered tx {line['register_tx'][:12]}…, "
                      f"admitted tx {line['admit_tx'][:12]}…")
    table = Table(title="audited rounds")
    for column in ("round", "accepted (score)", "rejected (reason)", "RecordRound tx", "CommitModel tx",
                   "model", "validation accuracy", "federated AUC"):
        table.add_column(column)
    for r in summary["rounds"]:
        accepted = "\n".join(f"{p} ({r['scores'][p] / 1e6:+.3f})" for p in r["accepted"]) or "-"
        rejected = "\n".join(f"{x['participant']} ({x['reason']})" for x in r["rejected"]) or "-"
        auc = (r.get("evaluation_mean") or {}).get("auc")
        table.add_row(str(r["round"]), accepted, rejected,
                      f"{r['record_tx'][:12]}… #{r['record_block']}",
                      f"{r['commit_tx'][:12]}… #{r['commit_block']}",
                      f"{r['model'][:16]}…", _number(r.get("accuracy")), _number(auc))
    console.print(table)
    console.print(f"validation accuracy {_number(summary['initial_accuracy'])} → {_number(summary['final_accuracy'])}")
    balances = ", ".join(f"{p} {b}" for p, b in summary["balances"].items())
    console.print(f"token balances after IssueRewards for every round: {balances}")
    console.print(f"verify it: ./run fedledger audit verify --config {summary['config']}")


@audit_app.command("verify")
def audit_verify(
    config: Path = ConfigOpt, pin: list[str] = PinOpt, as_json: bool = JsonOpt,
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Check an evidence bundle from `audit export` "
                                          "instead, offline: no federation file, no ledger, no network."),
) -> None:
    """Re-check signatures, digests, aggregates, scores, rewards and the ledger's integrity (exit 1 on a problem)."""
    from fl.auditing import run_audit

    if bundle is not None:
        if pin:
            fail("--pin does not apply to --bundle (a bundle holds no blocks to check a pin against)",
                 ExitCode.USAGE, as_json)
        from fl.cli_audit import verify_bundle_cmd

        verify_bundle_cmd(bundle, as_json)
        return
    with failures(as_json):
        audit = run_audit(load(config), pin, with_views=True)
    report = audit.report
    policy, evaluations = audit.policy_summary(), audit.evaluations()

    def human() -> None:
        status = "[green]OK[/]" if report.ok else "[red]FAILED[/]"
        console.print(f"{status} federation {audit.federation}: {report.rounds} rounds, {report.signatures_checked} "
                      f"signatures, {report.aggregates_recomputed} aggregates and "
                      f"{report.scores_recomputed} score sets recomputed, {report.evaluations_checked} signed "
                      f"evaluations, {report.blocks_checked} blocks")
        if report.head:
            console.print(f"  head block {report.head['block']} {report.head['hash']} (pin it: --pin "
                          f"{report.head['block']}:{report.head['hash']})")
        print_audit_details(policy, evaluations, report.problems)

    emit(as_json, {**report.to_json(), "policy": policy, "evaluations": evaluations}, human)
    if not report.ok:
        raise typer.Exit(ExitCode.FAILED)


def print_audit_details(policy: dict[str, Any], evaluations: dict[int, dict[str, Any]],
                        problems: list[str]) -> None:
    """What every audit prints after its verdict: the recorded policy, the signed
    evaluations and the problems."""
    if policy:
        console.print(f"  data schema {policy['data_schema_digest']}  validation file "
                      f"{policy['validation_digest'] or '(none)'}")
        console.print(f"  policy: {policy_line(policy)}")
    if evaluations:
        console.print(evaluation_table(evaluations))
    for problem in problems:
        console.print(f"  - {problem}")


def policy_line(policy: dict[str, Any]) -> str:
    """The scorer, the aggregation rule and the required training, in one line."""
    training, scorer = policy["training"], policy["scorer"]
    dp = training["dp"]
    parts = [f"scorer {scorer['name']}", f"aggregation {policy['aggregation']}"
             + (f" {policy['aggregation_params']}" if policy["aggregation_params"] else ""),
             training["algorithm"] + (f" μ {training['mu_ppm'] / 1e6:g}" if training["mu_ppm"] else ""),
             f"compression {training['compression']}",
             "no DP" if dp is None else (f"DP-SGD ε ≤ {dp['epsilon_round_ppm'] / 1e6:g} per round, "
                                         f"{dp['epsilon_total_ppm'] / 1e6:g} in total, δ {dp['delta_ppb'] / 1e9:g}")]
    return ", ".join(parts)


def _ppm(value: int | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value / 1e6:.{digits}f}"


def evaluation_table(evaluations: dict[int, dict[str, Any]]) -> Table:
    """Federated evaluation per round and institution, as the auditor verified it."""
    table = Table(title="federated evaluation (each institution's hold-out, signed)")
    for column in ("round", "institution", "AUC", "accuracy", "log-loss", "examples", "signature"):
        table.add_column(column)
    for number, entry in sorted(evaluations.items()):
        rows = [(p, m) for p, m in sorted(entry["institutions"].items())]
        for participant, m in rows:
            table.add_row(str(number), participant, _ppm(m["auc_ppm"]), _ppm(m["accuracy_ppm"]),
                          _ppm(m["log_loss_ppm"]), str(m["examples"]),
                          "verified" if m["signature_verified"] else "[red]NOT verified[/]")
        mean = entry["mean"]
        table.add_row(str(number), "[bold]federation (weighted)[/]", _ppm(mean["auc_ppm"]),
                      _ppm(mean["accuracy_ppm"]), _ppm(mean["log_loss_ppm"]), str(mean["examples"]), "")
    return table


@audit_app.command("round")
def audit_round(
    number: int = typer.Argument(..., min=1, help="Round number (1 = the first)."),
    config: Path = ConfigOpt, as_json: bool = JsonOpt,
) -> None:
    """One round as recorded on the ledger: record, commit and their transactions (exit 4 if absent)."""
    from fl.auditing import round_view

    with failures(as_json):
        view = round_view(load(config), number)

    def human() -> str:
        record, commit = view.get("record") or {}, view.get("commit") or {}
        lines = [f"round {view.get('round', number)}: base model {str(record.get('base_model', '-'))[:16]}…, "
                 f"new model {str(commit.get('model', '-'))[:16]}…"]
        lines += [f"  {e.get('participant')}: {e.get('status')}" + (f" ({e['reason']})" if e.get("reason") else "")
                  for e in record.get("entries", [])]
        return "\n".join(lines)

    emit(as_json, view, human)


@audit_app.command("participant")
def audit_participant(participant: str = ParticipantOpt, config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """A participant's registration, status history and token balance (exit 4 if unknown)."""
    from fl.auditing import participant_view

    with failures(as_json):
        view = participant_view(load(config), participant)

    def human() -> str:
        record = view["participant"]
        lines = [f"{record['id']} ({record['msp_id']}): {record['status']}, balance {view['balance']}"]
        lines += [f"  {h['timestamp_ms']} {h['status']} tx {h['tx_id'][:12]}…" for h in view["history"]]
        return "\n".join(lines)

    emit(as_json, view, human)


@rewards_app.command("issue")
def rewards_issue(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Coordinator: issue rewards for every committed round that has none (idempotent)."""
    from fl.auditing import issue_rewards

    with failures(as_json):
        rows = issue_rewards(load(config))
    emit(as_json, rows, lambda: "\n".join([f"issued rewards for {len(rows)} round(s)"] + [
        f"  round {row['round']}: {row['rewards']} tx {row['tx_id'][:12]}…" for row in rows]))


@rewards_app.command("balances")
def rewards_balances(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Every participant's token balance, read as the auditor."""
    from fl.auditing import balances

    with failures(as_json):
        rows = balances(load(config))
    emit(as_json, rows, lambda: "\n".join(f"{p:<20} {b}" for p, b in rows.items()) or "no participants")


@data_app.command("split")
def data_split(
    out: Path = typer.Option(Path("data"), help="Directory for one CSV per institution (+ test.csv)."),
    participants: int = typer.Option(3, min=1, max=26, help="Institutions bank-a, bank-b, …"),
    seed: int = typer.Option(7, help="Split seed (the federation's data_seed)."),
    alpha: float = typer.Option(0.5, help="Dirichlet label-skew concentration (smaller: more skewed)."),
    as_json: bool = JsonOpt,
) -> None:
    """Write a non-IID split of the bundled credit data as institution CSV files, and its
    [federation.data] table (schema.toml) to paste into a federation file."""
    from fl import demo_data
    from fl.config import data_toml, default_participants

    names = default_participants(participants)
    paths = demo_data.write_partitions_csv(demo_data.partition_credit(participants, seed, alpha), out, names)
    schema = out / "schema.toml"
    schema.write_text(data_toml(demo_data.credit_schema()), encoding="utf-8")
    rows = {**{name: str(path) for name, path in paths.items()}, "schema": str(schema)}
    emit(as_json, rows, lambda: "\n".join(f"{name}: {path}" for name, path in rows.items()))


@data_app.command("schema")
def data_schema(
    path: Path = typer.Argument(..., help="A sample CSV with the federation's columns."),
    target: str = typer.Option(..., "--target", help="The label column."),
    positive: str = typer.Option(..., "--positive", help="The label value the model predicts (e.g. 'yes', 'bad')."),
    negative: Optional[str] = typer.Option(None, "--negative", help="The other label value (default: the "
                                           "target's only other value)."),
    max_categories: int = typer.Option(50, "--max-categories", min=1, help="More distinct texts than this: "
                                       "the column is left out (ignored_columns) for the consortium to decide."),
    as_json: bool = JsonOpt,
) -> None:
    """Draft a [federation.data] table from a sample CSV, for the consortium to review and agree on."""
    from fl.config import data_toml
    from fl.schema_draft import draft_schema

    with failures(as_json):
        draft = draft_schema(path, target, positive, negative_label=negative, max_categories=max_categories)
    payload = {"data": draft.schema.model_dump(mode="json", exclude_none=True), "notes": draft.notes,
               "digest": draft.schema.digest()}

    def human() -> str:
        notes = "\n".join(f"# {column}: {note}" for column, note in draft.notes.items())
        return (f"# Drafted from {path}: review the types and agree on the constants, then paste into\n"
                f"# federation.toml. Digest {draft.schema.digest()}\n{notes}\n\n{data_toml(draft.schema)}")

    emit(as_json, payload, human)


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="An institution's CSV file."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check a CSV against the federation's [federation.data] schema; name every problem by row and column.

    Exit 0 when the file fits, 1 when it does not (every problem listed), 2 when the
    federation file is malformed or declares no schema.
    """
    from fl import data as fl_data

    with failures(as_json):
        schema = load(config).schema
        check = fl_data.check_csv(path, schema)
        result: dict[str, Any] = {**check.as_dict(), "schema_digest": schema.digest()}
        if check.ok:
            X, y = fl_data.load_csv(path, schema)
            result.update(features=int(X.shape[1]), positive_rate=float(y.mean()) if len(y) else 0.0)

    if check.ok:
        emit(as_json, result, lambda: (
            f"{path}: {check.rows} rows fit the schema {schema.digest()[:16]}…; "
            f"{result['features']} features after preprocessing, {result['positive_rate']:.1%} positive"))
        return
    if as_json:
        emit(True, result, str)
    else:
        for problem in check.problems:
            typer.echo(f"{path}: {problem.message}", err=True)
    fail(f"{path} does not fit the federation's schema ({len(check.problems)} problems)", ExitCode.FAILED)


@app.command()
def report(
    config: Path = ConfigOpt,
    round_: Optional[int] = typer.Option(None, "--round", min=1, help="Only this round (default: every round "
                                         "and the whole federation)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for federation.html/.pdf and "
                                       "round-NNNN.md/.json/.html/.pdf (default: the workspace's reports/)."),
    pin: list[str] = PinOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the report (rounds, policy, chart series) as JSON "
                                 "instead of writing files."),
) -> None:
    """Compliance reports from the auditor's own audit: the federation and each round as Markdown,
    JSON, self-contained HTML and PDF (exit 1 unless compliant, 4 no such round)."""
    from fl.auditing import run_audit
    from fl.compliance import write_documents
    from ledger.reports import federation_report, round_document, write_reports

    with failures(as_json):
        cfg = load(config)
        audit = run_audit(cfg, pin, with_views=True)
        whole = federation_report(audit.views, audit.report, backend=cfg.ledger, auditor_msp=cfg.auditor_msp)
        if round_ is not None and all(r["round"] != round_ for r in whole["rounds"]):
            raise CommandError(f"round {round_} is not on the ledger of federation {cfg.id}", ExitCode.NOT_FOUND)
        doc = whole if round_ is None else round_document(whole, round_)
        directory = out or cfg.workspace.reports
        paths = [] if as_json else [
            *write_reports(doc["rounds"], directory),
            *write_documents(whole, directory, rounds=None if round_ is None else [round_],
                             federation=round_ is None)]

    def human() -> str:
        lines = [f"round {r['round']}: {'compliant' if r['compliant'] else 'NOT compliant'}, "
                 f"{r['accepted']} accepted, {r['rejected']} rejected" for r in doc["rounds"]]
        if round_ is None:
            lines.append(f"federation {whole['federation']}: {'compliant' if whole['compliant'] else 'NOT compliant'}"
                         + "".join(f"\n  problem: {p}" for p in whole["problems"]))
        return "\n".join([*lines, f"wrote {len(paths)} files to {directory}"])

    emit(as_json, doc, human)
    if not doc["compliant"]:
        raise typer.Exit(ExitCode.FAILED)


# Onboarding and deployment commands live in their own modules.
app.add_typer(participant_app, name="participant")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(client_app, name="client")
app.add_typer(k8s_app, name="k8s")
app.add_typer(signer_app, name="signer")
audit_app.command("mine", help="Compare your signer's journal with the ledger (as `signer check-ledger`).")(audit_mine)
from fl.cli_audit import register_audit_commands  # noqa: E402
register_audit_commands(audit_app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
