"""The Ledger protocol end to end, on every backend.

Here it runs on the embedded ledger; ``tests/integration/test_ledger_suite_fabric.py``
runs the same functions on a real Fabric network by giving them Fabric fixtures. So only
the ``ledger.protocol.Ledger`` surface is used, and a test works on the federation its
fixtures name (``world.federation``, or ``federation`` without a world), never on a
fixed id: a Fabric channel is shared by every test of the session.
"""

from __future__ import annotations

import pytest

from ledger.errors import DuplicateRecord, RecordNotFound, TransactionRejected
from ledger.protocol import Ledger
from ledger.records import EvaluationEntry, EvaluationRecord, FederationPolicy, ModelCommit, ScorerSpec
from tests.fixtures.ledgers import World, federation, ledger_factory, pki, receipt_ok, world  # noqa: F401
from tests.fixtures.rounds import DECLARED, accepted, commit_for, declared, digest, evaluated, evaluation, record, rejected


def test_every_backend_implements_the_ledger_protocol(world: World) -> None:
    assert isinstance(world.coordinator, Ledger)
    assert world.coordinator.backend.startswith(("embedded", "fabric"))


# --- federation -----------------------------------------------------------------------


def test_init_federation_stores_the_policy_and_makes_the_caller_coordinator(world: World) -> None:
    fed = world.auditor.get_federation(world.federation)

    assert fed.id == world.federation
    assert fed.coordinator_msp == "CoordinatorMSP"
    assert fed.policy == FederationPolicy(auditor_msps=["AuditorMSP"], reward_budget=1000)
    assert len(fed.created_tx) == 64 and fed.created_ms > 0


def test_creating_an_existing_federation_again_is_a_duplicate(world: World) -> None:
    with pytest.raises(DuplicateRecord, match=rf"^DUPLICATE: federation {world.federation} exists already"):
        world.coordinator.init_federation(world.federation, FederationPolicy())


def test_federation_ids_must_follow_the_id_format(world: World) -> None:
    with pytest.raises(TransactionRejected, match=r"^INVALID: federation id 'Fed_1'"):
        world.coordinator.init_federation("Fed_1", FederationPolicy())


def test_asking_for_an_unknown_federation_is_record_not_found(world: World) -> None:
    with pytest.raises(RecordNotFound, match=r"^NOT_FOUND: federation nope does not exist"):
        world.auditor.get_federation("nope")


# --- participants ---------------------------------------------------------------------


def test_registered_participant_is_pending_with_its_cert_and_its_orgs_msp(
    ledger_factory, pki, federation: str  # noqa: F811
) -> None:
    coordinator = ledger_factory(pki.identity("CoordinatorMSP"))
    coordinator.init_federation(federation, FederationPolicy())
    leaf = pki.leaf("BankAMSP", "bank-a")
    bank_a = ledger_factory(pki.identity("BankAMSP"))
    bank_a.register_org_ca(federation, pki.cas["BankAMSP"].pem)

    receipt = bank_a.register_participant(
        federation, "bank-a", leaf.pem, {"country": "NL", "name": "Bänk A"}, declared(leaf, "bank-a", federation, 35)
    )

    p = coordinator.participant(federation, "bank-a")
    assert receipt_ok(receipt)
    assert (p.status, p.msp_id, p.cert_pem, p.federation) == ("pending", "BankAMSP", leaf.pem, federation)
    assert p.declared_examples == 35
    assert p.meta == {"country": "NL", "name": "Bänk A"}
    assert p.updated_tx == receipt.tx_id and p.registered_ms == receipt.timestamp_ms


def test_registering_an_existing_participant_id_again_is_a_duplicate(world: World) -> None:
    with pytest.raises(DuplicateRecord, match=r"^DUPLICATE: participant bank-a is already registered"):
        again = world.pki.leaf("BankAMSP", "again")
        world.banks["bank-a"].register_participant(
            world.federation, "bank-a", again.pem, {}, declared(again, "bank-a", world.federation)
        )


def test_admit_then_revoke_is_recorded_in_history_oldest_first(world: World) -> None:
    revoke = world.coordinator.revoke_participant(world.federation, "bank-b", "leaked key")

    history = world.auditor.history(world.federation, "bank-b")

    assert [h.value.status for h in history] == ["pending", "active", "revoked"]
    assert history[-1].tx_id == revoke.tx_id and history[-1].timestamp_ms == revoke.timestamp_ms
    assert [h.timestamp_ms for h in history] == sorted(h.timestamp_ms for h in history)
    assert world.auditor.participant(world.federation, "bank-b").status == "revoked"


