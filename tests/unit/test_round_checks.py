"""The coordinator's checks, fed by the real ClientApp (mods included), no Flower runtime.

Prepare: a global model, three participants with keys and registered certificates.
Execute: the ClientApp answers a train message; the verifier checks the replies.
Assert: honest replies are accepted, each adversary kind is rejected with its reason.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Message, RecordDict

from fl import data as fl_data
from fl import model as fl_model
from fl.adversary import EXPECTED_REASON, parse_adversaries
from fl.client_app import ClientRuntime
from fl.verification import RoundContext, verify_round
from ledger.formats import update_digest
from ledger.pki import certificate_pem, demo_identity
from ledger.records import Participant
from tests.fixtures.flower import client_replies, task_identity  # noqa: F401

FED = "test-fed"
IDS = ["bank-a", "bank-b", "bank-c"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[ec.EllipticCurvePrivateKey, str]]:
    root = tmp_path_factory.mktemp("pki")
    out = {}
    for pid in IDS:
        key, cert, _ = demo_identity(root, pid, f"Org{pid[-1].upper()}MSP")
        out[pid] = (key, certificate_pem(cert))
    return out


@pytest.fixture(scope="module")
def base() -> dict[str, np.ndarray]:
    return fl_model.initial_arrays(fl_data.credit_schema().n_features, seed=1)


def participants(pki: dict[str, Any], status: dict[str, str] | None = None) -> dict[str, Participant]:
    status = status or {}
    return {
        pid: Participant(federation=FED, id=pid, msp_id="X", cert_pem=cert, status=status.get(pid, "active"),
                         meta={}, registered_ms=0, updated_ms=0, updated_tx="t")
        for pid, (_, cert) in pki.items()
    }


class Resolver:
    def __init__(self, pki: dict[str, Any], adversaries: dict[str, str]) -> None:
        self.pki, self.adversaries = pki, adversaries

    def __call__(self, context: Context) -> ClientRuntime:
        index = int(context.node_config["partition-id"])
        pid = IDS[index]
        return ClientRuntime(
            participant=pid,
            key=self.pki[pid][0],
            load_data=functools.partial(fl_data.load_partition, index, 3, 7),
            adversary=self.adversaries.get(pid),
        )


def run_round(pki, base, round_no: int, adversaries: dict[str, str], states: dict[int, RecordDict]) -> list[Message]:
    config = {"federation": FED, "round": round_no, "local-epochs": 1, "learning-rate": 0.05,
              "batch-size": 64, "seed": 1}
    return client_replies(Resolver(pki, adversaries), base, config, 3, states)


def context(pki, base, round_no, **kw) -> RoundContext:
    return RoundContext(federation=FED, round=round_no, base_model=update_digest(base), base_arrays=base,
                        participants=kw.pop("participants", None) or participants(pki), **kw)


def test_honest_round_accepts_everyone_with_signed_manifests(pki, base):
    verdict = verify_round(run_round(pki, base, 1, {}, {}), context(pki, base, 1))
    assert [e.status for e in verdict.entries] == ["accepted"] * 3
    assert [u.participant for u in verdict.accepted] == IDS
    for entry in verdict.entries:
        assert entry.manifest and entry.signature and entry.manifest_hash and entry.num_examples


@pytest.mark.parametrize("kind", ["tamper", "foreign-key", "wrong-base", "nan", "shape"])
def test_each_adversary_kind_is_rejected_with_its_reason_and_others_accepted(pki, base, kind):
    verdict = verify_round(run_round(pki, base, 1, {"bank-c": kind}, {}), context(pki, base, 1))
    by_pid = {e.participant: e for e in verdict.entries}
    assert by_pid["bank-c"].status == "rejected"
    assert by_pid["bank-c"].reason == EXPECTED_REASON[kind]
    assert [u.participant for u in verdict.accepted] == ["bank-a", "bank-b"]


def test_replayed_round_one_reply_is_rejected_as_wrong_round_in_round_two(pki, base):
    states: dict[int, RecordDict] = {}
    first = verify_round(run_round(pki, base, 1, {"bank-b": "replay"}, states), context(pki, base, 1))
    assert all(e.status == "accepted" for e in first.entries)  # round 1: nothing to replay yet
    verdict = verify_round(run_round(pki, base, 2, {"bank-b": "replay"}, states), context(pki, base, 2))
    by_pid = {e.participant: e for e in verdict.entries}
    assert by_pid["bank-b"].reason == "wrong_round"
    assert by_pid["bank-a"].status == by_pid["bank-c"].status == "accepted"


def test_revoked_pending_and_unknown_participants_are_rejected_before_content_checks(pki, base):
    replies = run_round(pki, base, 1, {}, {})
    ps = participants(pki, {"bank-a": "revoked", "bank-b": "pending"})
    del ps["bank-c"]
    verdict = verify_round(replies, context(pki, base, 1, participants=ps))
    assert {e.participant: e.reason for e in verdict.entries} == {
        "bank-a": "revoked", "bank-b": "not_admitted", "bank-c": "unknown_participant"}
    assert verdict.accepted == []


def test_second_reply_from_one_participant_is_rejected_as_duplicate(pki, base):
    replies = run_round(pki, base, 1, {}, {})
    verdict = verify_round(replies + [replies[0]], context(pki, base, 1))
    reasons = sorted((e.participant, e.status, e.reason) for e in verdict.entries)
    assert ("bank-a", "rejected", "duplicate") in reasons
    assert len(verdict.accepted) == 3


def test_reply_from_a_node_bound_to_another_participant_is_rejected(pki, base):
    owners = {"100": "bank-a", "101": "bank-a", "102": "bank-c"}
    verdict = verify_round(run_round(pki, base, 1, {}, {}),
                           context(pki, base, 1, node_owner=owners.get))
    assert {e.participant: e.reason for e in verdict.rejected()} == {"bank-b": "node_mismatch"}


def test_wrong_federation_and_error_replies_are_recorded_with_reasons(pki, base):
    replies = run_round(pki, base, 1, {}, {})
    verdict = verify_round(replies, RoundContext(federation="other-fed", round=1, base_model=update_digest(base),
                                                 base_arrays=base, participants=participants(pki)))
    assert {e.reason for e in verdict.entries} == {"wrong_federation"}
    from flwr.app import Error
    err = Message(Error(code=0, reason="boom"), reply_to=Message(RecordDict(), dst_node_id=7, message_type="train"))
    verdict = verify_round([err], context(pki, base, 1))
    assert verdict.entries[0].reason == "reply_error" and verdict.entries[0].node is not None


def test_reply_without_audit_record_is_malformed(pki, base):
    reply = run_round(pki, base, 1, {}, {})[0]
    del reply.content["audit"]
    verdict = verify_round([reply], context(pki, base, 1))
    assert verdict.entries[0].reason == "malformed"


def test_a_huge_update_is_rejected_as_an_outlier(pki, base):
    replies = run_round(pki, base, 1, {}, {})
    verdict = verify_round(replies, context(pki, base, 1, max_norm_ratio=1.0001))
    # With a ratio barely above 1 the largest change exceeds the median: one outlier.
    assert [e.reason for e in verdict.rejected()] == ["outlier"]


def test_entries_do_not_depend_on_reply_order(pki, base):
    replies = run_round(pki, base, 1, {"bank-a": "tamper"}, {})
    one = verify_round(replies, context(pki, base, 1))
    two = verify_round(list(reversed(replies)), context(pki, base, 1))
    assert [e.canonical() for e in one.entries] == [e.canonical() for e in two.entries]


def test_adversary_specs_are_parsed_strictly():
    assert parse_adversaries(["bank-c:tamper", "bank-b:replay"]) == {"bank-c": "tamper", "bank-b": "replay"}
    for bad in (["bank-c"], ["bank-c:explode"], ["bank-c:nan", "bank-c:shape"]):
        with pytest.raises(ValueError):
            parse_adversaries(bad)
