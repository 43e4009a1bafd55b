"""Federated evaluation: the hold-out split, signed evaluate replies, the coordinator's
checks, ``RecordEvaluation`` on a real embedded ledger, the audit and the report.

The ClientApp is the real one (its evaluate handler and signing mod); the ledger is a
real embedded ledger on disk; only Flower's transport is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fl.client_app import make_client_app
from fl.demo import SimulationResolver, demo_config, prepare_federation
from fl.evaluation import holdout_split, metrics_ppm
from fl.records import to_record
from fl.resume import resume
from fl.server_app import coordinator_identity, identity_paths, initial_model
from fl.strategy import AuditedFedAvg, RoundFailed, append_jsonl
from ledger.artifacts import ArtifactStore
from ledger.audit import audit_federation
from ledger.errors import LedgerUnavailable
from ledger.factory import open_ledger
from ledger.formats import EvaluationManifest, sign
from ledger.pki import certificate_pem, load_certificate, load_private_key
from ledger.records import Identity
from tests.fixtures.flower import client_replies, task_identity  # noqa: F401

SETTINGS = {"local-epochs": 1, "learning-rate": 0.05, "batch-size": 64, "seed": 3}


# --- the hold-out split ---------------------------------------------------------------


def test_the_holdout_split_is_deterministic_stratified_and_disjoint() -> None:
    y = np.array([0] * 80 + [1] * 20, dtype=np.float32)
    X = np.arange(100, dtype=np.float32).reshape(100, 1)

    X_tr, y_tr, X_ho, y_ho = holdout_split(X, y, 0.2, seed=7)
    again = holdout_split(X, y, 0.2, seed=7)
    other = holdout_split(X, y, 0.2, seed=8)

    assert (len(y_tr), len(y_ho)) == (80, 20)
    assert (int((y_ho == 1).sum()), int((y_ho == 0).sum())) == (4, 16)
    assert set(X_tr[:, 0]) | set(X_ho[:, 0]) == set(range(100)) and not set(X_tr[:, 0]) & set(X_ho[:, 0])
    assert all(np.array_equal(a, b) for a, b in zip(again, (X_tr, y_tr, X_ho, y_ho), strict=True))
    assert not np.array_equal(other[2], X_ho)


def test_a_tiny_file_still_trains_and_holds_out_both_classes_when_it_can() -> None:
    X = np.zeros((3, 2), dtype=np.float32)

    _, y_tr, _, y_ho = holdout_split(X, np.array([0, 0, 1], dtype=np.float32), 0.2, seed=1)
    _, y_tr2, _, y_ho2 = holdout_split(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 0.2, seed=1)

    assert sorted(y_tr) == [0, 1] and list(y_ho) == [0]  # the single positive row keeps training
    assert sorted(y_tr2) == [0, 1] and sorted(y_ho2) == [0, 1]


def test_metrics_are_integer_millionths_and_auc_is_absent_for_one_class() -> None:
    result = {"accuracy": 0.8123456, "auc": 0.5, "loss": 0.4}

    assert metrics_ppm(result, [0, 1]) == {"accuracy_ppm": 812_346, "auc_ppm": 500_000, "log_loss_ppm": 400_000}
    assert metrics_ppm(result, [1, 1])["auc_ppm"] is None
    assert metrics_ppm({**result, "loss": float("inf")}, [0, 1])["log_loss_ppm"] == 100_000_000


# --- a round with its evaluation, end to end ------------------------------------------


@pytest.fixture
def federation(tmp_path: Path):
    cfg = demo_config(tmp_path / "fed", rounds=3, participants=3)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    ledger = open_ledger(cfg.ledger_config, coordinator_identity(cfg))
    yield cfg, ledger
    ledger.close()


class FailingLedger:
    """Wraps a real ledger; one write method raises as an unreachable ledger would."""

    def __init__(self, inner, fail: str) -> None:
        self.inner, self.fail = inner, fail

    def __getattr__(self, name):
        if name == self.fail:
            def refuse(*args, **kwargs):
                raise LedgerUnavailable(f"{name}: peer unreachable")
            return refuse
        return getattr(self.inner, name)


def strategy(cfg, ledger, **kw) -> AuditedFedAvg:
    return AuditedFedAvg(ledger=ledger, artifacts=ArtifactStore(cfg.artifacts_path), federation=cfg.id,
                         train_settings=SETTINGS, expected_nodes=3, **kw)


def train_round(cfg, strat: AuditedFedAvg, base, server_round: int = 1):
    config = strat.begin_round(server_round, base)
    strat._sent = {str(100 + i) for i in range(3)}
    strat._sent_ids = [100 + i for i in range(3)]
    arrays, _ = strat.aggregate_train(server_round, client_replies(SimulationResolver(cfg, {}), base, config, 3))
    return arrays


def evaluate_messages(strat: AuditedFedAvg, arrays, server_round: int = 1) -> list[Message]:
    return list(strat.configure_evaluate(server_round, arrays, ConfigRecord(), grid=None))  # type: ignore[arg-type]


def answer(cfg, messages: list[Message]) -> list[Message]:
    """Each addressed node's real ClientApp answers its evaluate message."""
    app = make_client_app(SimulationResolver(cfg, {}))
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        ctx = Context(run_id=1, node_id=node, node_config={"partition-id": node - 100, "num-partitions": 3},
                      state=RecordDict(), run_config={})
        replies.append(app(msg, ctx))
    return replies