def test_a_revoked_participant_cannot_be_admitted_again(world: World) -> None:
    world.coordinator.revoke_participant(world.federation, "bank-b", "leaked key")

    with pytest.raises(TransactionRejected, match=r"^INVALID: participant bank-b is revoked"):
        world.coordinator.admit_participant(world.federation, "bank-b")


def test_admitting_an_active_participant_again_is_refused(world: World) -> None:
    with pytest.raises(TransactionRejected, match=r"^INVALID: participant bank-a is already active"):
        world.coordinator.admit_participant(world.federation, "bank-a")


def test_participants_are_listed_sorted_by_id(ledger_factory, pki, federation: str) -> None:  # noqa: F811
    coordinator = ledger_factory(pki.identity("CoordinatorMSP"))
    coordinator.init_federation(federation, FederationPolicy())
    bank_c = ledger_factory(pki.identity("BankCMSP"))
    bank_c.register_org_ca(federation, pki.cas["BankCMSP"].pem)
    for pid in ("zeta", "a-1", "a", "b0", "a0"):
        leaf = pki.leaf("BankCMSP", pid)
        bank_c.register_participant(federation, pid, leaf.pem, {}, declared(leaf, pid, federation))

    listed = [p.id for p in coordinator.participants(federation)]

    assert listed == ["a", "a-1", "a0", "b0", "zeta"]


def test_unknown_participant_is_record_not_found_for_every_query(world: World) -> None:
    for query in (world.auditor.participant, world.auditor.history, world.auditor.balance):
        with pytest.raises(RecordNotFound, match=r"^NOT_FOUND: participant ghost is not registered"):
            query(world.federation, "ghost")


# --- rounds ---------------------------------------------------------------------------


def test_a_round_is_recorded_committed_and_rewarded_with_receipts_in_its_view(world: World) -> None:
    rec = world.record(1)
    rec = rec.model_copy(update={"entries": [*rec.entries, rejected("mallory", "unknown_participant")]})

    r1 = world.coordinator.record_round(world.federation, 1, rec)
    r2 = world.coordinator.commit_model(world.federation, 1, commit_for(rec, world.model(1)))
    r3 = world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 300, "bank-b": 200, "bank-c": 0})

    view = world.auditor.get_round(world.federation, 1)
    assert view.record == rec
    assert view.commit == commit_for(rec, world.model(1))
    assert view.rewards == {"bank-a": 300, "bank-b": 200, "bank-c": 0}
    assert (view.record_tx, view.commit_tx, view.rewards_tx) == (r1, r2, r3)
    assert r1.block_number < r2.block_number < r3.block_number


def test_rejected_entries_keep_the_claimed_id_even_when_it_is_not_a_participant(world: World) -> None:
    rec = record(1, world.genesis, [rejected("Not A Valid Id!", "malformed", "no audit record")])

    world.coordinator.record_round(world.federation, 1, rec)

    entry = world.auditor.get_round(world.federation, 1).record.entries[0]
    assert (entry.participant, entry.reason, entry.detail) == ("Not A Valid Id!", "malformed", "no audit record")


def test_a_rejected_entry_keeps_bounded_evidence_and_the_round_still_commits(world: World) -> None:
    # Whatever a participant sends ends up in its rejected entry, within fixed bounds, so
    # the record can never outgrow what the ledger accepts.
    junk = rejected("bank-c", "bad_signature", "x" * 512).model_copy(
        update={"signature": "A" * 96, "node": "n" * 64, "num_examples": 10**30, "update": digest("u")}
    )
    rec = world.record(1, ["bank-a"])

    world.coordinator.record_round(world.federation, 1, rec.model_copy(update={"entries": [*rec.entries, junk]}))

    assert world.auditor.get_round(world.federation, 1).record.entries[-1] == junk


def test_oversized_evidence_cannot_be_put_into_an_entry() -> None:
    import pydantic

    for field, value in (("signature", "A" * 97), ("node", "n" * 65), ("manifest", "{" * 1025)):
        with pytest.raises(pydantic.ValidationError):
            rejected("bank-c", "malformed").model_validate(
                {**rejected("bank-c", "malformed").model_dump(), field: value})


