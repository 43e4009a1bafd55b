"""Every rejection leaves evidence, the audit decides it again, and each node gets a signed receipt.

A dishonest coordinator is played by the real strategy whose verdict is altered between
the reply checks and ``RecordRound`` (what a coordinator running modified code can do);
the ledger, artifact store, ClientApp and audit are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import fl.strategy as strategy_module
from fl.demo import SimulationResolver, demo_config, prepare_federation
from fl.server_app import coordinator_identity, identity_paths, initial_model
from fl.strategy import RECEIPT_KEY, AuditedFedAvg
from fl.verification import verify_round
from ledger.aggregate import WeightedUpdate, capped
from ledger.artifacts import ArtifactStore
from ledger.audit import audit_federation
from ledger.audit_rejections import received_digest
from ledger.factory import open_ledger
from ledger.pki import certificate_pem, load_certificate
from ledger.receipts import Receipt, ReceiptError, SignedReceipt, verify_receipt
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


def strategy(cfg, ledger, **kwargs) -> AuditedFedAvg:
    return AuditedFedAvg(ledger=ledger, artifacts=ArtifactStore(cfg.artifacts_path), federation=cfg.id,
                         train_settings=SETTINGS, expected_nodes=3, eval_fraction_ppm=0, **kwargs)


def play_round(cfg, strat: AuditedFedAvg, adversaries=None, server_round: int = 1):
    base = initial_model(cfg)
    config = strat.begin_round(server_round, base)
    replies = client_replies(SimulationResolver(cfg, adversaries or {}), base, config, 3)
    return strat.aggregate_train(server_round, replies)


def audit(cfg, ledger):
    _, cert = identity_paths(cfg, "auditor", "AuditorMSP")
    auditor = Identity(msp_id="AuditorMSP", cert_pem=certificate_pem(load_certificate(cert)))
    return audit_federation(ledger.with_identity(auditor), cfg.id, ArtifactStore(cfg.artifacts_path))


def dishonest(monkeypatch, victim: str, reason: str) -> None:
    """The coordinator records ``victim``'s fine reply as rejected for ``reason``."""

    def lying_verify(replies, ctx, keys=None):
        verdict = verify_round(replies, ctx, keys)
        verdict.entries = [
            e.model_copy(update={"status": "rejected", "reason": reason, "detail": "looked odd"})
            if e.participant == victim else e for e in verdict.entries
        ]
        signed = {e.participant: e.num_examples for e in verdict.entries}
        # The FedAvg weights of the remaining updates, capped as the policy says.
        verdict.accepted = capped([WeightedUpdate(u.participant, signed[u.participant], u.arrays)
                                   for u in verdict.accepted if u.participant != victim],
                                  ctx.rules().max_weight_share_ppm)
        return verdict

    monkeypatch.setattr(strategy_module, "verify_round", lying_verify)


@pytest.mark.parametrize("reason", ["outlier", "digest_mismatch", "non_finite", "wrong_shape", "duplicate",
                                    "revoked", "wrong_round", "bad_signature"])
def test_an_honest_bank_recorded_as_rejected_is_reported_by_the_audit(federation, monkeypatch, reason):
    cfg, ledger = federation
    dishonest(monkeypatch, "bank-a", reason)
    play_round(cfg, strategy(cfg, ledger))
    entry = next(e for e in ledger.get_round(cfg.id, 1).record.entries if e.participant == "bank-a")
    assert (entry.status, entry.reason) == ("rejected", reason)
    report = audit(cfg, ledger)
    assert not report.ok
    assert any(f"bank-a: rejected as {reason}" in p for p in report.problems), report.problems


def test_honest_rejections_keep_their_evidence_and_the_audit_recomputes_them(federation):
    cfg, ledger = federation
    adversaries = {"bank-a": "tamper", "bank-b": "nan", "bank-c": "shape"}
    play_round(cfg, strategy(cfg, ledger), adversaries)
    store = ArtifactStore(cfg.artifacts_path)
    entries = {e.participant: e for e in ledger.get_round(cfg.id, 1).record.entries}
    assert {p: e.reason for p, e in entries.items()} == {
        "bank-a": "digest_mismatch", "bank-b": "non_finite", "bank-c": "wrong_shape"}
    assert all(e.manifest and e.signature and e.update for e in entries.values())
    # The tensors as received: under the manifest's digest, or (changed after signing)
    # under the digest the entry names in full.
    received = received_digest(entries["bank-a"].detail)
    assert received is not None and received != entries["bank-a"].update and received in store
    assert entries["bank-b"].update in store and entries["bank-c"].update in store
    report = audit(cfg, ledger)
    assert report.ok, report.problems


