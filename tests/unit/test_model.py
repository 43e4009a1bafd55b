"""Unit tests for fl.model: learning, determinism, and strict array exchange."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from fl.data import credit_schema, load_partition, load_test
from fl.model import CreditMLP, evaluate, get_arrays, initial_arrays, set_arrays, train

N_FEATURES = credit_schema().n_features
NEAR_IID = 1000.0  # Dirichlet alpha that gives each partition roughly the global label mix


def _model(seed: int = 0) -> CreditMLP:
    model = CreditMLP(N_FEATURES)
    set_arrays(model, initial_arrays(N_FEATURES, seed))
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
    assert not np.array_equal(runs[0]["hidden.weight"], runs[2]["hidden.weight"])


def test_initial_arrays_are_bit_identical_per_seed_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    first = initial_arrays(N_FEATURES, seed=4)

    assert torch.equal(torch.rand(1), expected_next)
    _assert_same_arrays(first, initial_arrays(N_FEATURES, seed=4))
    assert not np.array_equal(first["out.weight"], initial_arrays(N_FEATURES, seed=5)["out.weight"])
    assert {k: v.shape for k, v in first.items()} == {
        "hidden.weight": (32, N_FEATURES),
        "hidden.bias": (32,),
        "out.weight": (1, 32),
        "out.bias": (1,),
    }


def test_get_arrays_returns_float32_contiguous_copies() -> None:
    model = _model()

    arrays = get_arrays(model)
    arrays["out.bias"][:] = 99.0

    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays.values())
    assert model.out.bias.item() != 99.0


def test_set_arrays_round_trips_and_does_not_alias_the_caller_arrays() -> None:
    source = initial_arrays(N_FEATURES, seed=9)
    model = _model(seed=1)

    set_arrays(model, source)
    source["out.bias"][:] = 99.0

    assert model.out.bias.item() != 99.0
    source["out.bias"][:] = initial_arrays(N_FEATURES, seed=9)["out.bias"]
    _assert_same_arrays(get_arrays(model), source)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda a: a.pop("out.bias"), "missing key 'out.bias'"),
        (lambda a: a.update(extra=np.zeros(1, np.float32)), "unexpected key 'extra'"),
        (
            lambda a: a.update({"hidden.bias": np.zeros(31, np.float32)}),
            r"key 'hidden.bias': shape \(31,\)",
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
    arrays = initial_arrays(N_FEATURES, seed=3)
    arrays["hidden.weight"][:] = 7.0  # a visible change if a partial load happened
    corrupt(arrays)

    with pytest.raises(ValueError, match=message):
        set_arrays(model, arrays)

    _assert_same_arrays(get_arrays(model), before)


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
