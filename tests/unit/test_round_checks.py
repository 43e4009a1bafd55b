"""The coordinator's checks, fed by the real ClientApp (mods included), no Flower runtime.

Prepare: a global model, three participants with keys and registered certificates.
Execute: the ClientApp answers a train message; the verifier checks the replies.
Assert: honest replies are accepted, each adversary kind is rejected with its reason.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Message, RecordDict

from fl import demo_data
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
    return fl_model.initial_arrays(fl_model.ModelSpec(seed=1), demo_data.credit_schema().n_features)


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
            load_data=functools.partial(demo_data.load_partition, index, 3, 7),
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


def test_two_signed_replies_from_one_participant_are_both_rejected_as_duplicate(pki, base):
    replies = run_round(pki, base, 1, {}, {})
    verdict = verify_round(replies + [replies[0]], context(pki, base, 1))
    assert sorted((e.participant, e.reason) for e in verdict.rejected()) == [
        ("bank-a", "duplicate"), ("bank-a", "duplicate")]
    assert [u.participant for u in verdict.accepted] == ["bank-b", "bank-c"]
    again = verify_round([replies[0]] + replies, context(pki, base, 1))
    assert [e.canonical() for e in again.entries] == [e.canonical() for e in verdict.entries]


def test_a_forged_reply_in_another_participants_name_cannot_knock_it_out(pki, base):
    replies = run_round(pki, base, 1, {}, {})
    honest_a = replies[0]
    # bank-b claims to be bank-a and signs with its own key; its reply arrives first.
    forged = _resigned(replies[1], participant="bank-a", key=pki["bank-b"][0])
    verdict = verify_round([forged, honest_a, replies[2]], context(pki, base, 1))
    assert {(e.participant, e.status, e.reason) for e in verdict.entries} == {
        ("bank-a", "rejected", "bad_signature"), ("bank-a", "accepted", None), ("bank-c", "accepted", None)}


def _resigned(reply: Message, *, key, **changes) -> Message:
    """A copy of ``reply`` whose manifest fields are changed and re-signed with ``key``."""
    from flwr.app import ConfigRecord

    from ledger.formats import Manifest, sign

    manifest = Manifest.parse(str(reply.content["audit"]["manifest"]))
    fields = {**manifest.to_dict(), **changes}
    text = Manifest(**{**fields, "training": manifest.training}).to_bytes() if all(type(fields[k]) is type(getattr(manifest, k)) for k in changes) else None
    data = text if text is not None else json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    content = RecordDict(dict(reply.content.items()))
    content["audit"] = ConfigRecord({"manifest": data.decode(), "signature": sign(data, key)})
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=int(reply.metadata.src_node_id),
                                             message_type="train"))


def _with(reply: Message, **records) -> Message:
    content = RecordDict(dict(reply.content.items()))
    for name, record in records.items():
        content[name] = record
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=int(reply.metadata.src_node_id),
                                             message_type="train"))


def _hostile_replies(pki, base) -> dict[str, Message]:
    import io

    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

    reply = run_round(pki, base, 1, {}, {})[0]
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros(2))
    audit = reply.content["audit"]
    return {
        "empty array bytes": _with(reply, arrays=ArrayRecord({"w": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"")})),
        "truncated bytes": _with(reply, arrays=ArrayRecord({"w": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"PK\x03\x04junk")})),
        "npz inside an array": _with(reply, arrays=ArrayRecord({"w": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=npz.getvalue())})),
        "arrays as a config record": _with(reply, arrays=ConfigRecord({"w": 1})),
        "deeply nested manifest": _with(reply, audit=ConfigRecord({"manifest": "[" * 200_000, "signature": audit["signature"]})),
        "oversized signature": _with(reply, audit=ConfigRecord({"manifest": audit["manifest"], "signature": "A" * 9_000_000})),
        "signature not a string": _with(reply, audit=ConfigRecord({"manifest": audit["manifest"], "signature": 5})),
        "metrics as a config record": _with(reply, metrics=ConfigRecord({"num-examples": 5})),
        "no metrics": _with(reply, metrics=MetricRecord({})),
    }


def test_hostile_reply_content_is_recorded_as_malformed_and_never_stops_the_round(pki, base):
    for name, reply in _hostile_replies(pki, base).items():
        verdict = verify_round([reply], context(pki, base, 1))
        assert [e.reason for e in verdict.entries] == ["malformed"], name
        entry = verdict.entries[0]
        assert entry.signature is None or len(entry.signature) <= 96, name
        assert len(entry.canonical()) < 4096, name


@pytest.mark.parametrize("changes", [{"num_examples": 0}, {"num_examples": 2**62}, {"v": True}, {"v": 1.0}])
def test_signed_manifests_with_out_of_range_weight_or_odd_version_are_malformed(pki, base, changes):
    reply = run_round(pki, base, 1, {}, {})[0]
    resigned = _resigned(reply, key=pki["bank-a"][0], **changes)
    if "num_examples" in changes:
        from flwr.app import MetricRecord
        resigned = _with(resigned, metrics=MetricRecord({"num-examples": changes["num_examples"]}))
    verdict = verify_round([resigned], context(pki, base, 1))
    assert [e.reason for e in verdict.entries] == ["malformed"]


def test_high_s_signature_is_rejected_as_high_s(pki, base):
    import base64

    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
    from flwr.app import ConfigRecord

    from ledger.formats import P256_ORDER

    reply = run_round(pki, base, 1, {}, {})[0]
    r, s = decode_dss_signature(base64.b64decode(str(reply.content["audit"]["signature"])))
    twin = base64.b64encode(encode_dss_signature(r, P256_ORDER - s)).decode()
    reply = _with(reply, audit=ConfigRecord({"manifest": reply.content["audit"]["manifest"], "signature": twin}))
    assert [e.reason for e in verify_round([reply], context(pki, base, 1)).entries] == ["high_s"]


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


def test_an_update_signed_under_an_expired_certificate_is_rejected_as_cert_expired(pki, base):
    import datetime as dt

    replies = run_round(pki, base, 1, {}, {})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=5000)  # after every demo certificate expired
    verdict = verify_round(replies, context(pki, base, 1, now=later))
    assert {e.reason for e in verdict.entries} == {"cert_expired"}
    assert verdict.accepted == []