def test_an_oversized_rejected_reply_keeps_only_its_signed_manifest(federation):
    cfg, ledger = federation
    play_round(cfg, strategy(cfg, ledger, max_evidence_bytes=16), {"bank-b": "nan"})
    entry = next(e for e in ledger.get_round(cfg.id, 1).record.entries if e.participant == "bank-b")
    assert entry.reason == "non_finite" and entry.manifest and entry.signature
    assert entry.update not in ArtifactStore(cfg.artifacts_path)
    report = audit(cfg, ledger)
    assert any("bank-b: rejected as non_finite" in p and "not in the artifact store" in p
               for p in report.problems), report.problems


def test_each_node_gets_a_receipt_signed_by_the_coordinator_with_its_next_message(federation):
    cfg, ledger = federation
    coordinator = coordinator_identity(cfg)
    strat = strategy(cfg, ledger, receipts=coordinator)
    play_round(cfg, strat, {"bank-c": "nan"})
    view = ledger.get_round(cfg.id, 1)
    messages = strat._with_receipts(
        strat._construct_messages(strategy_module.RecordDict(), [100, 101, 102, 103], "evaluate"))
    got = {}
    for message in messages:
        if RECEIPT_KEY in message.content.config_records:
            signed = SignedReceipt.model_validate(dict(message.content[RECEIPT_KEY]))
            receipt = verify_receipt(signed, coordinator.identity.cert_pem)
            got[message.metadata.dst_node_id] = receipt
    assert sorted(got) == [100, 101, 102]  # node 103 sent nothing this round
    by_participant = {r.participant: r for r in got.values()}
    for entry in view.record.entries:
        receipt = by_participant[entry.participant]
        assert (receipt.decision, receipt.reason, receipt.manifest_hash) == (
            entry.status, entry.reason, entry.manifest_hash)
        assert receipt.record_tx == view.record_tx.tx_id and receipt.round == 1
    # A receipt is delivered once.
    again = strat._with_receipts(strat._construct_messages(strategy_module.RecordDict(), [100], "evaluate"))
    assert RECEIPT_KEY not in again[0].content.config_records


def test_a_receipt_altered_after_signing_or_signed_by_another_key_is_refused(federation):
    cfg, ledger = federation
    strat = strategy(cfg, ledger, receipts=coordinator_identity(cfg))
    play_round(cfg, strat)
    signed = next(iter(strat._receipts.values()))
    receipt = Receipt.parse(signed.receipt)
    flipped = receipt.model_copy(update={"decision": "rejected", "reason": "outlier"})
    with pytest.raises(ReceiptError) as forged:
        verify_receipt(signed.model_copy(update={"receipt": flipped.canonical().decode()}))
    assert forged.value.reason == "bad_signature"
    _, other = identity_paths(cfg, "auditor", "AuditorMSP")
    with pytest.raises(ReceiptError) as unknown:
        verify_receipt(signed, certificate_pem(load_certificate(other)))
    assert unknown.value.reason == "unknown_coordinator"


def test_evidence_is_decoded_only_when_its_header_matches_its_bytes(task_identity):  # noqa: F811
    import io

    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, RecordDict
    from numpy.lib import format as npy_format

    def reply(data: bytes):  # type: ignore[no-untyped-def]
        array = Array(dtype="<f4", shape=(2,), stype="numpy.ndarray", data=data)
        return Message(RecordDict({"arrays": ArrayRecord({"w": array})}), dst_node_id=1, message_type="train")

    honest = io.BytesIO()
    np.save(honest, np.array([1.0, 2.0], dtype="<f4"))
    bomb = io.BytesIO()
    npy_format.write_array_header_1_0(bomb, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    bomb.write(b"\0" * 8)

    decoded = strategy_module._bounded_arrays(reply(honest.getvalue()), 1 << 20)
    assert decoded is not None and decoded["w"].tolist() == [1.0, 2.0]
    # A header claiming four terabytes is refused before anything is allocated.
    assert strategy_module._bounded_arrays(reply(bomb.getvalue()), 1 << 20) is None
    assert strategy_module._bounded_arrays(reply(honest.getvalue()), 8) is None  # over the bound


def test_a_receipts_signed_bytes_are_its_canonical_json():
    receipt = Receipt(federation="fed-a", round=7, participant="bank-a", manifest_hash="ab" * 32,
                      decision="rejected", reason="outlier", record_tx="tx1")

    assert receipt.canonical() == (
        b'{"decision":"rejected","federation":"fed-a","manifest_hash":"' + b"ab" * 32
        + b'","participant":"bank-a","reason":"outlier","record_tx":"tx1","round":7,"v":1}')
    assert Receipt.parse(receipt.canonical()) == receipt
