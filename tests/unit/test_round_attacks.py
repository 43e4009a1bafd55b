"""Attacks on the round's own checks by a participant, each reproduced and then stopped.

Prepare: three demo institutions (1311, 2217 and 35 rows; 1049, 1773 and 28 of them for
training, the rest held out for evaluation) answer a train
message through the real ClientApp; an attacker re-signs its own reply with another
example count or other tensors (it holds its key, so every forged reply is authentic).
Execute: the coordinator's checks (:func:`fl.verification.verify_round`) and the
contribution scorer. Assert: the lie is rejected, capped or earns nothing extra.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fl.records import to_arrays, to_record
from fl.verification import RoundContext, verify_round
from ledger.aggregate import WeightedUpdate, capped_weights, fedavg
from ledger.formats import Manifest, sign, update_digest
from ledger.incentives import compute_rewards
from ledger.records import FederationPolicy, RoundEntry, RoundRecord, ScorerSpec
from ledger.robustness import outliers
from ledger.scoring import cosine_scores
from ledger.pki import certificate_pem, demo_identity
from tests.fixtures.flower import task_identity  # noqa: F401
from tests.unit.test_round_checks import FED, IDS, participants, run_round

PPM = 1_000_000


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[object, str]]:
    root = tmp_path_factory.mktemp("pki")
    out = {}
    for pid in IDS:
        key, cert, _ = demo_identity(root, pid, f"Org{pid[-1].upper()}MSP")
        out[pid] = (key, certificate_pem(cert))
    return out


@pytest.fixture(scope="module")
def base() -> dict[str, np.ndarray]:
    from fl import demo_data
    from fl import model as fl_model

    return fl_model.initial_arrays(fl_model.ModelSpec(seed=1), demo_data.credit_schema().n_features)


def forged(reply: Message, key, *, arrays: dict[str, np.ndarray] | None = None,
           num_examples: int | None = None) -> Message:
    """``reply`` with other tensors and/or example count, correctly signed by ``key``."""
    manifest = Manifest.parse(str(reply.content["audit"]["manifest"]))
    arrays = arrays if arrays is not None else to_arrays(reply.content["arrays"])
    fields = manifest.to_dict()
    fields["update"] = update_digest(arrays)
    if num_examples is not None:
        fields["num_examples"] = num_examples
    signed = Manifest(**{**fields, "training": manifest.training})
    content = RecordDict({
        "arrays": to_record(arrays),
        "metrics": MetricRecord({"num-examples": signed.num_examples}),
        "audit": ConfigRecord({"manifest": signed.to_bytes().decode(), "signature": sign(signed.to_bytes(), key)}),
    })
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=int(reply.metadata.src_node_id),
                                             message_type="train"))


def ctx(pki, base, round_no=1, policy: FederationPolicy | None = None, declared=None, **kw) -> RoundContext:
    ps = participants(pki)
    if declared is not None:
        ps = {pid: p.model_copy(update={"declared_examples": declared.get(pid)}) for pid, p in ps.items()}
    return RoundContext(federation=FED, round=round_no, base_model=update_digest(base), base_arrays=base,
                        participants=ps, policy=policy or FederationPolicy(), **kw)


def scaled(base: dict[str, np.ndarray], arrays: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """``base + factor × (arrays − base)``: a boosted (model-replacement style) update."""
    return {n: (base[n] + np.float32(factor) * (arrays[n] - base[n])).astype(base[n].dtype) for n in base}


@pytest.fixture(scope="module")
def honest(pki, base) -> list[Message]:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    return run_round(pki, base, 1, {}, {})


# --- item 1: self-reported num_examples --------------------------------------------------


def test_the_demo_split_gives_the_attacker_a_few_dozen_rows(honest):
    claims = [Manifest.parse(str(r.content["audit"]["manifest"])).num_examples for r in honest]
    assert claims == [1049, 1773, 28]


def test_a_claim_above_the_signed_declaration_is_rejected_as_examples_over_declared(pki, base, honest):
    liar = forged(honest[2], pki["bank-c"][0], num_examples=1_000_000)
    declared = {"bank-a": 1311, "bank-b": 2217, "bank-c": 35}
    verdict = verify_round([*honest[:2], liar], ctx(pki, base, declared=declared))
    assert verify_round([*honest[:2], liar], ctx(pki, base)).accepted != []  # no declaration: no such check
    by_pid = {e.participant: e for e in verdict.entries}
    assert by_pid["bank-c"].status == "rejected"
    assert by_pid["bank-c"].reason == "examples_over_declared"
    assert by_pid["bank-c"].num_examples == 1_000_000  # the signed claim stays as evidence
    assert [u.participant for u in verdict.accepted] == ["bank-a", "bank-b"]


def test_a_claim_at_or_under_the_declaration_is_accepted(pki, base, honest):
    declared = {"bank-a": 1311, "bank-b": 5000, "bank-c": 35}
    verdict = verify_round(honest, ctx(pki, base, declared=declared))
    assert [e.status for e in verdict.entries] == ["accepted"] * 3


def test_a_35_row_participant_claiming_a_million_examples_is_an_outlier_by_weight(pki, base, honest):
    # Without a declaration (a registration from before declarations), the claim took
    # 99.7 % of the FedAvg weight; the weight test stops it.
    liar = forged(honest[2], pki["bank-c"][0], num_examples=1_000_000)
    verdict = verify_round([*honest[:2], liar], ctx(pki, base))
    by_pid = {e.participant: e for e in verdict.entries}
    assert (by_pid["bank-c"].status, by_pid["bank-c"].reason) == ("rejected", "outlier")
    assert "examples" in (by_pid["bank-c"].detail or "")
    assert sum(u.weight for u in verdict.accepted) == 1049 + 1773


def test_a_scaled_poisoned_update_with_a_huge_claim_is_rejected(pki, base, honest):
    arrays = to_arrays(honest[2].content["arrays"])
    poison = scaled(base, arrays, -9.0)  # reversed and boosted: accepted before the fix
    liar = forged(honest[2], pki["bank-c"][0], arrays=poison, num_examples=1_000_000)
    verdict = verify_round([*honest[:2], liar], ctx(pki, base))
    assert [u.participant for u in verdict.accepted] == ["bank-a", "bank-b"]
    assert {e.participant: e.reason for e in verdict.rejected()} == {"bank-c": "outlier"}


def test_a_weight_claim_within_the_ratio_is_capped_to_the_policy_share(pki, base, honest):
    # 9 × the median of the others passes the weight test; the cap bounds its share.
    liar = forged(honest[2], pki["bank-c"][0], num_examples=9 * 1411)
    policy = FederationPolicy(max_weight_share_ppm=500_000)
    verdict = verify_round([*honest[:2], liar], ctx(pki, base, policy=policy))
    weights = {u.participant: u.weight for u in verdict.accepted}
    assert weights["bank-a"] == 1049 and weights["bank-b"] == 1773
    assert weights["bank-c"] * PPM <= 500_000 * sum(weights.values()) < 9 * 1411 * PPM
    assert weights == capped_weights({"bank-a": 1049, "bank-b": 1773, "bank-c": 9 * 1411}, 500_000)


@pytest.mark.parametrize("peers", [0, 1])
def test_a_boosted_update_is_an_outlier_even_with_one_or_two_candidates(pki, base, honest, peers):
    arrays = to_arrays(honest[1].content["arrays"])
    boosted = forged(honest[1], pki["bank-b"][0], arrays=scaled(base, arrays, 200.0))
    verdict = verify_round([*honest[:peers], boosted], ctx(pki, base))
    assert {e.participant: e.reason for e in verdict.rejected()} == {"bank-b": "outlier"}
    honest_only = verify_round([*honest[:peers], honest[1]], ctx(pki, base))
    assert honest_only.rejected() == []


def test_with_two_candidates_a_lying_claim_is_bounded_by_the_declaration_and_the_cap(pki, base, honest):
    liar = forged(honest[2], pki["bank-c"][0], num_examples=1_000_000)
    declared = verify_round([honest[0], liar], ctx(pki, base, declared={"bank-a": 1311, "bank-c": 35}))
    assert {e.participant: (e.status, e.reason) for e in declared.entries} == {
        "bank-a": ("accepted", None), "bank-c": ("rejected", "examples_over_declared")}
    # One peer cannot tell the liar from a larger institution: the cap bounds its share.
    capped_round = verify_round([honest[0], liar], ctx(pki, base, policy=FederationPolicy(max_weight_share_ppm=500_000)))
    assert {u.participant: u.weight for u in capped_round.accepted} == {"bank-a": 1049, "bank-c": 1049}


def test_an_honest_large_institution_is_not_an_outlier_beside_a_small_one(pki, base, honest):
    verdict = verify_round([honest[1], honest[2]], ctx(pki, base))  # 1773 vs 28 examples
    assert [e.status for e in verdict.entries] == ["accepted", "accepted"]


def test_outlier_parameters_come_from_the_policy(pki, base, honest):
    strict = FederationPolicy(outlier_norm_ratio_ppm=1_000_100)  # barely above the median
    verdict = verify_round(honest, ctx(pki, base, policy=strict))
    assert [e.reason for e in verdict.rejected()] == ["outlier"]
    assert verify_round(honest, ctx(pki, base)).rejected() == []


def test_the_outlier_function_is_independent_of_order_and_recomputable(base, honest):
    updates = [WeightedUpdate(p, Manifest.parse(str(r.content["audit"]["manifest"])).num_examples,
                              to_arrays(r.content["arrays"])) for p, r in zip(IDS, honest)]
    policy = FederationPolicy(outlier_norm_ratio_ppm=1_000_100)
    assert outliers(base, updates, policy) == outliers(base, list(reversed(updates)), policy)


def test_the_reference_of_a_small_round_is_the_previous_base_as_stored(tmp_path, base):
    from types import SimpleNamespace

    from ledger.artifacts import ArtifactStore
    from ledger.robustness import global_change_norm, previous_base

    store = ArtifactStore(tmp_path)
    digest = store.put(base)
    rounds = {1: SimpleNamespace(record=SimpleNamespace(base_model=digest))}
    fake = SimpleNamespace(get_round=lambda fed, r: rounds[r])  # only get_round is read
    assert previous_base(fake, FED, 1, store) is None  # type: ignore[arg-type]
    previous = previous_base(fake, FED, 2, store)  # type: ignore[arg-type]
    assert previous is not None and update_digest(previous) == digest
    moved = {n: (a + np.float32(1)).astype(a.dtype) for n, a in base.items()}
    assert abs(global_change_norm(previous, moved) - sum(a.size for a in base.values()) ** 0.5) < 1e-6


def test_a_lone_update_of_a_zero_initialised_model_is_judged_against_last_rounds_change():
    base = {"w": np.zeros(4, np.float32)}
    lone = [WeightedUpdate("bank-a", 10, {"w": np.full(4, 50.0, np.float32)})]
    assert outliers(base, lone, FederationPolicy()) == {}  # no reference yet: nothing to compare with
    assert set(outliers(base, lone, FederationPolicy(), previous_change=1.0)) == {"bank-a"}
    assert outliers(base, lone, FederationPolicy(), previous_change=20.0) == {}


# --- the weight cap rule ------------------------------------------------------------------


def test_capped_weights_leave_federations_under_the_cap_untouched():
    counts = {"bank-a": 1311, "bank-b": 2217, "bank-c": 35}
    assert capped_weights(counts, PPM) == counts
    assert capped_weights(counts, 800_000) == counts  # 2217/3563 = 62 % < 80 %


@pytest.mark.parametrize("cap", [340_000, 400_000, 500_000, 700_000, 900_000])
def test_capped_weights_never_exceed_the_cap_and_keep_small_participants(cap):
    counts = {"a": 1_000_000, "b": 2217, "c": 1311, "d": 35, "e": 999_999}
    weights = capped_weights(counts, cap)
    total = sum(weights.values())
    assert all(w * PPM <= cap * total for w in weights.values())
    assert all(1 <= weights[p] <= counts[p] for p in counts)
    assert weights["d"] == 35  # only those above the cap are clipped
    assert len({w for p, w in weights.items() if w < counts[p]}) <= 1  # all clipped to one level


def test_an_infeasible_cap_gives_equal_weights():
    assert capped_weights({"a": 10, "b": 500}, 400_000) == {"a": 1, "b": 1}
    assert capped_weights({"a": 10}, 400_000) == {"a": 1}


def test_capped_fedavg_gives_the_liar_at_most_the_cap(base, honest):
    counts = {"bank-a": 1311, "bank-b": 2217, "bank-c": 1_000_000}
    weights = capped_weights(counts, 500_000)
    assert weights["bank-c"] * 2 <= sum(weights.values())


# --- item 6: the cosine scorer leaves the scored participant out -------------------------


def _updates(replies: list[Message]) -> list[WeightedUpdate]:
    return [WeightedUpdate(p, Manifest.parse(str(r.content["audit"]["manifest"])).num_examples,
                           to_arrays(r.content["arrays"])) for p, r in zip(IDS, replies)]


def _rewards(scores: dict[str, int]) -> dict[str, int]:
    entries = [RoundEntry(participant=p, status="accepted", score_ppm=v) for p, v in scores.items()]
    return compute_rewards(RoundRecord(round=2, base_model="0" * 64, scorer=ScorerSpec(), entries=entries), 1000)


@pytest.mark.parametrize("lazy_pid", IDS)
def test_an_untrained_update_pushed_along_last_rounds_change_earns_no_more_than_training(pki, base, honest,
                                                                                       lazy_pid):
    g1 = fedavg(_updates(honest))
    trained = _updates(run_round(pki, g1, 2, {}, {}))
    # The lazy participant skips training and sends the global model pushed along last
    # round's change. Scored against an aggregate holding it (before the fix), this earned
    # bank-b 175880 ppm where training earned it -53368.
    step = {n: (g1[n] + (g1[n] - base[n])).astype(g1[n].dtype) for n in g1}
    lazy = [WeightedUpdate(u.participant, u.weight, step) if u.participant == lazy_pid else u for u in trained]
    honest_scores, lazy_scores = cosine_scores(g1, trained, base), cosine_scores(g1, lazy, base)
    assert lazy_scores[lazy_pid] == 0  # it adds nothing new
    assert lazy_scores[lazy_pid] <= max(honest_scores[lazy_pid], 0)
    assert _rewards(lazy_scores)[lazy_pid] <= _rewards(honest_scores)[lazy_pid]


def test_a_participant_is_scored_against_the_others_only(base, honest):
    ups = _updates(honest)
    scores = cosine_scores(base, ups)
    for update in ups:
        others = fedavg([u for u in ups if u is not update])
        delta = np.concatenate([(update.arrays[n].astype(np.float64) - base[n]).ravel() for n in sorted(base)])
        ref = np.concatenate([(others[n].astype(np.float64) - base[n]).ravel() for n in sorted(base)])
        expected = float(delta @ ref) / float(np.linalg.norm(delta) * np.linalg.norm(ref))
        assert abs(scores[update.participant] - expected * PPM) <= 2


def test_cosine_scores_are_integers_independent_of_order(base, honest):
    updates = [WeightedUpdate(p, 10 + i, to_arrays(r.content["arrays"])) for i, (p, r) in enumerate(zip(IDS, honest))]
    scores = cosine_scores(base, updates)
    assert scores == cosine_scores(base, list(reversed(updates)))
    assert all(type(s) is int and -PPM <= s <= PPM for s in scores.values())


def test_a_lone_update_scores_zero_since_nobody_else_is_there_to_agree(base, honest):
    update = WeightedUpdate("bank-a", 10, to_arrays(honest[0].content["arrays"]))
    assert cosine_scores(base, [update]) == {"bank-a": 0}


# --- item 8c: shapes and sizes before decoding; a round's memory is bounded -------------


class _Exploding(Array):
    """An Array that fails the test if anything decodes it."""

    def numpy(self):  # type: ignore[override]
        raise AssertionError("an oversized reply was decoded")


def _with_arrays(reply: Message, record: ArrayRecord) -> Message:
    content = RecordDict(dict(reply.content.items()))
    content["arrays"] = record
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=int(reply.metadata.src_node_id),
                                             message_type="train"))


def test_an_npy_header_claiming_a_terabyte_is_malformed_and_does_not_stop_the_round(pki, base, honest):
    from numpy.lib import format as npy

    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (2**38,)})
    buf.write(b"\0" * 64)
    arrays = {n: Array(np.ascontiguousarray(a)) for n, a in base.items()}
    first = sorted(arrays)[0]
    ref = base[first]
    arrays[first] = Array(dtype=str(ref.dtype), shape=tuple(ref.shape), stype="numpy.ndarray", data=buf.getvalue())
    bomb = _with_arrays(honest[0], ArrayRecord(arrays))
    verdict = verify_round([bomb, *honest[1:]], ctx(pki, base))
    assert {e.participant: e.reason for e in verdict.rejected()} == {"bank-a": "malformed"}
    assert [u.participant for u in verdict.accepted] == ["bank-b", "bank-c"]


def test_an_oversized_reply_is_malformed_without_being_decoded(pki, base, honest):
    big = np.zeros(4_000_000, np.float32)
    record = ArrayRecord({**{n: Array(np.ascontiguousarray(a)) for n, a in base.items()},
                          "extra": _Exploding(dtype="float32", shape=big.shape, stype="numpy.ndarray",
                                              data=Array(big).data)})
    verdict = verify_round([_with_arrays(honest[0], record)], ctx(pki, base))
    assert [e.reason for e in verdict.entries] == ["malformed"]
    assert "bytes" in (verdict.entries[0].detail or "")


@pytest.mark.parametrize("declared", [
    {"dtype": "float32", "shape": (10**9,)},  # a declared shape far bigger than its data
    {"dtype": "object", "shape": (2,)},       # not a plain numeric dtype
    {"dtype": "float32", "shape": (-1,)},     # not a shape
])
def test_declared_tensor_metadata_is_checked_before_decoding(pki, base, honest, declared):
    first = sorted(base)[0]
    arrays = {n: Array(np.ascontiguousarray(a)) for n, a in base.items()}
    arrays[first] = _Exploding(stype="numpy.ndarray", data=arrays[first].data, **declared)
    verdict = verify_round([_with_arrays(honest[0], ArrayRecord(arrays))], ctx(pki, base))
    assert [e.reason for e in verdict.entries] == ["malformed"]


def test_decoded_tensors_must_match_what_they_declare(pki, base, honest):
    first = next(n for n in sorted(base) if base[n].ndim == 2)
    arrays = {n: Array(np.ascontiguousarray(a)) for n, a in base.items()}
    other = np.zeros_like(base[first]).ravel()  # the same bytes, another shape
    arrays[first] = Array(dtype=str(base[first].dtype), shape=tuple(base[first].shape),
                          stype="numpy.ndarray", data=Array(other).data)
    verdict = verify_round([_with_arrays(honest[0], ArrayRecord(arrays))], ctx(pki, base))
    assert [e.reason for e in verdict.entries] == ["malformed"]


def test_a_wrongly_shaped_signed_tensor_within_the_size_bound_is_still_wrong_shape(pki, base, honest):
    arrays = to_arrays(honest[0].content["arrays"])
    first = sorted(arrays)[0]
    arrays[first] = np.concatenate([arrays[first], arrays[first][:1]], axis=0)
    verdict = verify_round([forged(honest[0], pki["bank-a"][0], arrays=arrays)], ctx(pki, base))
    assert [e.reason for e in verdict.entries] == ["wrong_shape"]


def test_a_round_over_its_memory_bound_refuses_the_rest_in_a_fixed_order(pki, base, honest):
    model_bytes = sum(a.nbytes for a in base.values())
    one = verify_round(honest, ctx(pki, base, max_round_bytes=2 * model_bytes))
    two = verify_round(list(reversed(honest)), ctx(pki, base, max_round_bytes=2 * model_bytes))
    assert [e.canonical() for e in one.entries] == [e.canonical() for e in two.entries]
    assert [e.status for e in one.entries].count("accepted") == 2
    assert [e.reason for e in one.rejected()] == ["malformed"]
    assert "memory" in (one.rejected()[0].detail or "")


# --- item 8b and the policy: the federation file's MSP ids and round rules ------------

FILE = """
[federation]
id = "credit-eu"
{extra}

