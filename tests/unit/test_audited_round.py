"""One audited round end to end on the embedded ledger, and what happens when it fails.

The ClientApp is the real one (signing and adversary mods); the ledger is a real
embedded ledger on disk; only Flower's transport is absent (replies are handed to
``aggregate_train`` directly).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from fl.demo import SimulationResolver, demo_config, prepare_federation
from fl.records import to_arrays, to_record
from fl.resume import resume
from fl.server_app import coordinator_identity, identity_paths, initial_model
from fl.strategy import AuditedFedAvg, RoundFailed
from ledger.artifacts import ArtifactStore
from ledger.audit import audit_federation
from ledger.errors import LedgerUnavailable
from ledger.factory import open_ledger
from ledger.formats import update_digest
from ledger.pki import certificate_pem, load_certificate
from ledger.records import Identity
from tests.fixtures.flower import client_replies, task_identity  # noqa: F401

SETTINGS = {"local-epochs": 1, "learning-rate": 0.05, "batch-size": 64, "seed": 3}


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


def strategy(cfg, ledger) -> AuditedFedAvg:
    return AuditedFedAvg(ledger=ledger, artifacts=ArtifactStore(cfg.artifacts_path), federation=cfg.id,
                         train_settings=SETTINGS, expected_nodes=3)


def play_round(cfg, strat: AuditedFedAvg, base, adversaries=None, server_round: int = 1):
    config = strat.begin_round(server_round, base)
    replies = client_replies(SimulationResolver(cfg, adversaries or {}), base, config, 3)
    return strat.aggregate_train(server_round, replies)


def auditor(cfg) -> Identity:
    _, cert = identity_paths(cfg, "auditor", "AuditorMSP")
    return Identity(msp_id="AuditorMSP", cert_pem=certificate_pem(load_certificate(cert)))


def test_round_is_recorded_and_committed_before_the_model_is_released(federation):
    cfg, ledger = federation
    base = initial_model(cfg)
    arrays, metrics = play_round(cfg, strategy(cfg, ledger), base, {"bank-c": "nan"})
    view = ledger.get_round(cfg.id, 1)
    assert view.commit is not None and view.commit.model == update_digest(to_arrays(arrays))
    assert {e.participant: e.reason for e in view.record.entries} == {
        "bank-a": None, "bank-b": None, "bank-c": "non_finite"}
    assert view.commit.accepted == ["bank-a", "bank-b"]
    assert all(e.score_ppm is not None for e in view.record.accepted())
    assert metrics["num-examples"] == sum(view.commit.weights.values())
    report = audit_federation(ledger.with_identity(auditor(cfg)), cfg.id, ArtifactStore(cfg.artifacts_path))
    assert report.ok, report.problems
    assert report.signatures_checked == 2 and report.aggregates_recomputed == 1


def test_a_failed_record_write_stops_the_round_and_releases_nothing(federation):
    cfg, ledger = federation
    strat = strategy(cfg, FailingLedger(ledger, "record_round"))
    with pytest.raises(RoundFailed, match="RecordRound was not committed"):
        play_round(cfg, strat, initial_model(cfg))
    assert ledger.list_rounds(cfg.id) == []
    assert strat.summaries == []


def test_a_failed_commit_stops_the_round_and_a_restart_completes_it_from_the_ledger(federation):
    cfg, ledger = federation
    base = initial_model(cfg)
    ArtifactStore(cfg.artifacts_path).put(base)
    with pytest.raises(RoundFailed, match="CommitModel was not committed"):
        play_round(cfg, strategy(cfg, FailingLedger(ledger, "commit_model")), base)
    assert ledger.get_round(cfg.id, 1).commit is None
    state = resume(ledger, cfg.id, ArtifactStore(cfg.artifacts_path), base)
    assert state.completed == 1
    committed = ledger.get_round(cfg.id, 1).commit
    assert committed is not None and committed.model == state.model
    # Resuming again changes nothing, and the next round builds on the completed one.
    assert resume(ledger, cfg.id, ArtifactStore(cfg.artifacts_path), base).model == state.model
    strat = strategy(cfg, ledger)
    strat.round_offset = state.completed
    play_round(cfg, strat, dict(state.arrays))
    assert [v.round for v in ledger.list_rounds(cfg.id)] == [1, 2]
    report = audit_federation(ledger.with_identity(auditor(cfg)), cfg.id, ArtifactStore(cfg.artifacts_path))
    assert report.ok, report.problems


def test_a_round_where_everyone_is_rejected_commits_the_unchanged_model(federation):
    cfg, ledger = federation
    base = initial_model(cfg)
    adversaries = {"bank-a": "tamper", "bank-b": "shape", "bank-c": "foreign-key"}
    arrays, _ = play_round(cfg, strategy(cfg, ledger), base, adversaries)
    assert update_digest(to_arrays(arrays)) == update_digest(base)
    view = ledger.get_round(cfg.id, 1)
    assert view.commit.accepted == [] and view.commit.model == update_digest(base)
    assert sorted(e.reason for e in view.record.entries) == ["bad_signature", "digest_mismatch", "wrong_shape"]
    report = audit_federation(ledger.with_identity(auditor(cfg)), cfg.id, ArtifactStore(cfg.artifacts_path))
    assert report.ok, report.problems
    assert report.signatures_checked == 1  # the foreign-key rejection was re-checked


def test_audit_finds_a_stored_update_that_was_swapped(federation):
    cfg, ledger = federation
    play_round(cfg, strategy(cfg, ledger), initial_model(cfg))
    store = ArtifactStore(cfg.artifacts_path)
    victim = ledger.get_round(cfg.id, 1).record.accepted()[0].update
    path = store.path(victim)
    other = store.path(ledger.get_round(cfg.id, 1).record.accepted()[1].update)
    path.write_bytes(other.read_bytes())
    report = audit_federation(ledger.with_identity(auditor(cfg)), cfg.id, store)
    assert not report.ok
    assert any("update unavailable" in p and "hashes to" in p for p in report.problems)


class DishonestCoordinator:
    """A real ledger behind a coordinator that bends what it writes (the contract cannot tell)."""

    def __init__(self, inner, *, record=None, commit=None) -> None:
        self.inner, self._record, self._commit = inner, record, commit

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def record_round(self, fed, round_no, record):
        return self.inner.record_round(fed, round_no, self._record(record) if self._record else record)

    def commit_model(self, fed, round_no, commit):
        return self.inner.commit_model(fed, round_no, self._commit(commit) if self._commit else commit)


def audit(cfg, ledger):
    return audit_federation(ledger.with_identity(auditor(cfg)), cfg.id, ArtifactStore(cfg.artifacts_path))


def test_audit_catches_a_committed_model_that_is_not_the_aggregate(federation):
    cfg, ledger = federation
    store = ArtifactStore(cfg.artifacts_path)
    base = initial_model(cfg)
    forged = store.put({k: v * 2 for k, v in base.items()})
    dishonest = DishonestCoordinator(ledger, commit=lambda c: c.model_copy(update={"model": forged}))
    play_round(cfg, strategy(cfg, dishonest), base)
    problems = audit(cfg, ledger).problems
    assert any("recomputed model" in p and "differs from committed" in p for p in problems), problems


def test_audit_catches_inflated_scores_and_rewards_that_do_not_follow_the_policy(federation):
    cfg, ledger = federation

    def inflate(record):
        entries = [e.model_copy(update={"score_ppm": 1_000_000}) if e.participant == "bank-c" else e
                   for e in record.entries]
        return record.model_copy(update={"entries": entries})

    play_round(cfg, strategy(cfg, DishonestCoordinator(ledger, record=inflate)), initial_model(cfg))
    ledger.issue_rewards(cfg.id, 1, {"bank-a": 0, "bank-b": 0, "bank-c": 999})  # the policy pays out the budget
    problems = audit(cfg, ledger).problems
    assert any("bank-c: recorded score 1000000" in p for p in problems), problems
    assert any("issued rewards" in p for p in problems), problems


def test_audit_catches_an_honest_update_rejected_as_a_bad_signature(federation):
    cfg, ledger = federation

    def reject_c(record):
        entries = [e.model_copy(update={"status": "rejected", "reason": "bad_signature", "score_ppm": None})
                   if e.participant == "bank-c" else e for e in record.entries]
        return record.model_copy(update={"entries": entries})

    def drop_c(commit):
        return commit.model_copy(update={"accepted": [p for p in commit.accepted if p != "bank-c"],
                                         "weights": {p: w for p, w in commit.weights.items() if p != "bank-c"}})

    play_round(cfg, strategy(cfg, DishonestCoordinator(ledger, record=reject_c, commit=drop_c)), initial_model(cfg))
    problems = audit(cfg, ledger).problems
    assert any("bank-c: rejected as bad_signature but the signature verifies" in p for p in problems), problems


def test_a_changed_initial_model_is_refused_before_round_one(federation):
    from fl.resume import ResumeError

    cfg, ledger = federation
    other = {k: v + 1 for k, v in initial_model(cfg).items()}
    with pytest.raises(ResumeError, match="not the one federation demo-fed was created with"):
        resume(ledger, cfg.id, ArtifactStore(cfg.artifacts_path), other)


def test_compliance_report_states_each_participant_and_the_independent_checks(federation, tmp_path):
    from ledger.incentives import issue_pending_rewards
    from ledger.reports import render_markdown, round_report, write_reports

    cfg, ledger = federation
    play_round(cfg, strategy(cfg, ledger), initial_model(cfg), {"bank-b": "shape"})
    issue_pending_rewards(ledger, cfg.id)
    report = round_report(ledger.get_round(cfg.id, 1), audit(cfg, ledger), backend="embedded",
                          auditor_msp="AuditorMSP")
    assert report["compliant"] is True and report["problems"] == []
    assert {e["participant"]: (e["status"], e["reason"]) for e in report["entries"]} == {
        "bank-a": ("accepted", None), "bank-b": ("rejected", "wrong_shape"), "bank-c": ("accepted", None)}
    assert sum(e["reward"] for e in report["entries"]) == 1000
    assert report["transactions"]["commit"]["block_number"] == report["transactions"]["record"]["block_number"] + 1
    text = render_markdown(report)
    assert "COMPLIANT" in text and "| bank-b | rejected | wrong_shape |" in text
    paths = write_reports([report], tmp_path / "reports")
    assert sorted(p.name for p in paths) == ["round-0001.json", "round-0001.md"]


def test_compliance_report_of_a_forged_round_is_not_compliant(federation):
    from ledger.reports import render_markdown, round_report

    cfg, ledger = federation
    store = ArtifactStore(cfg.artifacts_path)
    forged = store.put({k: v * 2 for k, v in initial_model(cfg).items()})
    play_round(cfg, strategy(cfg, DishonestCoordinator(ledger, commit=lambda c: c.model_copy(update={"model": forged}))),
               initial_model(cfg))
    report = round_report(ledger.get_round(cfg.id, 1), audit(cfg, ledger), backend="embedded",
                          auditor_msp="AuditorMSP")
    assert report["compliant"] is False
    assert any("differs from committed" in p for p in report["problems"])
    assert "NOT COMPLIANT" in render_markdown(report)


class FakeGrid:
    """The two Grid calls configure_train makes: connected node ids, and node keys."""

    def __init__(self, nodes: dict[int, bytes]) -> None:
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)

    def get_nodes(self):
        from types import SimpleNamespace

        return [SimpleNamespace(node_id=n, public_key=k) for n, k in self.nodes.items()]


def test_with_node_binding_rounds_go_only_to_active_participants_and_replies_are_bound(federation):
    from fl.deploy.binding import NodeDirectory
    from ledger.pki import load_certificate, spki_pem

    cfg, ledger = federation
    keys = {pid: spki_pem(load_certificate(identity_paths(cfg, pid, f"Bank{pid[-1].upper()}MSP")[1]))
            for pid in ("bank-a", "bank-b", "bank-c")}
    grid = FakeGrid({100: keys["bank-a"], 101: keys["bank-b"], 102: keys["bank-c"], 103: b"unknown key"})
    ledger.revoke_participant(cfg.id, "bank-c", "test")
    strat = AuditedFedAvg(ledger=ledger, artifacts=ArtifactStore(cfg.artifacts_path), federation=cfg.id,
                          train_settings=SETTINGS, expected_nodes=3, node_directory=NodeDirectory())
    messages = strat.configure_train(1, to_record(initial_model(cfg)), ConfigRecord(), grid)
    assert sorted(m.metadata.dst_node_id for m in messages) == [100, 101]
    assert strat.min_available_nodes == 2  # the quorum shrank with the revocation
    assert strat.node_owner("101") == "bank-b" and strat.node_owner("103") is None
    # bank-b's reply arriving from bank-a's node is refused, whatever its signature.
    replies = client_replies(SimulationResolver(cfg, {}), initial_model(cfg),
                             {**SETTINGS, "federation": cfg.id, "round": 1}, 2)
    swapped = [_from_node(replies[0], 101), _from_node(replies[1], 100)]
    strat.aggregate_train(1, swapped)
    entries = ledger.get_round(cfg.id, 1).record.entries
    assert {(e.participant, e.reason) for e in entries} == {("bank-a", "node_mismatch"), ("bank-b", "node_mismatch")}


def test_a_round_with_no_active_participant_fails_instead_of_committing_nothing(federation):
    cfg, ledger = federation
    for pid in ("bank-a", "bank-b", "bank-c"):
        ledger.revoke_participant(cfg.id, pid, "test")
    strat = strategy(cfg, ledger)
    with pytest.raises(RoundFailed, match="no participant is active"):
        strat.configure_train(1, to_record(initial_model(cfg)), ConfigRecord(), FakeGrid({}))
    assert ledger.list_rounds(cfg.id) == []


def _from_node(reply, node_id: int):
    from flwr.app import Message, RecordDict

    return Message(RecordDict(dict(reply.content.items())),
                   reply_to=Message(RecordDict(), dst_node_id=node_id, message_type="train"))


def test_a_node_that_was_asked_and_never_answered_is_recorded_as_no_reply(federation):
    cfg, ledger = federation
    strat = strategy(cfg, ledger)
    grid = FakeGrid({100: b"", 101: b"", 102: b""})
    messages = list(strat.configure_train(1, to_record(initial_model(cfg)), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [100, 101, 102]
    config = {**SETTINGS, "federation": cfg.id, "round": 1}
    replies = client_replies(SimulationResolver(cfg, {}), initial_model(cfg), config, 2)  # nodes 100, 101
    strat.aggregate_train(1, replies)
    entries = ledger.get_round(cfg.id, 1).record.entries
    assert [(e.participant, e.reason, e.node) for e in entries if e.status == "rejected"] == [
        ("(node 102)", "no_reply", "102")]
    assert sorted(e.participant for e in entries if e.status == "accepted") == ["bank-a", "bank-b"]