def auditor(cfg) -> Identity:
    _, cert = identity_paths(cfg, "auditor", "AuditorMSP")
    return Identity(msp_id="AuditorMSP", cert_pem=certificate_pem(load_certificate(cert)))


def audit(cfg, ledger):
    return audit_federation(ledger.with_identity(auditor(cfg)), cfg.id, ArtifactStore(cfg.artifacts_path))


def key_of(cfg, participant: str):
    msp = next(p.msp_id for p in cfg.participants if p.id == participant)
    return load_private_key(identity_paths(cfg, participant, msp)[0])


def test_every_institution_evaluates_the_committed_model_and_the_round_log_carries_it(federation, tmp_path):
    cfg, ledger = federation
    log_path = tmp_path / "rounds.jsonl"
    strat = strategy(cfg, ledger, on_round=append_jsonl(log_path))
    arrays = train_round(cfg, strat, initial_model(cfg))
    assert strat.summaries[0].evaluation is None and not log_path.exists()  # written only once evaluated

    messages = evaluate_messages(strat, arrays)
    metrics = strat.aggregate_evaluate(1, answer(cfg, messages))

    view = ledger.get_round(cfg.id, 1)
    assert [m.metadata.dst_node_id for m in messages] == [100, 101, 102]
    assert messages[0].content["config"]["model"] == view.commit.model
    assert view.evaluation is not None and view.evaluation.model == view.commit.model
    assert [e.participant for e in view.evaluation.accepted()] == ["bank-a", "bank-b", "bank-c"]
    line = json.loads(log_path.read_text())
    assert set(line["evaluation"]) == {"bank-a", "bank-b", "bank-c"}
    assert line["evaluation_tx"] == view.evaluation_tx.tx_id and line["evaluation_block"] > line["commit_block"]
    mean = view.evaluation.mean_ppm()
    assert line["evaluation_mean"]["accuracy"] == mean["accuracy_ppm"] / 1e6 == metrics["accuracy"]
    assert line["evaluation_mean"]["examples"] == sum(e["examples"] for e in line["evaluation"].values())
    report = audit(cfg, ledger)
    assert report.ok, report.problems
    assert report.evaluations_checked == 3 and report.unevaluated_rounds == []


def _tampered(cfg, replies: list[Message]) -> list[Message]:
    """bank-a inflates its accuracy after signing; bank-b's evaluation is signed with bank-c's key."""
    out = []
    for reply in replies:
        manifest = EvaluationManifest.parse(reply.content["audit"]["manifest"])
        if manifest.participant == "bank-a":
            reply.content["metrics"]["accuracy-ppm"] = 999_999
            forged = EvaluationManifest(**{**manifest.__dict__, "accuracy_ppm": 999_999})
            reply.content["audit"] = ConfigRecord({"manifest": forged.to_bytes().decode(),
                                                   "signature": reply.content["audit"]["signature"]})
        if manifest.participant == "bank-b":
            reply.content["audit"] = ConfigRecord({"manifest": manifest.to_bytes().decode(),
                                                   "signature": sign(manifest.to_bytes(), key_of(cfg, "bank-c"))})
        out.append(reply)
    return out


def test_a_tampered_evaluation_and_one_signed_with_another_key_are_rejected_and_recorded(federation):
    cfg, ledger = federation
    strat = strategy(cfg, ledger)
    arrays = train_round(cfg, strat, initial_model(cfg))

    strat.aggregate_evaluate(1, _tampered(cfg, answer(cfg, evaluate_messages(strat, arrays))))

    evaluation = ledger.get_round(cfg.id, 1).evaluation
    assert {e.participant: (e.status, e.reason) for e in evaluation.entries} == {
        "bank-a": ("rejected", "bad_signature"), "bank-b": ("rejected", "bad_signature"),
        "bank-c": ("accepted", None)}
    assert strat.summaries[0].evaluation.keys() == {"bank-c"}
    assert {r["participant"] for r in strat.summaries[0].evaluation_rejected} == {"bank-a", "bank-b"}
    assert audit(cfg, ledger).ok


def test_an_evaluation_of_another_model_is_rejected_as_wrong_model(federation):
    cfg, ledger = federation
    strat = strategy(cfg, ledger)
    base = initial_model(cfg)
    train_round(cfg, strat, base)
    messages = evaluate_messages(strat, to_record(base))  # the old model, not the committed one

    strat.aggregate_evaluate(1, answer(cfg, messages))

    reasons = {e.reason for e in ledger.get_round(cfg.id, 1).evaluation.entries}
    assert reasons == {"wrong_model"}


