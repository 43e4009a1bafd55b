"""Per-round compliance reports for auditors and compliance officers.

A report states, for one round, what the ledger holds (who was accepted with which
score and reward, who was rejected and why, how each institution's signed evaluation of
the committed model came out and their federated mean, the transactions and blocks that
hold it) and what the auditor's independent re-checks found (signatures, aggregate, scores,
rewards, ledger integrity). It is built from an :class:`~ledger.audit.AuditReport` and
the ledger read with the auditor's own identity, rendered as Markdown and JSON.

:func:`federation_report` gathers every round's report with the recorded policy and the
series the compliance documents chart (global metric, scores, tokens, rejections and
privacy spent per round); it only computes data. :mod:`fl.compliance` renders it as HTML
and PDF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger.audit import AuditReport
from ledger.records import RoundView

__all__ = ["round_report", "policy_report", "federation_series", "federation_report", "round_document",
           "render_markdown", "write_reports"]


def round_report(view: RoundView, audit: AuditReport, *, backend: str, auditor_msp: str) -> dict[str, Any]:
    """The compliance report of one round as a JSON-ready dict."""
    rewards = view.rewards or {}
    problems = audit.round_problems.get(view.round, [])
    ledger_problems = [p for p in audit.problems if p.startswith("ledger:")]
    entries = [
        {
            "participant": e.participant,
            "status": e.status,
            "reason": e.reason,
            "detail": e.detail,
            "score": None if e.score_ppm is None else e.score_ppm / 1e6,
            "num_examples": e.num_examples,
            "reward": rewards.get(e.participant, 0) if e.status == "accepted" else 0,
            "manifest_hash": e.manifest_hash,
            "update": e.update,
            "epsilon": _ratio(getattr(e, "epsilon_ppm", None)),
        }
        for e in view.record.entries
    ]

    def tx(receipt: Any) -> dict[str, Any] | None:
        return None if receipt is None else receipt.model_dump(mode="json")

    policy = audit.policy

    return {
        "federation": view.federation,
        "round": view.round,
        "ledger": {"backend": backend, "head": audit.head},
        "auditor_msp": auditor_msp,
        "compliant": not problems and not ledger_problems and view.commit is not None,
        "base_model": view.record.base_model,
        "model": view.commit.model if view.commit else None,
        "aggregation": view.commit.aggregation if view.commit else None,
        "scorer": view.record.scorer.model_dump(mode="json"),
        "transactions": {"record": tx(view.record_tx), "commit": tx(view.commit_tx), "rewards": tx(view.rewards_tx),
                         "evaluation": tx(view.evaluation_tx)},
        "data_schema_digest": policy.data_schema_digest if policy is not None else None,
        "validation_digest": policy.validation_digest if policy is not None else None,
        "evaluation": _evaluation(view, audit),
        "accepted": sum(1 for e in entries if e["status"] == "accepted"),
        "rejected": sum(1 for e in entries if e["status"] == "rejected"),
        "entries": entries,
        "problems": problems + ledger_problems,
    }


def _ratio(ppm: int | None) -> float | None:
    return None if ppm is None else ppm / 1e6


def _evaluation(view: RoundView, audit: AuditReport) -> dict[str, Any] | None:
    """Per-institution signed metrics of the committed model, and their federated mean."""
    evaluation = view.evaluation
    if evaluation is None:
        return None
    verified = audit.evaluation_verified.get(view.round, {})
    entries = [
        {
            "participant": e.participant,
            "status": e.status,
            "reason": e.reason,
            "accuracy": _ratio(e.accuracy_ppm),
            "auc": _ratio(e.auc_ppm),
            "log_loss": _ratio(e.log_loss_ppm),
            "examples": e.num_examples,
            "signature_verified": verified.get(e.participant, False) if e.status == "accepted" else None,
            "manifest_hash": e.manifest_hash,
        }
        for e in evaluation.entries
    ]
    mean = evaluation.mean_ppm()
    return {
        "model": evaluation.model,
        "entries": entries,
        "mean": {"accuracy": _ratio(mean["accuracy_ppm"]), "auc": _ratio(mean["auc_ppm"]),
                 "log_loss": _ratio(mean["log_loss_ppm"]), "examples": mean["examples"]},
    }


def policy_report(policy: Any) -> dict[str, Any] | None:
    """What the recorded federation policy says, in the report's units (ratios, not ppm).

    Read defensively: policies written before a field existed simply lack it here.
    """
    if policy is None:
        return None
    training = getattr(policy, "training", None)
    dp = getattr(training, "dp", None) if training is not None else None
    return {
        "scorer": {"name": policy.scorer.name, "params": dict(policy.scorer.params), "seed": policy.scorer.seed},
        "aggregation": policy.aggregation,
        "aggregation_params": dict(getattr(policy, "aggregation_params", {}) or {}),
        "data_schema_digest": policy.data_schema_digest,
        "validation_digest": policy.validation_digest,
        "initial_model": policy.model or None,
        "eval_fraction": _ratio(policy.eval_fraction_ppm),
        "reward_budget": policy.reward_budget,
        "max_num_examples": policy.max_num_examples,
        "auditor_msps": list(policy.auditor_msps),
        "training": None if training is None else {
            "algorithm": getattr(training, "algorithm", None),
            "mu": _ratio(getattr(training, "mu_ppm", None)),
            "compression": getattr(training, "compression", None),
            "dp": None if dp is None else {
                "epsilon_round": _ratio(dp.epsilon_round_ppm),
                "epsilon_total": _ratio(dp.epsilon_total_ppm),
                "delta": dp.delta_ppb / 1e9,
                "max_grad_norm": _ratio(dp.max_grad_norm_ppm),
            },
        },
    }


def _by_id(names: Any) -> list[str]:
    # The project's one order of participants: their ids encoded UTF-8.
    return sorted(set(names), key=lambda name: name.encode("utf-8"))


def federation_series(views: list[RoundView], policy: Any = None) -> dict[str, Any]:
    """What the compliance documents chart, one value per round of ``rounds`` (None: not recorded).

    ``evaluation``: the federated mean AUC and accuracy of each committed model;
    ``scores`` / ``tokens``: each institution's contribution score and reward (institutions
    accepted at least once); ``rejections``: how many replies each reason rejected;
    ``epsilon``: each institution's privacy spent so far (the sum of the ε it signed in
    its accepted rounds, as the contract counts it), only when some entry carries one,
    with ``epsilon_total`` the policy's budget.
    """
    views = sorted(views, key=lambda v: v.round)
    rounds = [v.round for v in views]
    means = [v.evaluation.mean_ppm() if v.evaluation is not None else {} for v in views]
    accepted_ids = _by_id(e.participant for v in views for e in v.record.entries if e.status == "accepted")
    reasons = sorted({e.reason for v in views for e in v.record.entries if e.status == "rejected" and e.reason})

    def entry(view: RoundView, participant: str) -> Any:
        return next((e for e in view.record.entries if e.participant == participant and e.status == "accepted"), None)

    scores = {p: [_ratio(getattr(entry(v, p), "score_ppm", None)) for v in views] for p in accepted_ids}
    tokens = {p: [None if v.rewards is None else int(v.rewards.get(p, 0)) for v in views] for p in accepted_ids}
    rejections = {reason: [sum(1 for e in v.record.entries if e.status == "rejected" and e.reason == reason)
                           for v in views] for reason in reasons}
    spent: dict[str, list[float | None]] = {}
    if any(getattr(e, "epsilon_ppm", None) is not None for v in views for e in v.record.entries):
        for p in accepted_ids:
            total, line = 0, []
            for v in views:
                total += getattr(entry(v, p), "epsilon_ppm", None) or 0
                line.append(total / 1e6)
            spent[p] = line
    dp = getattr(getattr(policy, "training", None), "dp", None)
    return {
        "rounds": rounds,
        "evaluation": {"auc": [_ratio(m.get("auc_ppm")) for m in means],
                       "accuracy": [_ratio(m.get("accuracy_ppm")) for m in means]},
        "scores": scores,
        "tokens": tokens,
        "rejections": rejections,
        "epsilon": spent,
        "epsilon_total": _ratio(dp.epsilon_total_ppm) if dp is not None else None,
    }


def federation_report(views: list[RoundView], audit: AuditReport, *, backend: str,
                      auditor_msp: str) -> dict[str, Any]:
    """The whole federation's compliance report as a JSON-ready dict: the verdict (every
    check of the audit passed and every round is compliant), the audit's problems and
    counters, the recorded policy, every round's :func:`round_report` and the chart series."""
    views = sorted(views, key=lambda v: v.round)
    rounds = [round_report(v, audit, backend=backend, auditor_msp=auditor_msp) for v in views]
    return {
        "federation": audit.federation,
        "ledger": {"backend": backend, "head": audit.head},
        "auditor_msp": auditor_msp,
        "compliant": audit.ok and all(r["compliant"] for r in rounds),
        "problems": list(audit.problems),
        "checks": {name: getattr(audit, name) for name in (
            "rounds", "signatures_checked", "aggregates_recomputed", "scores_recomputed", "rewards_recomputed",
            "evaluations_checked", "blocks_checked", "transactions_proven")},
        "unevaluated_rounds": list(audit.unevaluated_rounds),
        "policy": policy_report(audit.policy),
        "rounds": rounds,
        "series": federation_series(views, audit.policy),
    }