def test_recording_a_round_twice_is_a_duplicate(world: World) -> None:
    world.coordinator.record_round(world.federation, 1, world.record(1))

    with pytest.raises(
        DuplicateRecord, match=rf"^DUPLICATE: round 1 of federation {world.federation} is already recorded"
    ):
        world.coordinator.record_round(world.federation, 1, world.record(1))


def test_committing_a_round_twice_is_a_duplicate(world: World) -> None:
    rec, com = world.run_round(1)

    with pytest.raises(
        DuplicateRecord, match=rf"^DUPLICATE: round 1 of federation {world.federation} is already committed"
    ):
        world.coordinator.commit_model(world.federation, 1, com)


def test_issuing_rewards_twice_for_a_round_is_a_duplicate(world: World) -> None:
    world.run_round(1)
    world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 10})

    with pytest.raises(DuplicateRecord, match=rf"^DUPLICATE: rewards for round 1 of federation {world.federation}"):
        world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 10})
    assert world.auditor.balance(world.federation, "bank-a") == 10


def test_commit_before_its_record_is_refused(world: World) -> None:
    com = commit_for(world.record(1), world.model(1))

    with pytest.raises(TransactionRejected, match=r"^INVALID: CommitModel for round 1 needs its RecordRound first"):
        world.coordinator.commit_model(world.federation, 1, com)


def test_rewards_before_the_commit_are_refused(world: World) -> None:
    world.coordinator.record_round(world.federation, 1, world.record(1))

    with pytest.raises(TransactionRejected, match=r"^INVALID: IssueRewards for round 1 needs its CommitModel first"):
        world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 1})


def test_rewards_before_the_record_are_refused(world: World) -> None:
    with pytest.raises(TransactionRejected, match=r"^INVALID: IssueRewards for round 1 needs its RecordRound"):
        world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 1})


def test_rounds_start_at_one_and_are_consecutive(world: World) -> None:
    with pytest.raises(TransactionRejected, match=r"^INVALID: round 2 cannot be recorded: the next round .* is 1"):
        world.coordinator.record_round(world.federation, 2, world.record(2, base=world.genesis))
    world.run_round(1)

    with pytest.raises(TransactionRejected, match=r"^INVALID: round 3 cannot be recorded: the next round .* is 2"):
        world.coordinator.record_round(world.federation, 3, world.record(3, base=world.model(1)))
    world.run_round(2)
    assert [v.round for v in world.auditor.list_rounds(world.federation)] == [1, 2]


def test_a_record_must_start_from_the_last_committed_model(world: World) -> None:
    world.run_round(1)

    with pytest.raises(TransactionRejected, match=r"^INVALID: record base_model .* is not the federation's current"):
        world.coordinator.record_round(world.federation, 2, world.record(2, base=digest("some other model")))


def test_an_uncommitted_round_is_abandoned_when_the_next_round_is_recorded(world: World) -> None:
    world.run_round(1)
    rec2 = world.record(2)
    world.coordinator.record_round(world.federation, 2, rec2)  # the coordinator crashes before CommitModel
    rec3 = world.record(3, base=world.model(1))  # resumes from the last committed model

    world.coordinator.record_round(world.federation, 3, rec3)

    with pytest.raises(TransactionRejected, match=r"^INVALID: round 2 was abandoned when round 3 was recorded"):
        world.coordinator.commit_model(world.federation, 2, commit_for(rec2, world.model(2)))
    world.coordinator.commit_model(world.federation, 3, commit_for(rec3, world.model(3)))
    views = world.auditor.list_rounds(world.federation)
    assert [(v.round, v.commit is not None) for v in views] == [(1, True), (2, False), (3, True)]
    assert views[2].commit.base_model == views[0].commit.model


def test_commit_base_model_must_be_the_rounds_recorded_base_model(world: World) -> None:
    rec = world.record(1)
    world.coordinator.record_round(world.federation, 1, rec)
    com = commit_for(rec, world.model(1)).model_copy(update={"base_model": digest("elsewhere")})

    with pytest.raises(TransactionRejected, match=r"^INVALID: commit base_model .* is not the round's recorded"):
        world.coordinator.commit_model(world.federation, 1, com)


