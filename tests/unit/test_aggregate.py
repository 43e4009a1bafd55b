"""Deterministic aggregation and scoring: the auditor recomputes them bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from ledger.aggregate import AggregationError, WeightedUpdate, fedavg
from ledger.formats import update_digest
from ledger.scoring import cosine_scores, to_ppm


def updates(seed: int = 0) -> list[WeightedUpdate]:
    rng = np.random.default_rng(seed)
    return [
        WeightedUpdate(pid, n, {"w": rng.normal(size=(50, 20)).astype(np.float32),
                                "b": rng.normal(size=20).astype(np.float32)})
        for pid, n in (("bank-c", 300), ("bank-a", 1000), ("bank-b", 7))
    ]


def test_fedavg_is_bit_identical_whatever_the_input_order():
    ups = updates()
    digests = {update_digest(fedavg(list(order))) for order in (ups, ups[::-1], [ups[1], ups[2], ups[0]])}
    assert len(digests) == 1


def test_fedavg_is_the_example_weighted_mean_in_float64_cast_back():
    ups = updates()
    result = fedavg(ups)
    total = sum(u.weight for u in ups)
    expected = sum(u.weight * u.arrays["w"].astype(np.float64) for u in sorted(ups, key=lambda u: u.participant)) / total
    assert result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], expected.astype(np.float32))


def test_fedavg_refuses_mismatched_or_empty_input():
    ups = updates()
    with pytest.raises(AggregationError):
        fedavg([])
    bad = WeightedUpdate("bank-z", 1, {"w": np.zeros((2, 2), np.float32), "b": np.zeros(20, np.float32)})
    with pytest.raises(AggregationError):
        fedavg(ups + [bad])
    with pytest.raises(AggregationError):
        fedavg([WeightedUpdate("x", 0, ups[0].arrays)])


def test_cosine_scores_reward_agreement_with_the_aggregate():
    base = {"w": np.zeros(4, np.float32)}
    ups = [WeightedUpdate("a", 1, {"w": np.array([1, 0, 0, 0], np.float32)}),
           WeightedUpdate("b", 1, {"w": np.array([1, 0.1, 0, 0], np.float32)}),
           WeightedUpdate("c", 1, {"w": np.array([-1, 0, 0, 0], np.float32)}),
           WeightedUpdate("d", 1, {"w": np.array([1, 0, 0.1, 0], np.float32)})]
    scores = cosine_scores(base, ups)  # each against the others' mean change
    assert scores["b"] > 0 and scores["a"] > 0 and scores["c"] < 0
    assert all(isinstance(v, int) and -1_000_000 <= v <= 1_000_000 for v in scores.values())
    assert cosine_scores(base, [WeightedUpdate("a", 1, base)]) == {"a": 0}


def test_ppm_rounding_is_clamped_and_finite():
    assert to_ppm(1.0000001) == 1_000_000
    assert to_ppm(-0.5) == -500_000
    assert to_ppm(float("nan")) == 0
