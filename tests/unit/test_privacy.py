"""The privacy accountant the coordinator and the auditor rerun on signed DP claims."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from opacus.accountants import RDPAccountant

from fl.demo_data import credit_schema, load_partition
from fl.model import DPSettings, ModelSpec, build_model, initial_arrays, set_arrays, train
from ledger.formats import PrivacyClaim
from ledger.privacy import check_claim, epsilon, epsilon_ppm


@pytest.fixture(scope="module")
def trained_claim() -> PrivacyClaim:
    spec = ModelSpec(seed=2, hidden=(32, 16))
    n_features = credit_schema().n_features
    model = build_model(spec, n_features)
    set_arrays(model, initial_arrays(spec, n_features))
    X, y = load_partition(1, 3, seed=7)
    result = train(model, X, y, epochs=2, lr=0.05, batch_size=64, seed=9,
                   dp=DPSettings(epsilon=1.5, delta=1e-5, max_grad_norm=0.8))
    return result["training"].dp


def test_a_claim_produced_by_dp_training_passes_the_check(trained_claim: PrivacyClaim) -> None:
    assert check_claim(trained_claim) is None
    assert abs(epsilon_ppm(trained_claim) - trained_claim.epsilon_ppm) <= 1_000


def test_an_understated_epsilon_fails_the_check_and_says_what_was_recomputed(trained_claim: PrivacyClaim) -> None:
    halved = dataclasses.replace(trained_claim, epsilon_ppm=trained_claim.epsilon_ppm // 2)

    detail = check_claim(halved)

    assert detail is not None and "does not follow" in detail and str(epsilon_ppm(trained_claim)) in detail


def test_a_negative_epsilon_fails_the_check(trained_claim: PrivacyClaim) -> None:
    assert "negative" in check_claim(dataclasses.replace(trained_claim, epsilon_ppm=-1))


def test_no_noise_with_a_finite_epsilon_fails_the_check(trained_claim: PrivacyClaim) -> None:
    assert "unbounded" in check_claim(dataclasses.replace(trained_claim, noise_multiplier_ppm=0))


def test_rounding_slack_passes_but_a_two_percent_overstatement_does_not(trained_claim: PrivacyClaim) -> None:
    recomputed = epsilon_ppm(trained_claim)

    assert check_claim(dataclasses.replace(trained_claim, epsilon_ppm=recomputed + 900)) is None
    assert check_claim(dataclasses.replace(trained_claim, epsilon_ppm=int(recomputed * 1.02))) is not None


def test_a_noise_too_small_to_bound_any_claimable_epsilon_fails_the_check() -> None:
    claim = PrivacyClaim(noise_multiplier_ppm=1, max_grad_norm_ppm=1_000_000, sample_rate_ppm=1_000_000,
                         steps=1000, delta_ppb=10_000, epsilon_ppm=5_000_000)
    assert "more than" in check_claim(claim)


@pytest.mark.parametrize(("noise", "rate", "steps", "delta"), [
    (1.1, 0.01, 1000, 1e-5),
    (0.7, 0.1, 26, 1e-6),
    (2.5, 0.25, 8, 1e-3),
    (4.0, 1.0, 3, 1e-5),
])
def test_epsilon_agrees_exactly_with_opacus_rdp_accountant(noise, rate, steps, delta) -> None:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=rate)

    assert epsilon(noise, rate, steps, delta) == accountant.get_epsilon(delta)


def test_the_accountant_module_does_not_import_torch() -> None:
    probe = ("import sys, ledger.privacy as p; p.epsilon(1.0, 0.1, 10, 1e-5); "
             "print([m for m in ('torch', 'opacus') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_parameters_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        epsilon(1.0, 0.0, 10, 1e-5)