def test_commit_must_name_exactly_the_recorded_accepted_participants(world: World) -> None:
    rec = world.record(1, ["bank-a", "bank-b"])
    world.coordinator.record_round(world.federation, 1, rec)
    com = commit_for(rec, world.model(1))
    sneaky = com.model_copy(
        update={"accepted": ["bank-a", "bank-b", "bank-c"], "weights": {**com.weights, "bank-c": 1}}
    )

    with pytest.raises(TransactionRejected, match=r"^INVALID: commit.accepted .* must be the round's accepted"):
        world.coordinator.commit_model(world.federation, 1, sneaky)


def test_commit_weights_other_than_the_signed_example_counts_are_refused(world: World) -> None:
    # bank-a and bank-b each signed 100 examples; a commit weighting bank-b 10^6 would
    # hand it nearly the whole model (and, by weight, the rewards).
    rec = world.record(1, ["bank-a", "bank-b"])
    world.coordinator.record_round(world.federation, 1, rec)
    com = commit_for(rec, world.model(1))
    skewed = com.model_copy(update={"weights": {"bank-a": 100, "bank-b": 1_000_000}})

    with pytest.raises(TransactionRejected) as refused:
        world.coordinator.commit_model(world.federation, 1, skewed)

    assert str(refused.value) == (
        "INVALID: commit.weights['bank-b'] is 1000000, but the round's signed num_examples give 100"
    )
    assert world.auditor.get_round(world.federation, 1).commit is None
    assert receipt_ok(world.coordinator.commit_model(world.federation, 1, com))


def test_an_accepted_update_claiming_more_examples_than_declared_is_refused(world: World) -> None:
    # bank-a declared DECLARED (1000) examples at registration and now signs a manifest claiming more.
    base = world.genesis
    over = accepted(world.signers["bank-a"], "bank-a", world.federation, 1, base, num_examples=DECLARED + 1)
    at = accepted(world.signers["bank-b"], "bank-b", world.federation, 1, base, num_examples=DECLARED)

    with pytest.raises(TransactionRejected) as refused:
        world.coordinator.record_round(world.federation, 1, record(1, base, [over, at]))

    assert str(refused.value) == (
        f"INVALID: accepted entry of bank-a: num_examples {DECLARED + 1} exceeds the {DECLARED} examples "
        "it declared at registration"
    )
    assert receipt_ok(world.coordinator.record_round(world.federation, 1, record(1, base, [at])))


def test_a_round_with_no_accepted_update_must_commit_its_base_model(world: World) -> None:
    rec = record(1, world.genesis, [rejected("bank-a", "outlier")])
    world.coordinator.record_round(world.federation, 1, rec)
    empty = ModelCommit(round=1, base_model=world.genesis, model=digest("x"), accepted=[], weights={})

    with pytest.raises(TransactionRejected, match=r"^INVALID: a round with no accepted update"):
        world.coordinator.commit_model(world.federation, 1, empty)
    world.coordinator.commit_model(world.federation, 1, empty.model_copy(update={"model": world.genesis}))


@pytest.mark.parametrize("status", ["pending", "revoked", "unregistered"])
def test_a_record_accepting_a_participant_that_is_not_active_is_refused(
    world: World, status: str
) -> None:
    pid = "bank-d"
    signer = world.pki.leaf("BankCMSP", pid)
    if status != "unregistered":
        world.banks["bank-c"].register_participant(
            world.federation, pid, signer.pem, {}, declared(signer, pid, world.federation)
        )
    if status == "revoked":
        world.coordinator.revoke_participant(world.federation, pid, "left the federation")
    world.signers[pid] = signer

    with pytest.raises(TransactionRejected, match=rf"^INVALID: accepted entry names participant {pid}, which is"):
        world.coordinator.record_round(world.federation, 1, world.record(1, ["bank-a", pid]))


def test_an_accepted_entry_whose_signature_is_not_the_participants_is_refused(world: World) -> None:
    impostor = world.pki.leaf("BankAMSP", "not-registered")
    entry = accepted(impostor, "bank-a", world.federation, 1, world.genesis)

    with pytest.raises(TransactionRejected, match=r"^INVALID: accepted entry of bank-a: signature does not verify"):
        world.coordinator.record_round(world.federation, 1, record(1, world.genesis, [entry]))


def test_an_accepted_entry_signed_for_another_round_is_refused(world: World) -> None:
    entry = accepted(world.signers["bank-a"], "bank-a", world.federation, 7, world.genesis)

    with pytest.raises(TransactionRejected, match=r"^INVALID: accepted entry of bank-a: manifest round 7"):
        world.coordinator.record_round(world.federation, 1, record(1, world.genesis, [entry]))


