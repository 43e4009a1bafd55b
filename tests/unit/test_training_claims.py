"""Signed training claims: the real ClientApp trains as the coordinator's config says and
the signing mod signs a version 2 manifest over exactly the (compressed) arrays it sends.

The ClientApp is the real one (train handler, signing mod), driven in-process; the relay
path runs the trainer's own ``handle`` and the relay's protobuf parsing, without sockets.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import context_to_proto, message_to_proto, recorddict_from_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fl import demo_data
from fl import evaluation as fl_eval
from fl import model as fl_model
from fl.client_app import ClientRuntime, make_client_app
from fl.records import to_arrays, to_record
from fl.signing import SignerSpec, key_signer, make_signing_mod
from fl.trainer import handle
from ledger.compression import SCALE_SUFFIX, decompress
from ledger.formats import Manifest, update_digest, verify
from ledger.privacy import check_claim
from tests.fixtures.flower import task_identity  # noqa: F401

FED = "claims-fed"
SPEC = fl_model.ModelSpec(seed=4, hidden=(32, 16))
N_FEATURES = demo_data.credit_schema().n_features
KEY = ec.generate_private_key(ec.SECP256R1())
BASE_CONFIG = {"federation": FED, "round": 2, "local-epochs": 2, "learning-rate": 0.05, "batch-size": 64,
               "seed": 5}
DP_CONFIG = {"dp-epsilon": 3.0, "dp-delta": 1e-5, "dp-max-grad-norm": 1.2}
FULL_CONFIG = {**BASE_CONFIG, "algorithm": "fedprox", "fedprox-mu": 0.05, "compression": "int8", **DP_CONFIG}


def _load() -> tuple[np.ndarray, np.ndarray]:
    return demo_data.load_partition(0, 3, 7)


def resolver(context: Context) -> ClientRuntime:
    return ClientRuntime(participant="bank-a", key=KEY, load_data=functools.partial(_load), model=SPEC)


@pytest.fixture(scope="module")
def base() -> dict[str, np.ndarray]:
    return fl_model.initial_arrays(SPEC, N_FEATURES)


def _message(base, config) -> Message:
    return Message(RecordDict({"arrays": to_record(base), "config": ConfigRecord(dict(config))}),
                   dst_node_id=100, message_type="train")


def _context() -> Context:
    return Context(run_id=1, node_id=100, node_config={"partition-id": 0, "num-partitions": 3},
                   state=RecordDict(), run_config={})


def _reply(base, config) -> tuple[Manifest, dict[str, np.ndarray], Message]:
    reply = make_client_app(resolver)(_message(base, config), _context())
    assert not reply.has_error()
    audit = reply.content["audit"]
    verify(str(audit["manifest"]).encode("utf-8"), str(audit["signature"]), KEY.public_key())
    return Manifest.parse(str(audit["manifest"])), to_arrays(reply.content["arrays"]), reply


def _trained_locally(base, config, **kw) -> dict[str, np.ndarray]:
    """What the handler trains, redone outside it (training is deterministic from the seed)."""
    X, y, _, _ = fl_eval.holdout_split(*_load(), fl_eval.eval_fraction(config), int(config["seed"]))
    model = fl_model.build_model(SPEC, N_FEATURES)
    fl_model.set_arrays(model, base)
    fl_model.train(model, X, y, epochs=2, lr=0.05, batch_size=64, seed=int(config["seed"]) + int(config["round"]),
                   global_arrays=base, **kw)
    return fl_model.get_arrays(model)


def _distance(a, b) -> float:
    return math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in b))


def test_fedprox_int8_dp_reply_is_signed_as_a_v2_manifest_of_the_compressed_arrays(base) -> None:
    manifest, sent, reply = _reply(base, FULL_CONFIG)

    claim = manifest.training
    assert manifest.v == 2 and manifest.round == 2 and manifest.base_model == update_digest(base)
    assert (claim.algorithm, claim.mu_ppm, claim.compression) == ("fedprox", 50_000, "int8")
    assert claim.dp.delta_ppb == 10_000 and claim.dp.max_grad_norm_ppm == 1_200_000
    assert 0 < claim.dp.epsilon_ppm <= 3_000_000 + 1 and check_claim(claim.dp) is None
    assert json.loads(reply.content["training"]["claim"]) == claim.to_dict()
    # The signed digest is over exactly what travelled: int8 tensors and their 0-d float32 scales.
    assert manifest.update == update_digest(sent)
    assert sorted(sent) == sorted([*base, *(n + SCALE_SUFFIX for n in base)])
    assert all(sent[n].dtype == np.int8 and sent[n + SCALE_SUFFIX].shape == () for n in base)


def test_the_int8_reply_decompresses_to_within_half_a_step_of_the_trained_model(base) -> None:
    _, sent, _ = _reply(base, FULL_CONFIG)
    trained = _trained_locally(base, FULL_CONFIG, mu=0.05,
                               dp=fl_model.DPSettings(epsilon=3.0, delta=1e-5, max_grad_norm=1.2))

    dense = decompress(sent, base, "int8")

    assert _distance(trained, base) > 0  # something was learnt
    for name in base:
        half_step = float(sent[name + SCALE_SUFFIX]) / 2
        assert np.max(np.abs(dense[name].astype(np.float64) - trained[name])) <= half_step * 1.0001 + 1e-7, name


def test_without_training_keys_the_reply_is_plain_fedavg_float32_signed_as_v2_with_the_plain_claim(base) -> None:
    manifest, sent, _ = _reply(base, BASE_CONFIG)

    assert manifest.v == 2 and manifest.training.to_dict() == {"algorithm": "fedavg", "compression": "none",
                                                               "dp": None, "mu_ppm": 0}
    assert manifest.update == update_digest(sent)
    trained = _trained_locally(base, BASE_CONFIG)
    assert all(sent[k].tobytes() == trained[k].tobytes() for k in base)


def test_fedprox_with_a_huge_mu_keeps_the_update_much_closer_to_the_base_than_mu_zero(base) -> None:
    _, free, _ = _reply(base, {**BASE_CONFIG, "algorithm": "fedprox", "fedprox-mu": 0.0})
    manifest, held, _ = _reply(base, {**BASE_CONFIG, "algorithm": "fedprox", "fedprox-mu": 10.0})

    assert manifest.training.mu_ppm == 10_000_000
    assert _distance(held, base) < 0.2 * _distance(free, base)


@pytest.mark.parametrize(("change", "named"), [
    ({"algorithm": "scaffold"}, "'algorithm'"),
    ({"compression": "top-k"}, "'compression'"),
    ({"dp-epsilon": 1.0, "dp-delta": 1e-5}, "'dp-max-grad-norm'"),
    ({"dp-epsilon": -1.0, "dp-delta": 1e-5, "dp-max-grad-norm": 1.0}, "epsilon"),
    ({"fedprox-mu": 0.5}, "'fedprox-mu'"),
    ({"algorithm": "fedprox", "fedprox-mu": "lots"}, "'fedprox-mu'"),
])
def test_an_unknown_or_incomplete_training_config_is_refused_naming_the_key(base, change, named) -> None:
    with pytest.raises(ValueError, match=named):
        make_client_app(resolver)(_message(base, {**BASE_CONFIG, **change}), _context())


def test_the_claim_survives_the_relay_wire_and_the_relay_signs_it_into_v2(base) -> None:
    unsigned = make_client_app(resolver, audited=False)
    node_config = {"partition-id": 0, "num-partitions": 3}

    def relayed(msg: Message, context: Context) -> Message:
        # What the relay does: the trainer's reply content, as protobuf, parsed back.
        content = handle(unsigned, node_config, message_to_proto(msg).SerializeToString(),
                         context_to_proto(context).SerializeToString())
        proto = ProtoRecordDict()
        proto.ParseFromString(content)
        return Message(recorddict_from_proto(proto), reply_to=msg)

    sign = make_signing_mod(lambda ctx: SignerSpec("bank-a", key_signer(KEY)))
    msg = _message(base, {**BASE_CONFIG, "algorithm": "fedprox", "fedprox-mu": 0.1, "compression": "int8"})
    reply = sign(msg, _context(), relayed)

    manifest = Manifest.parse(str(reply.content["audit"]["manifest"]))
    assert manifest.v == 2 and manifest.training.compression == "int8" and manifest.training.mu_ppm == 100_000
    sent = to_arrays(reply.content["arrays"])
    assert manifest.update == update_digest(sent)
    assert all(sent[n + SCALE_SUFFIX].shape == () for n in base)  # 0-d scales stay 0-d on the wire
    assert sorted(decompress(sent, base, "int8")) == sorted(base)