[[federation.participants]]
id = "bank-a"
msp_id = "BankAMSP"
"""


@pytest.mark.parametrize("extra, key", [
    ('coordinator_msp = "../../etc"', "federation.coordinator_msp"),
    ('coordinator_msp = "Coord/MSP"', "federation.coordinator_msp"),
    ('auditor_msps = ["AuditorMSP", "../outside"]', "federation.auditor_msps.1"),
    ('auditor_msps = [".."]', "federation.auditor_msps.0"),
    ('auditor_msps = ["AuditorMSP", "AuditorMSP"]', "federation.auditor_msps"),
    ("max_weight_share = 0", "federation.max_weight_share"),
    ("max_weight_ratio = 1", "federation.max_weight_ratio"),
])
def test_msp_ids_that_would_leave_the_workspace_and_bad_round_rules_are_config_errors(tmp_path, extra, key):
    from fl.config import ConfigError, load_config

    path = tmp_path / "federation.toml"
    path.write_text(FILE.format(extra=extra))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {key}")


def test_the_round_rules_of_the_federation_file_go_into_the_policy(tmp_path):
    from fl.config import override
    from fl.demo import demo_config
    from fl.server_app import federation_policy

    cfg = override(demo_config(tmp_path, 2, 3), max_norm_ratio=4.0, max_weight_ratio=20.0,
                   max_weight_share=0.5).model_copy(update={"validation": None, "scorer": "cosine"})
    policy = federation_policy(cfg)
    assert (policy.outlier_norm_ratio_ppm, policy.outlier_weight_ratio_ppm, policy.max_weight_share_ppm) == (
        4 * PPM, 20 * PPM, PPM // 2)
    default = federation_policy(demo_config(tmp_path / "d", 2, 3).model_copy(update={"validation": None, "scorer": "cosine"}))
    assert default.max_weight_share_ppm == 800_000  # above the demo's largest share (62 %)


def test_a_policy_written_before_the_round_rules_reads_with_no_cap():
    from chaincode.schema import POLICY

    old = FederationPolicy.parse('{"auditor_msps":[],"reward_budget":10}')
    assert old.max_weight_share_ppm == PPM and old.outlier_norm_ratio_ppm == 10 * PPM
    stored = POLICY({"auditor_msps": [], "reward_budget": 10}, "policy")
    assert FederationPolicy.parse(stored) == old  # the contract fills the same defaults
    from chaincode.errors import Invalid

    with pytest.raises(Invalid):
        POLICY({"max_weight_share_ppm": 0}, "policy")
    with pytest.raises(Invalid):
        POLICY({"outlier_norm_ratio_ppm": PPM}, "policy")
