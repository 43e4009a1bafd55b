"""FedProx and Opacus DP-SGD in ``fl.model.train``: what each changes, and what it must not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fl.demo_data import credit_schema, load_partition
from fl.model import DPSettings, ModelSpec, build_model, get_arrays, initial_arrays, set_arrays, train

N_FEATURES = credit_schema().n_features
SPEC = ModelSpec(seed=5, hidden=(32, 16))
DP = DPSettings(epsilon=2.0, delta=1e-5, max_grad_norm=1.0)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return load_partition(0, 3, seed=7)


@pytest.fixture(scope="module")
def base() -> dict[str, np.ndarray]:
    return initial_arrays(SPEC, N_FEATURES)


def _model(base: dict[str, np.ndarray]) -> nn.Module:
    model = build_model(SPEC, N_FEATURES)
    set_arrays(model, base)
    return model


def _trained(base, data, **kw) -> tuple[dict[str, np.ndarray], dict]:
    model = _model(base)
    result = train(model, *data, epochs=2, lr=0.05, batch_size=64, seed=11, **kw)
    return get_arrays(model), result


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in a))


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _reference_fedavg(base, data) -> dict[str, np.ndarray]:
    """The local training as it was before FedProx and DP existed: plain seeded SGD."""
    model = _model(base)
    xt, yt = torch.tensor(data[0], dtype=torch.float32), torch.tensor(data[1], dtype=torch.float32)
    gen = torch.Generator().manual_seed(11)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    model.train()
    for _ in range(2):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            optimizer.zero_grad()
            (loss_fn(model(xt[idx]), yt[idx]) / len(idx)).backward()
            optimizer.step()
    return get_arrays(model)


def test_mu_zero_trains_bit_identically_to_plain_fedavg_with_or_without_a_global_model(base, data) -> None:
    plain, result = _trained(base, data)
    with_anchor, _ = _trained(base, data, mu=0.0, global_arrays=base)

    assert _same(plain, _reference_fedavg(base, data))
    assert _same(plain, with_anchor)
    assert result["training"].algorithm == "fedavg" and result["training"].mu_ppm == 0
    assert result["training"].dp is None


def test_a_huge_mu_keeps_the_trained_model_much_closer_to_the_global_one(base, data) -> None:
    free, _ = _trained(base, data)
    held, result = _trained(base, data, mu=10.0, global_arrays=base)
    light, _ = _trained(base, data, mu=0.01, global_arrays=base)

    assert _distance(held, base) < 0.2 * _distance(free, base)
    assert not _same(light, free)  # even a small μ acts
    assert result["training"].algorithm == "fedprox" and result["training"].mu_ppm == 10_000_000


def test_fedprox_needs_the_global_model_and_a_non_negative_mu(base, data) -> None:
    with pytest.raises(ValueError, match="needs global_arrays"):
        _trained(base, data, mu=0.1)
    with pytest.raises(ValueError, match="non-negative"):
        _trained(base, data, mu=-0.1, global_arrays=base)
    partial = {k: v for k, v in base.items() if k != "out.bias"}
    with pytest.raises(ValueError, match="'out.bias'"):
        _trained(base, data, mu=0.1, global_arrays=partial)


def test_dp_training_is_reproducible_from_the_seed_and_claims_what_opacus_used(base, data) -> None:
    first, result = _trained(base, data, dp=DP)
    again, _ = _trained(base, data, dp=DP)
    plain, _ = _trained(base, data)

    claim = result["training"].dp
    batches = math.ceil(len(data[1]) / 64)
    assert _same(first, again) and not _same(first, plain)
    assert claim.sample_rate_ppm == round(1e6 / batches)
    assert claim.steps == 2 * batches
    assert claim.max_grad_norm_ppm == 1_000_000 and claim.delta_ppb == 10_000
    assert claim.noise_multiplier_ppm > 0
    # Opacus picks the noise for the target; what it reports is at most the target, and near it.
    assert 0.9 * 2_000_000 <= claim.epsilon_ppm <= 2_000_000 + 1
    assert all(np.isfinite(a).all() for a in first.values())


def test_after_dp_training_the_model_keeps_its_names_and_carries_no_opacus_hooks(base, data) -> None:
    model = _model(base)
    train(model, *data, epochs=1, lr=0.05, batch_size=64, seed=3, dp=DP)

    assert list(get_arrays(model)) == list(base)
    assert all(not layer._forward_hooks and not layer._backward_hooks for layer in model.modules())
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())
    # The same model object trains normally afterwards (no per-example machinery left).
    again = _model(get_arrays(model))
    train(model, *data, epochs=1, lr=0.05, batch_size=64, seed=4)
    train(again, *data, epochs=1, lr=0.05, batch_size=64, seed=4)
    assert _same(get_arrays(model), get_arrays(again))


def test_dp_with_fedprox_and_tiny_batches_stays_finite(base, data) -> None:
    X, y = data[0][:20], data[1][:20]
    model = _model(base)
    # Poisson sampling at 1/20 gives empty batches now and then; each still counts as a step.
    result = train(model, X, y, epochs=2, lr=0.05, batch_size=1, seed=2, dp=DP, mu=0.5, global_arrays=base)

    assert result["training"].dp.steps == 40
    assert all(np.isfinite(a).all() for a in get_arrays(model).values())


@pytest.mark.parametrize(("kw", "message"), [
    ({"epsilon": 0.0, "delta": 1e-5, "max_grad_norm": 1.0}, "epsilon"),
    ({"epsilon": 1.0, "delta": 1.0, "max_grad_norm": 1.0}, "delta"),
    ({"epsilon": 1.0, "delta": 1e-12, "max_grad_norm": 1.0}, "delta"),
    ({"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": float("inf")}, "max_grad_norm"),
])
def test_dp_settings_out_of_range_are_refused_naming_the_setting(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        DPSettings(**kw)
