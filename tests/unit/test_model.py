"""Unit tests for fl.model: the declared model, learning, determinism, strict array exchange."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from fl.demo_data import credit_schema, load_partition, load_test
from fl.model import ModelSpec, build_model, evaluate, get_arrays, initial_arrays, set_arrays, train

N_FEATURES = credit_schema().n_features
NEAR_IID = 1000.0  # Dirichlet alpha that gives each partition roughly the global label mix


def _model(seed: int = 0, spec: ModelSpec | None = None) -> nn.Module:
    spec = spec or ModelSpec(seed=seed)
    model = build_model(spec, N_FEATURES)
    set_arrays(model, initial_arrays(spec, N_FEATURES))
    return model


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key


def test_training_on_one_partition_beats_the_initial_model_and_the_majority_class() -> None:
    X, y = load_partition(0, 3, seed=7, alpha=NEAR_IID)
    X_test, y_test = load_test(3, seed=7, alpha=NEAR_IID)
    model = _model(seed=7)
    before = evaluate(model, X_test, y_test)

    result = train(model, X, y, epochs=5, lr=0.05, batch_size=64, seed=7)

    after = evaluate(model, X_test, y_test)
    majority = max(y_test.mean(), 1 - y_test.mean())
    assert result["num_examples"] == len(y)
    assert after["accuracy"] > max(before["accuracy"], majority) + 0.03
    assert after["auc"] > 0.75
    assert after["loss"] < before["loss"]


def test_same_seed_trains_bit_identical_arrays_and_another_seed_does_not() -> None:
    X, y = load_partition(1, 3, seed=0)
    runs = []
    for seed in (11, 11, 12):
        model = _model()
        train(model, X, y, epochs=2, lr=0.05, batch_size=32, seed=seed)
        runs.append(get_arrays(model))

    _assert_same_arrays(runs[0], runs[1])
    assert not np.array_equal(runs[0]["hidden.0.weight"], runs[2]["hidden.0.weight"])


def test_initial_arrays_are_bit_identical_per_seed_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    first = initial_arrays(ModelSpec(seed=4), N_FEATURES)

    assert torch.equal(torch.rand(1), expected_next)
    _assert_same_arrays(first, initial_arrays(ModelSpec(seed=4), N_FEATURES))
    other = initial_arrays(ModelSpec(seed=5), N_FEATURES)
    assert not np.array_equal(first["out.weight"], other["out.weight"])
    assert {k: v.shape for k, v in first.items()} == {
        "hidden.0.weight": (32, N_FEATURES),
        "hidden.0.bias": (32,),
        "out.weight": (1, 32),
        "out.bias": (1,),
    }
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in first.values())


def test_get_arrays_returns_float32_contiguous_copies() -> None:
    model = _model()

    arrays = get_arrays(model)
    arrays["out.bias"][:] = 99.0

    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays.values())
    assert model.out.bias.item() != 99.0


def test_set_arrays_round_trips_and_does_not_alias_the_caller_arrays() -> None:
    source = initial_arrays(ModelSpec(seed=9), N_FEATURES)
    model = _model(seed=1)

    set_arrays(model, source)
    source["out.bias"][:] = 99.0

    assert model.out.bias.item() != 99.0
    source["out.bias"][:] = initial_arrays(ModelSpec(seed=9), N_FEATURES)["out.bias"]
    _assert_same_arrays(get_arrays(model), source)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda a: a.pop("out.bias"), "missing key 'out.bias'"),
        (lambda a: a.update(extra=np.zeros(1, np.float32)), "unexpected key 'extra'"),
        (
            lambda a: a.update({"hidden.0.bias": np.zeros(31, np.float32)}),
            r"key 'hidden.0.bias': shape \(31,\)",
        ),
        (
            lambda a: a.update({"out.weight": a["out.weight"].astype(np.float64)}),
            "key 'out.weight': dtype float64",
        ),
        (lambda a: a.update({"out.bias": [0.0]}), "key 'out.bias': expected a numpy array"),
    ],
    ids=["missing", "extra", "shape", "dtype", "not-an-array"],
)
def test_set_arrays_refuses_a_mismatch_naming_the_key_and_leaves_the_model_unchanged(
    corrupt: Callable[[dict[str, Any]], object], message: str
) -> None:
    model = _model(seed=2)
    before = get_arrays(model)
    arrays = initial_arrays(ModelSpec(seed=3), N_FEATURES)
    arrays["hidden.0.weight"][:] = 7.0  # a visible change if a partial load happened
    corrupt(arrays)

    with pytest.raises(ValueError, match=message):
        set_arrays(model, arrays)

    _assert_same_arrays(get_arrays(model), before)


def test_arrays_of_another_architecture_are_refused() -> None:
    model = _model(spec=ModelSpec(hidden=(32,)))

    with pytest.raises(ValueError, match="missing key 'hidden.0.weight'"):
        set_arrays(model, initial_arrays(ModelSpec(kind="logistic"), N_FEATURES))


def test_evaluate_reports_chance_auc_for_a_single_class_instead_of_nan() -> None:
    X, y = load_test(3, seed=0)
    only_good = y == 0

    metrics = evaluate(_model(), X[only_good], y[only_good])

    assert metrics["auc"] == 0.5
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["num_examples"] == int(only_good.sum())


def test_evaluate_leaves_the_training_mode_as_it_found_it() -> None:
    model = _model()
    X, y = load_test(3, seed=0)

    model.train()
    evaluate(model, X, y)

    assert model.training


def test_train_refuses_mismatched_shapes() -> None:
    X, y = load_partition(0, 3, seed=0)

    with pytest.raises(ValueError, match="need X"):
        train(_model(), X, y[:-1], epochs=1, lr=0.05, batch_size=32, seed=0)


# --- the declared model -----------------------------------------------------------------


def test_the_federation_model_table_validates_and_defaults_to_one_hidden_layer_of_32() -> None:
    table = tomllib.loads('[federation.model]\nkind = "mlp"\nhidden = [16, 8]\nseed = 7\n')

    spec = ModelSpec.model_validate(table["federation"]["model"])

    assert (spec.kind, spec.hidden, spec.seed) == ("mlp", (16, 8), 7)
    assert ModelSpec() == ModelSpec(kind="mlp", hidden=(32,), seed=42)
    assert ModelSpec.model_validate({"kind": "logistic"}).hidden == ()
    assert ModelSpec(kind="logistic").hidden == ()


def test_logistic_and_mlp_models_have_the_documented_state_names_and_shapes() -> None:
    logistic = initial_arrays(ModelSpec(kind="logistic", seed=1), 5)
    deep = initial_arrays(ModelSpec(hidden=(16, 8), seed=1), 5)

    assert {k: v.shape for k, v in logistic.items()} == {"out.weight": (1, 5), "out.bias": (1,)}
    assert {k: v.shape for k, v in deep.items()} == {
        "hidden.0.weight": (16, 5), "hidden.0.bias": (16,),
        "hidden.1.weight": (8, 16), "hidden.1.bias": (8,),
        "out.weight": (1, 8), "out.bias": (1,),
    }
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32))
    for spec in (ModelSpec(kind="logistic"), ModelSpec(hidden=(16, 8))):
        assert build_model(spec, 5)(X).shape == (7,)  # one logit per row


def test_a_logistic_model_computes_a_plain_linear_logit() -> None:
    spec = ModelSpec(kind="logistic", seed=3)
    model = build_model(spec, 4)
    arrays = initial_arrays(spec, 4)
    set_arrays(model, arrays)
    X = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)

    with torch.no_grad():
        logits = model(torch.from_numpy(X)).numpy()

    expected = X @ arrays["out.weight"][0] + arrays["out.bias"][0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_a_logistic_model_learns_the_credit_task() -> None:
    spec = ModelSpec(kind="logistic", seed=7)
    X, y = load_partition(0, 3, seed=7, alpha=NEAR_IID)
    X_test, y_test = load_test(3, seed=7, alpha=NEAR_IID)
    model = _model(spec=spec)

    train(model, X, y, epochs=5, lr=0.05, batch_size=64, seed=7)

    assert evaluate(model, X_test, y_test)["auc"] > 0.75


def test_initial_arrays_depend_on_the_architecture_and_repeat_for_the_same_spec() -> None:
    one = initial_arrays(ModelSpec(hidden=(32,), seed=1), N_FEATURES)
    two = initial_arrays(ModelSpec(hidden=(32, 32), seed=1), N_FEATURES)

    assert set(one) != set(two)
    _assert_same_arrays(one, initial_arrays(ModelSpec(hidden=(32,), seed=1), N_FEATURES))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "logistic", "hidden": [8]}, "no hidden layers"),
        ({"kind": "mlp", "hidden": []}, "at least one hidden layer"),
        ({"hidden": [0]}, r"sizes must be in \[1, 4096\]"),
        ({"hidden": [8] * 5}, "at most 4 items"),
        ({"kind": "cnn"}, "'mlp' or 'logistic'"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"layers": [8]}, "Extra inputs are not permitted"),
    ],
    ids=["logistic-with-hidden", "mlp-without-hidden", "zero-width", "too-deep", "unknown-kind",
         "negative-seed", "unknown-key"],
)
def test_an_impossible_model_spec_is_refused_saying_why(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate(table)


def test_a_spec_is_frozen_and_build_model_refuses_zero_features() -> None:
    spec = ModelSpec()

    with pytest.raises(ValidationError):
        spec.seed = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="n_features must be positive"):
        build_model(spec, 0)