def test_a_round_nobody_evaluates_records_every_asked_node_as_no_reply(federation):
    cfg, ledger = federation
    strat = strategy(cfg, ledger)
    train_round(cfg, strat, initial_model(cfg))

    strat.aggregate_evaluate(1, [])

    evaluation = ledger.get_round(cfg.id, 1).evaluation
    assert [e.reason for e in evaluation.entries] == ["no_reply"] * 3 and evaluation.accepted() == []
    assert strat.summaries[0].evaluation == {}


def test_a_failed_evaluation_write_stops_the_run_and_a_restart_continues_without_it(federation, tmp_path):
    cfg, ledger = federation
    base = initial_model(cfg)
    log_path = tmp_path / "rounds.jsonl"
    strat = strategy(cfg, FailingLedger(ledger, "record_evaluation"), on_round=append_jsonl(log_path))
    arrays = train_round(cfg, strat, base)

    with pytest.raises(RoundFailed, match="RecordEvaluation was not committed"):
        strat.aggregate_evaluate(1, answer(cfg, evaluate_messages(strat, arrays)))

    assert ledger.get_round(cfg.id, 1).evaluation is None
    assert json.loads(log_path.read_text())["evaluation_error"].startswith("RecordEvaluation was not committed")
    # The restart resumes from the committed model; round 1 keeps no evaluation and the
    # contract refuses one once round 2 is recorded, so it is never back-filled.
    state = resume(ledger, cfg.id, ArtifactStore(cfg.artifacts_path), base)
    assert state.completed == 1
    again = strategy(cfg, ledger, round_offset=1)
    arrays2 = train_round(cfg, again, dict(state.arrays))
    again.aggregate_evaluate(1, answer(cfg, evaluate_messages(again, arrays2)))
    views = ledger.list_rounds(cfg.id)
    assert [v.evaluation is not None for v in views] == [False, True]
    report = audit(cfg, ledger)
    assert report.ok, report.problems
    assert report.unevaluated_rounds == [1]


def test_no_evaluation_is_asked_for_when_the_policy_holds_nothing_out(federation):
    cfg, ledger = federation
    strat = strategy(cfg, ledger, eval_fraction_ppm=0)
    arrays = train_round(cfg, strat, initial_model(cfg))

    assert evaluate_messages(strat, arrays) == [] and len(strat.summaries) == 1
    assert strat.aggregate_evaluate(1, []) is None


# --- audit and report -------------------------------------------------------------------


class ForgedEvaluationView:
    """A ledger whose round views were altered after the fact (a compromised copy)."""

    def __init__(self, inner, change) -> None:
        self.inner, self.change = inner, change

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def list_rounds(self, fed):
        return [self.change(v) for v in self.inner.list_rounds(fed)]


def test_audit_flags_an_evaluation_whose_signature_does_not_verify(federation):
    cfg, ledger = federation
    strat = strategy(cfg, ledger)
    arrays = train_round(cfg, strat, initial_model(cfg))
    strat.aggregate_evaluate(1, answer(cfg, evaluate_messages(strat, arrays)))

    def resign_a_with_c(view):
        entries = [e.model_copy(update={"signature": sign(e.manifest.encode(), key_of(cfg, "bank-c"))})
                   if e.participant == "bank-a" else e for e in view.evaluation.entries]
        return view.model_copy(update={"evaluation": view.evaluation.model_copy(update={"entries": entries})})

    report = audit_federation(ForgedEvaluationView(ledger.with_identity(auditor(cfg)), resign_a_with_c), cfg.id,
                              ArtifactStore(cfg.artifacts_path))

    assert not report.ok
    assert any("round 1 evaluation of bank-a: signature does not verify" in p for p in report.problems)
    assert report.evaluation_verified[1] == {"bank-a": False, "bank-b": True, "bank-c": True}


def test_the_compliance_report_shows_each_institutions_signed_metrics_and_the_mean(federation):
    from ledger.reports import render_markdown, round_report

    cfg, ledger = federation
    strat = strategy(cfg, ledger)
    arrays = train_round(cfg, strat, initial_model(cfg))
    strat.aggregate_evaluate(1, _tampered(cfg, answer(cfg, evaluate_messages(strat, arrays))))

    report = round_report(ledger.get_round(cfg.id, 1), audit(cfg, ledger), backend="embedded",
                          auditor_msp="AuditorMSP")

    evaluation = report["evaluation"]
    by_id = {e["participant"]: e for e in evaluation["entries"]}
    assert by_id["bank-c"]["signature_verified"] is True and 0 < by_id["bank-c"]["accuracy"] <= 1
    assert by_id["bank-a"]["reason"] == "bad_signature" and by_id["bank-a"]["signature_verified"] is None
    assert evaluation["mean"]["examples"] == by_id["bank-c"]["examples"]
    assert report["data_schema_digest"] == ledger.get_federation(cfg.id).policy.data_schema_digest
    assert report["transactions"]["evaluation"]["tx_id"] == ledger.get_round(cfg.id, 1).evaluation_tx.tx_id
    text = render_markdown(report)
    assert "## Federated evaluation of the committed model" in text
    assert f"| bank-c | accepted |  | {by_id['bank-c']['accuracy']:.4f} |" in text and "| yes |" in text
    assert json.loads(json.dumps(report)) == report  # the JSON form carries it too