def test_unknown_round_is_record_not_found(world: World) -> None:
    with pytest.raises(
        RecordNotFound, match=rf"^NOT_FOUND: round 4 of federation {world.federation} is not recorded"
    ):
        world.auditor.get_round(world.federation, 4)


def test_rounds_are_listed_in_round_order_past_one_page(world: World) -> None:
    # 120 rounds, more than one 100-row page of the range query; left uncommitted, each
    # round abandons the one before, so all start from the genesis model.
    for r in range(1, 121):
        rec = record(r, world.genesis, [rejected("x", "reply_error")])
        world.coordinator.record_round(world.federation, r, rec)

    views = world.auditor.list_rounds(world.federation)

    assert [v.round for v in views] == list(range(1, 121))
    assert all(v.commit is None and v.record_tx.block_number > 0 for v in views)


# --- tokens ---------------------------------------------------------------------------


def test_rewards_credit_balances_and_transfers_move_them(world: World) -> None:
    world.run_round(1)
    world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 600, "bank-b": 400})

    world.banks["bank-a"].transfer(world.federation, "bank-c", 250)

    assert [world.auditor.balance(world.federation, p) for p in ("bank-a", "bank-b", "bank-c")] == [350, 400, 250]


def test_rewards_over_the_round_budget_are_refused(world: World) -> None:
    world.run_round(1)

    with pytest.raises(TransactionRejected, match=r"^INVALID: rewards total 1001 exceeds the round budget 1000"):
        world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 1000, "bank-b": 1})
    world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 999, "bank-b": 1})


def test_rewards_to_a_participant_not_accepted_in_the_round_are_refused(world: World) -> None:
    world.run_round(1, ["bank-a", "bank-b"])

    with pytest.raises(TransactionRejected, match=r"^INVALID: participant bank-c was not accepted in round 1"):
        world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 5, "bank-c": 5})


@pytest.mark.parametrize("amounts", [{"bank-a": -1}, {"bank-a": True}, {"Bank A": 1}])
def test_rewards_must_be_non_negative_integer_units_for_participant_ids(world: World, amounts) -> None:
    world.run_round(1)

    with pytest.raises(TransactionRejected, match=r"^INVALID: rewards"):
        world.coordinator.issue_rewards(world.federation, 1, amounts)


def test_a_transfer_larger_than_the_balance_is_refused_and_moves_nothing(world: World) -> None:
    world.run_round(1)
    world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 10})

    with pytest.raises(TransactionRejected, match=r"^INVALID: insufficient balance: bank-a has 10"):
        world.banks["bank-a"].transfer(world.federation, "bank-b", 11)
    assert [world.auditor.balance(world.federation, p) for p in ("bank-a", "bank-b")] == [10, 0]


@pytest.mark.parametrize("amount", [0, -5])
def test_a_transfer_amount_must_be_a_positive_integer(world: World, amount: int) -> None:
    with pytest.raises(TransactionRejected, match=r"^INVALID: amount"):
        world.banks["bank-a"].transfer(world.federation, "bank-b", amount)


def test_a_transfer_to_an_unregistered_participant_is_record_not_found(world: World) -> None:
    with pytest.raises(RecordNotFound, match=r"^NOT_FOUND: participant ghost is not registered"):
        world.banks["bank-a"].transfer(world.federation, "ghost", 1)


def test_scorer_spec_and_policy_round_trip_unchanged(ledger_factory, pki, federation: str) -> None:  # noqa: F811
    coordinator = ledger_factory(pki.identity("CoordinatorMSP"))
    policy = FederationPolicy(
        auditor_msps=["AuditorMSP", "RegulatorMSP"],
        reward_budget=5,
        scorer=ScorerSpec(
            name="shapley", params={"rounds": 20, "tolerance": 0.01}, seed=7, validation_digest=digest("v")
        ),
        aggregation="fedavg",
        data_schema_digest=digest("schema"),
        model="logreg",
        validation_digest=digest("validation"),
        eval_fraction_ppm=250_000,
    )

    coordinator.init_federation(federation, policy)

    assert coordinator.get_federation(federation).policy == policy


# --- evaluation -----------------------------------------------------------------------