def round_document(federation: dict[str, Any], number: int) -> dict[str, Any]:
    """The federation report narrowed to round ``number``: its verdict and problems are the
    round's, its series that round's values (KeyError when the round is not in it)."""
    index = next((i for i, r in enumerate(federation["rounds"]) if r["round"] == number), None)
    if index is None:
        raise KeyError(f"round {number} is not in the report of federation {federation['federation']}")
    chosen = federation["rounds"][index]
    series = federation["series"]

    def at(values: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {k: [v[index]] for k, v in values.items()}

    return {
        **federation,
        "round": number,
        "compliant": chosen["compliant"],
        "problems": list(chosen["problems"]),
        "rounds": [chosen],
        "series": {**series, "rounds": [number], "evaluation": at(series["evaluation"]),
                   "scores": at(series["scores"]), "tokens": at(series["tokens"]),
                   "rejections": at(series["rejections"]), "epsilon": at(series["epsilon"])},
    }


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    """A one-page Markdown rendering of :func:`round_report`'s dict."""
    verdict = "COMPLIANT" if report["compliant"] else "NOT COMPLIANT"
    txs = report["transactions"]

    def where(t: dict[str, Any] | None) -> str:
        return "—" if t is None else f"`{t['tx_id'][:16]}…` in block {t['block_number']}"

    lines = [
        f"# Round {report['round']} of federation `{report['federation']}` — {verdict}",
        "",
        f"- Ledger: {report['ledger']['backend']}, read as `{report['auditor_msp']}`; head block "
        f"{report['ledger']['head'].get('block', '—')} `{report['ledger']['head'].get('hash', '—')}`",
        f"- Global model: `{report['base_model']}` → `{report['model']}` ({report['aggregation']})",
        f"- Scorer: `{report['scorer']['name']}`",
        f"- Data schema digest: `{report.get('data_schema_digest') or '—'}`; validation file digest: "
        f"`{report.get('validation_digest') or '—'}`",
        f"- RecordRound: {where(txs['record'])}; CommitModel: {where(txs['commit'])}; "
        f"IssueRewards: {where(txs['rewards'])}; RecordEvaluation: {where(txs.get('evaluation'))}",
        f"- {report['accepted']} accepted, {report['rejected']} rejected",
        "",
        "| participant | status | reason | score | examples | reward | manifest hash |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report["entries"]:
        score = "" if e["score"] is None else f"{e['score']:+.6f}"
        lines.append(
            f"| {e['participant']} | {e['status']} | {e['reason'] or ''} | {score} | "
            f"{e['num_examples'] if e['num_examples'] is not None else ''} | {e['reward']} | "
            f"{(e['manifest_hash'] or '')[:16]} |"
        )
    evaluation = report.get("evaluation")
    lines += ["", "## Federated evaluation of the committed model", ""]
    if evaluation is None:
        lines.append("- No evaluation is recorded for this round.")
    else:
        mean = evaluation["mean"]
        lines += [
            f"- Model `{evaluation['model']}`; examples-weighted mean over {mean['examples']} hold-out rows: "
            f"accuracy {_number(mean['accuracy'])}, AUC {_number(mean['auc'])}, "
            f"log-loss {_number(mean['log_loss'])}",
            "",
            "| participant | status | reason | accuracy | AUC | log-loss | examples | signature verified |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in evaluation["entries"]:
            checked = {True: "yes", False: "NO", None: ""}[e["signature_verified"]]
            lines.append(
                f"| {e['participant']} | {e['status']} | {e['reason'] or ''} | {_number(e['accuracy'])} | "
                f"{_number(e['auc'])} | {_number(e['log_loss'])} | "
                f"{e['examples'] if e['examples'] is not None else ''} | {checked} |"
            )
    lines += ["", "## Independent checks", ""]
    if report["problems"]:
        lines += [f"- PROBLEM: {p}" for p in report["problems"]]
    else:
        lines.append("- Every accepted signature verified against the registered certificate; every "
                     "update and model re-hashed; the aggregate, the scores and the rewards recomputed "
                     "and equal to what was committed; the ledger's hash chain intact.")
    return "\n".join(lines) + "\n"


def write_reports(reports: list[dict[str, Any]], directory: Path) -> list[Path]:
    """Write ``round-NNNN.md`` and ``round-NNNN.json`` for each report; return the paths."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for report in reports:
        stem = directory / f"round-{report['round']:04d}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        stem.with_suffix(".md").write_text(render_markdown(report))
        paths += [stem.with_suffix(".md"), stem.with_suffix(".json")]
    return paths
