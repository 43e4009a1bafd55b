"""Rounds under each policy the coordinator can be given — scorer, aggregation rule,
free-riding checks, compression — played through the real ClientApp and the audited
strategy on an embedded ledger, then audited: the auditor recomputes every decision, and
catches a coordinator that records one it did not compute."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fl.demo import SimulationResolver, demo_config, prepare_federation, with_policy
from fl.records import to_arrays, to_record
from fl.server_app import coordinator_identity, identity_paths, initial_model, training_settings
from fl.strategy import AuditedFedAvg, RoundFailed
from ledger import admission
from ledger.artifacts import ArtifactStore
from ledger.audit import audit_federation
from ledger.compression import SCALE_SUFFIX
from ledger.factory import open_ledger
from ledger.formats import Manifest, sign, update_digest
from ledger.pki import certificate_pem, load_certificate, load_private_key
from ledger.records import Identity
from tests.fixtures.flower import client_replies, task_identity  # noqa: F401

SETTINGS = {"local-epochs": 1, "learning-rate": 0.05, "batch-size": 64, "seed": 3}
BANKS = 4


def federation_with(tmp_path: Path, **policy):
    cfg = with_policy(demo_config(tmp_path / "fed", rounds=3, participants=BANKS), policy)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    return cfg, open_ledger(cfg.ledger_config, coordinator_identity(cfg))


def strategy(cfg, ledger) -> AuditedFedAvg:
    fed = ledger.get_federation(cfg.id)
    return AuditedFedAvg(ledger=ledger, artifacts=ArtifactStore(cfg.artifacts_path), federation=cfg.id,
                         train_settings={**SETTINGS, **training_settings(fed.policy.training)},
                         expected_nodes=BANKS, scorer=fed.policy.scorer, aggregation=fed.policy.aggregation)


def play(cfg, strat, rounds: int, adversaries=None, tamper=None):
    """Play ``rounds`` rounds; ``tamper(replies)`` may change the replies of each."""
    arrays, states = initial_model(cfg), {}
    for server_round in range(1, rounds + 1):
        config = strat.begin_round(server_round, arrays)
        replies = client_replies(SimulationResolver(cfg, adversaries or {}), arrays, config, BANKS, states)
        if tamper is not None:
            replies = tamper(replies)
        record, _ = strat.aggregate_train(server_round, replies)
        arrays = to_arrays(record)
    return strat.summaries


def audit(cfg, ledger):
    _, cert = identity_paths(cfg, "auditor", "AuditorMSP")
    auditor = Identity(msp_id="AuditorMSP", cert_pem=certificate_pem(load_certificate(cert)))
    return audit_federation(ledger.with_identity(auditor), cfg.id, ArtifactStore(cfg.artifacts_path))


@pytest.mark.parametrize("scorer", ["loo", "shapley"])
def test_validation_scorers_are_recorded_with_their_inputs_and_recomputed_by_the_audit(tmp_path, scorer):
    cfg, ledger = federation_with(tmp_path, scorer=scorer)
    try:
        summaries = play(cfg, strategy(cfg, ledger), 2)
        view = ledger.get_round(cfg.id, 2)
        assert view.record.scorer.name == scorer
        digest = view.record.scorer.validation_digest
        assert digest is not None and ArtifactStore(cfg.artifacts_path).get(digest)["x"].shape[0] > 100
        assert any(score != 0 for s in summaries for score in s.scores.values())
        report = audit(cfg, ledger)
        assert report.ok, report.problems
        assert report.scores_recomputed == 2
    finally:
        ledger.close()


def test_audit_catches_a_coordinator_recording_inflated_shapley_values(tmp_path):
    cfg, ledger = federation_with(tmp_path, scorer="shapley")

    class Inflating:
        def __getattr__(self, name):
            return getattr(ledger, name)

        def record_round(self, fed, round_no, record):
            entries = [e.model_copy(update={"score_ppm": min(1_000_000, (e.score_ppm or 0) + 50_000)})
                       if e.participant == "bank-b" else e for e in record.entries]
            return ledger.record_round(fed, round_no, record.model_copy(update={"entries": entries}))

    try:
        play(cfg, strategy(cfg, Inflating()), 1)
        problems = audit(cfg, ledger).problems
        assert any(p.startswith("round 1 bank-b: recorded score") for p in problems), problems
        assert not any("bank-a" in p or "bank-c" in p for p in problems), problems
    finally:
        ledger.close()


def test_free_rider_and_copier_are_rejected_with_stable_reasons_and_the_audit_agrees(tmp_path):
    cfg, ledger = federation_with(tmp_path)
    try:
        summaries = play(cfg, strategy(cfg, ledger), 2, {"bank-c": "free-rider", "bank-d": "copier"})
        reasons = [{r["participant"]: r["reason"] for r in s.rejected} for s in summaries]
        # In round 1 there is no global step to copy yet: the copier returns the base model.
        assert reasons == [{"bank-c": "no_training", "bank-d": "no_training"},
                           {"bank-c": "no_training", "bank-d": "copied_update"}]
        assert summaries[-1].accepted == ["bank-a", "bank-b"]
        report = audit(cfg, ledger)
        assert report.ok, report.problems
    finally:
        ledger.close()


def test_audit_catches_a_coordinator_that_lets_a_free_rider_through(tmp_path, monkeypatch):
    cfg, ledger = federation_with(tmp_path)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(admission, "free_riders", lambda *args, **kwargs: {})
            summaries = play(cfg, strategy(cfg, ledger), 1, {"bank-c": "free-rider"})
        assert "bank-c" in summaries[0].accepted
        problems = audit(cfg, ledger).problems
        assert any("round 1 bank-c: accepted, but the round's tests reject it as no_training" in p
                   for p in problems), problems
    finally:
        ledger.close()


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "multi-krum"])
def test_robust_rules_are_recomputed_bit_for_bit_by_the_audit(tmp_path, rule):
    params = {"trimmed-mean": {"trim_ppm": 250_000}, "multi-krum": {"byzantine": 1}}.get(rule, {})
    cfg, ledger = federation_with(tmp_path, aggregation=rule, aggregation_params=params)
    try:
        play(cfg, strategy(cfg, ledger), 2)
        view = ledger.get_round(cfg.id, 2)
        assert view.commit.aggregation == rule
        report = audit(cfg, ledger)
        assert report.ok, report.problems
        assert report.aggregates_recomputed == 2
    finally:
        ledger.close()


def test_multi_krum_discards_are_recorded_and_a_selection_the_coordinator_did_not_compute_is_caught(
        tmp_path, monkeypatch):
    cfg, ledger = federation_with(tmp_path, aggregation="multi-krum", aggregation_params={"byzantine": 1,
                                                                                          "keep": 3})
    try:
        summaries = play(cfg, strategy(cfg, ledger), 1)
        discarded = [r for r in summaries[0].rejected if r["reason"] == "robust_discarded"]
        assert len(discarded) == 1 and "multi-Krum score" in discarded[0]["detail"]
        assert audit(cfg, ledger).ok
        real, picked = admission.krum_discards, []

        def elsewhere(base, updates, params):
            """Discard one update multi-Krum keeps, and keep the one it discards."""
            kept = sorted(u.participant for u in updates if u.participant not in real(base, updates, params))
            picked.append(kept[0])
            return {kept[0]: "multi-Krum score 9.99e+99 is not among the 3 lowest (f=1)"}

        with monkeypatch.context() as patched:
            patched.setattr(admission, "krum_discards", elsewhere)
            second = strategy(cfg, ledger)
            second.round_offset = 1
            base = ArtifactStore(cfg.artifacts_path).get(ledger.get_round(cfg.id, 1).commit.model)
            config = second.begin_round(1, base)
            second.aggregate_train(1, client_replies(SimulationResolver(cfg, {}), base, config, BANKS))
        victim = picked[0]
        problems = audit(cfg, ledger).problems
        assert any(f"round 2 {victim}: rejected as robust_discarded, which the evidence does not support" in p
                   for p in problems), problems
        assert any("accepted, but the round's tests reject it as robust_discarded" in p for p in problems), problems
        assert not any(p.startswith("round 1") for p in problems), problems
    finally:
        ledger.close()


def test_int8_updates_are_signed_stored_and_recomputed_in_their_compressed_form(tmp_path):
    cfg, ledger = federation_with(tmp_path, training={"compression": "int8"})
    try:
        play(cfg, strategy(cfg, ledger), 2)
        store = ArtifactStore(cfg.artifacts_path)
        entry = ledger.get_round(cfg.id, 2).record.accepted()[0]
        sent = store.get(entry.update)
        assert update_digest(sent) == entry.update
        assert any(name.endswith(SCALE_SUFFIX) for name in sent)
        assert all(a.dtype == np.int8 for n, a in sent.items() if not n.endswith(SCALE_SUFFIX))
        assert Manifest.parse(entry.manifest).claim().compression == "int8"
        report = audit(cfg, ledger)
        assert report.ok, report.problems
        assert report.aggregates_recomputed == 2
    finally:
        ledger.close()


def _resign(cfg, reply, arrays) -> None:
    """``reply`` carrying ``arrays``, signed by its participant over them (a participant
    that signs its own bad tensors)."""
    manifest = Manifest.parse(reply.content["audit"]["manifest"])
    msp = next(p.msp_id for p in cfg.participants if p.id == manifest.participant)
    key = load_private_key(cfg.workspace.key(msp, manifest.participant))
    signed = Manifest(**{**manifest.__dict__, "update": update_digest(arrays)})
    reply.content["arrays"] = to_record(arrays)
    reply.content["audit"] = ConfigRecord({"manifest": signed.to_bytes().decode("utf-8"),
                                           "signature": sign(signed.to_bytes(), key)})


def test_a_signed_int8_update_with_a_non_finite_scale_is_rejected_and_the_round_goes_on(tmp_path):
    cfg, ledger = federation_with(tmp_path, training={"compression": "int8"})

    def nan_scale(replies):
        arrays = to_arrays(replies[1].content["arrays"])
        name = sorted(n for n in arrays if n.endswith(SCALE_SUFFIX))[0]
        arrays[name] = np.asarray(np.nan, np.float32).reshape(())
        _resign(cfg, replies[1], arrays)
        return replies

    try:
        summaries = play(cfg, strategy(cfg, ledger), 1, tamper=nan_scale)
        assert [(r["participant"], r["reason"]) for r in summaries[0].rejected] == [("bank-b", "bad_compression")]
        assert "scale is nan" in summaries[0].rejected[0]["detail"]
        assert summaries[0].accepted == ["bank-a", "bank-c", "bank-d"]
        assert audit(cfg, ledger).ok
    finally:
        ledger.close()


def _reclaim(cfg, reply, **changes) -> None:
    """``reply`` re-signed by its participant with its training claim changed."""
    manifest = Manifest.parse(reply.content["audit"]["manifest"])
    claim = manifest.claim()
    if "epsilon_ppm" in changes:
        claim = dataclasses.replace(claim, dp=dataclasses.replace(claim.dp, epsilon_ppm=changes.pop("epsilon_ppm")))
    claim = dataclasses.replace(claim, **changes)
    msp = next(p.msp_id for p in cfg.participants if p.id == manifest.participant)
    key = load_private_key(cfg.workspace.key(msp, manifest.participant))
    signed = dataclasses.replace(manifest, v=2, training=claim)
    reply.content["audit"] = ConfigRecord({"manifest": signed.to_bytes().decode("utf-8"),
                                           "signature": sign(signed.to_bytes(), key)})


def test_fedprox_claims_are_signed_and_a_reply_trained_with_another_mu_is_rejected(tmp_path):
    cfg, ledger = federation_with(tmp_path, training={"fedprox_mu": 0.01})

    def other_mu(replies):
        _reclaim(cfg, replies[2], mu_ppm=50_000)
        return replies

    try:
        summaries = play(cfg, strategy(cfg, ledger), 1, tamper=other_mu)
        assert [(r["participant"], r["reason"]) for r in summaries[0].rejected] == [("bank-c", "training_mismatch")]
        entry = ledger.get_round(cfg.id, 1).record.accepted()[0]
        assert Manifest.parse(entry.manifest).claim().algorithm == "fedprox"
        assert Manifest.parse(entry.manifest).claim().mu_ppm == 10_000
        assert audit(cfg, ledger).ok
    finally:
        ledger.close()


def test_dp_epsilon_is_signed_recorded_budgeted_and_checked_against_its_parameters(tmp_path):
    # Each round may spend ε 1, the whole federation ε 1.5: a second accepted round is over budget.
    cfg, ledger = federation_with(tmp_path, training={"dp_epsilon": 1.0, "dp_epsilon_total": 1.5})

    def dishonest(replies):
        _reclaim(cfg, replies[1], epsilon_ppm=400_000)   # claims less ε than its parameters give
        _reclaim(cfg, replies[2], epsilon_ppm=-5)        # a negative ε
        return replies

    try:
        strat = strategy(cfg, ledger)
        first = play(cfg, strat, 1, tamper=dishonest)[0]
        assert {r["participant"]: r["reason"] for r in first.rejected} == {
            "bank-b": "bad_privacy_claim", "bank-c": "bad_privacy_claim"}
        record = ledger.get_round(cfg.id, 1).record
        spent = {e.participant: e.epsilon_ppm for e in record.accepted()}
        assert set(spent) == {"bank-a", "bank-d"} and all(0 < eps <= 1_000_000 for eps in spent.values())
        arrays = ArtifactStore(cfg.artifacts_path).get(ledger.get_round(cfg.id, 1).commit.model)
        config = strat.begin_round(2, arrays)
        strat.aggregate_train(2, client_replies(SimulationResolver(cfg, {}), arrays, config, BANKS))
        second = strat.summaries[-1]
        assert {r["participant"]: r["reason"] for r in second.rejected} == {
            "bank-a": "privacy_budget_exceeded", "bank-d": "privacy_budget_exceeded"}
        assert second.accepted == ["bank-b", "bank-c"]
        report = audit(cfg, ledger)
        assert report.ok, report.problems
    finally:
        ledger.close()


def test_the_contract_refuses_a_record_that_would_exceed_a_participants_privacy_budget(tmp_path):
    cfg, ledger = federation_with(tmp_path, training={"dp_epsilon": 1.0, "dp_epsilon_total": 1.5})
    try:
        strat = strategy(cfg, ledger)
        play(cfg, strat, 1)
        # A coordinator that forgets the budget: the contract still refuses the record.
        strat._privacy_spent = lambda round_no: {}
        arrays = ArtifactStore(cfg.artifacts_path).get(ledger.get_round(cfg.id, 1).commit.model)
        config = strat.begin_round(2, arrays)
        with pytest.raises(RoundFailed, match="above the federation's budget"):
            strat.aggregate_train(2, client_replies(SimulationResolver(cfg, {}), arrays, config, BANKS))
    finally:
        ledger.close()
