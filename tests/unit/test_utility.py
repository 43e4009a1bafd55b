"""The numpy utility of a model on the validation set: the auditor recomputes it without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fl.model import ModelSpec, build_model, evaluate, initial_arrays, set_arrays
from ledger.formats import update_digest
from ledger.utility import METRICS, UtilityError, ValidationSet, auc, logits, utility


def _validation(n: int = 400, f: int = 30, seed: int = 0) -> ValidationSet:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int8)
    x = (rng.normal(size=(n, f)) + 0.8 * y[:, None] * rng.normal(size=f)).astype(np.float32)
    return ValidationSet(x=x, y=y)


@pytest.mark.parametrize("spec", [ModelSpec(hidden=(32, 16), seed=3), ModelSpec(kind="logistic", seed=4),
                                  ModelSpec(hidden=(7, 5, 3), seed=5)])
def test_numpy_logits_agree_with_the_torch_model(spec: ModelSpec) -> None:
    vs = _validation()
    model = build_model(spec, 30)
    arrays = initial_arrays(spec, 30)
    # Larger weights than the initialisation so that every ReLU matters.
    arrays = {k: (v * 3).astype(np.float32) for k, v in arrays.items()}
    set_arrays(model, arrays)

    with torch.no_grad():
        expected = model(torch.tensor(vs.x)).numpy().astype(np.float64)

    got = logits(arrays, vs.x)
    assert got.dtype == np.float64 and got.shape == (len(vs.y),)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_hidden_layers_are_taken_by_integer_index_not_by_name_order() -> None:
    # Eleven layers: "hidden.10" sorts before "hidden.2" as a string.
    torch.manual_seed(0)
    widths = (6, 9, 8, 7, 6, 5, 4, 5, 6, 7, 8, 3)
    layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
    out = torch.nn.Linear(widths[-1], 1)
    arrays = {f"hidden.{i}.{p}": getattr(layer, p).detach().numpy().copy()
              for i, layer in enumerate(layers) for p in ("weight", "bias")}
    arrays |= {"out.weight": out.weight.detach().numpy().copy(), "out.bias": out.bias.detach().numpy().copy()}
    x = np.random.default_rng(2).normal(size=(50, 6)).astype(np.float32)
    h = torch.tensor(x)
    with torch.no_grad():
        for layer in layers:
            h = torch.relu(layer(h))
        expected = out(h).squeeze(-1).numpy()

    np.testing.assert_allclose(logits(arrays, x), expected, rtol=1e-5, atol=1e-6)


def test_metrics_agree_with_fl_model_evaluate_and_sklearn() -> None:
    vs = _validation(seed=9)
    spec = ModelSpec(hidden=(32, 16), seed=9)
    model = build_model(spec, 30)
    arrays = initial_arrays(spec, 30)
    set_arrays(model, arrays)

    torch_metrics = evaluate(model, vs.x, vs.y)

    assert utility(arrays, vs, "auc") == pytest.approx(torch_metrics["auc"], abs=1e-6)
    assert utility(arrays, vs, "accuracy") == pytest.approx(torch_metrics["accuracy"], abs=1e-9)
    assert utility(arrays, vs, "neg_log_loss") == pytest.approx(-torch_metrics["loss"], abs=1e-5)


def test_auc_averages_ties_exactly_like_sklearn() -> None:
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, 2, size=n)
        if len(np.unique(y)) < 2:
            y[0], y[-1] = 0, 1
        z = rng.integers(-3, 4, size=n).astype(np.float64)  # many ties
        assert auc(z, y) == pytest.approx(roc_auc_score(y, z), abs=1e-12), trial
        assert auc(-z, y) == pytest.approx(1 - roc_auc_score(y, z), abs=1e-12), trial


def test_auc_of_a_single_class_set_is_one_half_and_nan_logits_rank_as_zero() -> None:
    assert auc(np.array([0.1, 2.0, -1.0]), np.array([1, 1, 1])) == 0.5
    assert auc(np.array([0.1, 2.0, -1.0]), np.array([0, 0, 0])) == 0.5
    z = np.array([np.nan, 1.0, -1.0, 0.0])
    assert auc(z, np.array([0, 1, 0, 1])) == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.0, 1.0, -1.0, 0.0]))


def test_every_metric_is_finite_for_a_wild_model() -> None:
    vs = _validation(n=50, f=3)
    arrays = {"out.weight": np.full((1, 3), 3e38, np.float32), "out.bias": np.array([-3e38], np.float32)}
    for name in METRICS:
        assert np.isfinite(utility(arrays, vs, name)), name


def test_validation_set_round_trips_through_its_arrays_with_a_stable_digest() -> None:
    vs = _validation()
    again = ValidationSet.from_arrays(vs.to_arrays())
    assert again.digest() == vs.digest() == update_digest({"x": vs.x, "y": vs.y})
    converted = ValidationSet.from_arrays({"x": vs.x.astype(np.float64), "y": vs.y.astype(bool)})
    assert converted.x.dtype == np.float32 and converted.y.dtype == np.int8
    assert converted.digest() == vs.digest()


@pytest.mark.parametrize(("arrays", "message"), [
    ({"y": np.zeros(3, np.int8)}, "no key 'x'"),
    ({"x": np.zeros((3, 2), np.float32)}, "no key 'y'"),
    ({"x": np.zeros((3, 2), np.float32), "y": np.zeros(3, np.int8), "w": np.zeros(1)}, "unexpected key 'w'"),
    ({"x": np.zeros(3, np.float32), "y": np.zeros(3, np.int8)}, "'x' must be 2-D"),
    ({"x": np.zeros((3, 2), np.float32), "y": np.zeros((3, 1), np.int8)}, "'y' must be 1-D"),
    ({"x": np.zeros((3, 2), np.float32), "y": np.zeros(4, np.int8)}, "3 rows, key 'y' has 4"),
    ({"x": np.zeros((3, 2), np.float32), "y": np.array([0, 2, 1], np.int8)}, "row 1: label 2 is not 0 or 1"),
    ({"x": np.zeros((3, 2), np.float32), "y": np.array([0, 0.5, 1])}, "row 1: label"),
    ({"x": np.array([[0, 1], [0, np.inf], [1, 1]], np.float32), "y": np.zeros(3, np.int8)},
     "row 1 holds a non-finite value"),
    ({"x": np.array([[0, 1], [0, 1e300]]), "y": np.zeros(2, np.int8)}, "row 1 does not fit in float32"),
    ({"x": np.zeros((0, 2), np.float32), "y": np.zeros(0, np.int8)}, "empty"),
    ({"x": np.array([["a"]]), "y": np.zeros(1, np.int8)}, "must hold real numbers"),
])
def test_a_bad_validation_set_is_refused_naming_key_and_row(arrays: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ValidationSet.from_arrays(arrays)


def test_constructing_a_validation_set_directly_checks_dtypes() -> None:
    with pytest.raises(UtilityError, match="'x' must be float32"):
        ValidationSet(x=np.zeros((2, 2)), y=np.zeros(2, np.int8))
    with pytest.raises(UtilityError, match="'y' must be int8"):
        ValidationSet(x=np.zeros((2, 2), np.float32), y=np.zeros(2, np.int64))


@pytest.mark.parametrize(("arrays", "message"), [
    ({"out.weight": np.zeros((1, 30)), "out.bias": np.zeros(1), "extra": np.zeros(1)}, "'extra' is not part"),
    ({"out.weight": np.zeros((1, 30))}, "no tensor out.bias"),
    ({"out.weight": np.zeros((1, 29)), "out.bias": np.zeros(1)}, "takes 29 inputs, gets 30"),
    ({"out.weight": np.zeros((2, 30)), "out.bias": np.zeros(2)}, "2 outputs, expected 1"),
    ({"out.weight": np.zeros((1, 30)), "out.bias": np.zeros(2)}, "are not a"),
    ({"hidden.1.weight": np.zeros((4, 30)), "hidden.1.bias": np.zeros(4), "out.weight": np.zeros((1, 4)),
      "out.bias": np.zeros(1)}, "not numbered 0"),
])
def test_model_tensors_that_are_not_the_federation_model_are_refused_by_name(arrays: dict, message: str) -> None:
    with pytest.raises(UtilityError, match=message):
        utility(arrays, _validation())


def test_unknown_metric_is_refused() -> None:
    arrays = {"out.weight": np.zeros((1, 30), np.float32), "out.bias": np.zeros(1, np.float32)}
    with pytest.raises(UtilityError, match="unknown metric 'f1'"):
        utility(arrays, _validation(), "f1")


def test_the_scorers_and_the_utility_import_no_torch() -> None:
    code = ("import sys, ledger.scoring, ledger.utility; "
            "bad = [m for m in ('torch', 'sklearn', 'flwr') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