def _evaluation(world: World, round_no: int, participants: list[str] | None = None,
                model: str | None = None) -> EvaluationRecord:
    model = world.model(round_no) if model is None else model
    names = ["bank-a", "bank-b"] if participants is None else participants
    return evaluation(round_no, model, [evaluated(world.signers[p], p, world.federation, round_no, model)
                                        for p in names])


def test_an_evaluation_is_recorded_after_the_commit_and_shown_in_the_round_view(world: World) -> None:
    world.run_round(1)
    ev = _evaluation(world, 1)
    ev = ev.model_copy(update={"entries": [*ev.entries, EvaluationEntry(
        participant="bank-c", status="rejected", reason="bad_signature", detail="does not verify",
        signature="A" * 96, accuracy_ppm=10**6)]})

    receipt = world.coordinator.record_evaluation(world.federation, 1, ev)

    view = world.auditor.get_round(world.federation, 1)
    assert receipt_ok(receipt)
    assert view.evaluation == ev and view.evaluation_tx == receipt
    assert world.auditor.list_rounds(world.federation)[0].evaluation == ev
    assert view.evaluation.mean_ppm() == {"examples": 100, "accuracy_ppm": 800_000, "auc_ppm": 750_000,
                                          "log_loss_ppm": 450_000}


def test_a_round_without_an_evaluation_shows_none(world: World) -> None:
    world.run_round(1)

    view = world.auditor.get_round(world.federation, 1)

    assert view.evaluation is None and view.evaluation_tx is None


def test_an_evaluation_nobody_answered_is_recorded_empty(world: World) -> None:
    world.run_round(1)

    world.coordinator.record_evaluation(world.federation, 1, evaluation(1, world.model(1), []))

    assert world.auditor.get_round(world.federation, 1).evaluation.entries == []


def test_an_evaluation_before_the_commit_is_refused(world: World) -> None:
    world.coordinator.record_round(world.federation, 1, world.record(1))

    with pytest.raises(TransactionRejected,
                       match=r"^INVALID: RecordEvaluation for round 1 needs its CommitModel first"):
        world.coordinator.record_evaluation(world.federation, 1, _evaluation(world, 1))


def test_recording_an_evaluation_twice_is_a_duplicate(world: World) -> None:
    world.run_round(1)
    world.coordinator.record_evaluation(world.federation, 1, _evaluation(world, 1))

    with pytest.raises(DuplicateRecord, match=rf"^DUPLICATE: the evaluation of round 1 of federation "
                                              rf"{world.federation} is already recorded"):
        world.coordinator.record_evaluation(world.federation, 1, _evaluation(world, 1, ["bank-c"]))


def test_an_evaluation_of_another_model_than_the_committed_one_is_refused(world: World) -> None:
    world.run_round(1)

    with pytest.raises(TransactionRejected, match=r"^INVALID: evaluation model \w+ is not the model committed"):
        world.coordinator.record_evaluation(world.federation, 1, _evaluation(world, 1, model=world.model(0)))


def test_an_accepted_evaluation_signed_with_another_participants_key_is_refused(world: World) -> None:
    world.run_round(1)
    forged = evaluated(world.signers["bank-b"], "bank-a", world.federation, 1, world.model(1))

    with pytest.raises(TransactionRejected, match=r"^INVALID: accepted evaluation of bank-a: signature does not "
                                                  r"verify with the registered certificate"):
        world.coordinator.record_evaluation(world.federation, 1, evaluation(1, world.model(1), [forged]))


def test_an_accepted_evaluation_whose_metrics_differ_from_the_signed_ones_is_refused(world: World) -> None:
    world.run_round(1)
    entry = evaluated(world.signers["bank-a"], "bank-a", world.federation, 1, world.model(1))
    inflated = entry.model_copy(update={"accuracy_ppm": 990_000})

    with pytest.raises(TransactionRejected, match=r"^INVALID: accepted evaluation of bank-a: manifest accuracy_ppm"):
        world.coordinator.record_evaluation(world.federation, 1, evaluation(1, world.model(1), [inflated]))


def test_an_evaluation_can_no_longer_be_recorded_once_the_next_round_is(world: World) -> None:
    world.run_round(1)
    world.coordinator.record_round(world.federation, 2, world.record(2))

    with pytest.raises(TransactionRejected,
                       match=r"^INVALID: the evaluation of round 1 can no longer be recorded: round 2 is recorded"):
        world.coordinator.record_evaluation(world.federation, 1, _evaluation(world, 1))
