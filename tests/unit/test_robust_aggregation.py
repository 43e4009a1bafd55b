"""Robust aggregation rules and multi-Krum: deterministic, order-free, and robust."""

from __future__ import annotations

import numpy as np
import pytest

from ledger.aggregate import (
    AGGREGATORS,
    AggregationError,
    WeightedUpdate,
    check_params,
    fedavg,
    median,
    trimmed_mean,
)
from ledger.formats import update_digest
from ledger.robust import krum_discards, krum_scores


def one(pid: str, values: list[float], weight: int = 1) -> WeightedUpdate:
    return WeightedUpdate(pid, weight, {"w": np.array(values, np.float32)})


def honest_round(seed: int = 0, count: int = 5) -> tuple[dict[str, np.ndarray], list[WeightedUpdate]]:
    rng = np.random.default_rng(seed)
    base = {"w": rng.normal(size=(8, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    direction = {n: rng.normal(size=t.shape) for n, t in base.items()}
    ups = []
    for i in range(count):
        arrays = {n: (t + 0.1 * direction[n] + 0.02 * rng.normal(size=t.shape)).astype(np.float32)
                  for n, t in base.items()}
        ups.append(WeightedUpdate(f"bank-{chr(ord('a') + i)}", 100 + 10 * i, arrays))
    return base, ups


def attacked(update: WeightedUpdate, base: dict[str, np.ndarray], factor: float, pid: str) -> WeightedUpdate:
    """``update``'s change multiplied by ``factor`` (×10: boosted; −1: sign-flipped)."""
    arrays = {n: (base[n].astype(np.float64) + factor * (update.arrays[n].astype(np.float64)
                                                         - base[n].astype(np.float64))).astype(np.float32)
              for n in base}
    return WeightedUpdate(pid, update.weight, arrays)


def test_median_is_the_middle_value_or_the_mean_of_the_two_middle_values():
    odd = median([one("a", [1, 5]), one("b", [3, -2]), one("c", [2, 100])])
    np.testing.assert_array_equal(odd["w"], np.array([2, 5], np.float32))
    even = median([one("a", [1, 5]), one("b", [4, -2]), one("c", [2, 100]), one("d", [3, 0])])
    np.testing.assert_array_equal(even["w"], np.array([2.5, 2.5], np.float32))


def test_median_ignores_weights():
    result = median([one("a", [1], 1000), one("b", [2], 1), one("c", [3], 1)])
    assert result["w"][0] == 2


def test_trimmed_mean_drops_k_from_each_end_per_coordinate():
    ups = [one("a", [1, 10]), one("b", [2, 20]), one("c", [3, 30]), one("d", [4, 40]), one("e", [100, -50])]
    # n=5, trim 20%: k=1; coordinate 0 keeps 2,3,4; coordinate 1 keeps 10,20,30.
    result = trimmed_mean(ups, 200_000)
    np.testing.assert_array_equal(result["w"], np.array([3, 20], np.float32))
    # trim 0 is the unweighted mean.
    np.testing.assert_array_equal(trimmed_mean(ups, 0)["w"], np.array([22, 10], np.float32))


def test_trimmed_mean_refuses_to_trim_everything():
    with pytest.raises(AggregationError, match="nothing is left"):
        trimmed_mean([one("a", [1]), one("b", [2])], 500_000)


def test_trimmed_mean_drops_a_boosted_updates_influence():
    base, ups = honest_round()
    boosted = attacked(ups[0], base, 10.0, "bank-z")
    honest_mean = trimmed_mean(ups, 0)
    robust = trimmed_mean([*ups, boosted], 200_000)
    plain = trimmed_mean([*ups, boosted], 0)
    for name in base:
        robust_err = np.abs(robust[name].astype(np.float64) - honest_mean[name]).max()
        plain_err = np.abs(plain[name].astype(np.float64) - honest_mean[name]).max()
        change = np.abs(honest_mean[name].astype(np.float64) - base[name]).max()
        assert robust_err < 0.3 * change < plain_err


def test_median_resists_a_sign_flipped_update():
    base, ups = honest_round()
    flipped = attacked(ups[0], base, -1.0, "bank-z")
    result, clean = median([*ups, flipped]), median(ups)
    for name in base:
        step = clean[name].astype(np.float64) - base[name]
        got = result[name].astype(np.float64) - base[name]
        # Still points the honest way: the flipped update moves each coordinate by one rank at most.
        assert float(np.sum(step * got)) > 0.8 * float(np.sum(step * step))


def test_rules_are_bit_identical_across_calls_and_input_orders():
    _, ups = honest_round(seed=3)
    rng = np.random.default_rng(7)
    orders = [ups, ups[::-1]] + [[ups[i] for i in rng.permutation(len(ups))] for _ in range(3)]
    for name, params in (("fedavg", {}), ("median", {}), ("trimmed-mean", {"trim_ppm": 200_000}),
                         ("multi-krum", {"byzantine": 1})):
        digests = {update_digest(AGGREGATORS[name](list(order), params)) for order in orders}
        digests.add(update_digest(AGGREGATORS[name](ups, params)))
        assert len(digests) == 1, name


def test_rules_preserve_each_tensors_dtype():
    ups = [WeightedUpdate(p, 1, {"h": np.full(3, v, np.float16), "d": np.full(2, v, np.float64)})
           for p, v in (("a", 1.0), ("b", 2.0), ("c", 4.0))]
    for name in AGGREGATORS:
        result = AGGREGATORS[name](ups, {})
        assert result["h"].dtype == np.float16 and result["d"].dtype == np.float64, name


def test_fedavg_rule_equals_fedavg_and_multi_krum_averages_what_it_is_given():
    _, ups = honest_round()
    expected = update_digest(fedavg(ups))
    assert update_digest(AGGREGATORS["fedavg"](ups, {})) == expected
    assert update_digest(AGGREGATORS["fedavg"](ups)) == expected  # the one-argument call still works
    assert update_digest(AGGREGATORS["multi-krum"](ups, {"byzantine": 1, "keep": 3})) == expected


def test_check_params_fills_defaults_and_refuses_bad_policies():
    assert check_params("trimmed-mean", {}) == {"trim_ppm": 200_000}
    assert check_params("multi-krum", None) == {"byzantine": 1}
    assert check_params("multi-krum", {"byzantine": 2, "keep": 3}) == {"byzantine": 2, "keep": 3}
    assert check_params("median", {}) == {}
    with pytest.raises(AggregationError, match="unknown aggregation 'mean'"):
        check_params("mean", {})
    with pytest.raises(AggregationError, match="median has no parameter 'trim_ppm'"):
        check_params("median", {"trim_ppm": 1})
    with pytest.raises(AggregationError, match="trimmed-mean has no parameter 'trim'"):
        check_params("trimmed-mean", {"trim": 1})
    with pytest.raises(AggregationError, match="trim_ppm of trimmed-mean must be an integer, not float"):
        check_params("trimmed-mean", {"trim_ppm": 0.2})
    with pytest.raises(AggregationError, match="must be an integer, not bool"):
        check_params("multi-krum", {"byzantine": True})
    with pytest.raises(AggregationError, match="trim_ppm of trimmed-mean must be from 0 to 499999, not 500000"):
        check_params("trimmed-mean", {"trim_ppm": 500_000})
    with pytest.raises(AggregationError, match="keep of multi-krum must be from 1"):
        check_params("multi-krum", {"keep": 0})
    with pytest.raises(AggregationError):
        AGGREGATORS["trimmed-mean"]([one("a", [1])], {"trim_ppm": -1})


def test_robust_rules_refuse_mismatched_tensors():
    good = [one("a", [1, 2]), one("b", [1, 2])]
    for rule in ("median", "trimmed-mean"):
        with pytest.raises(AggregationError, match="shape"):
            AGGREGATORS[rule]([*good, one("c", [1, 2, 3])], {})
        with pytest.raises(AggregationError, match="other tensor names"):
            AGGREGATORS[rule]([*good, WeightedUpdate("c", 1, {"v": np.zeros(2, np.float32)})], {})
        with pytest.raises(AggregationError, match="no updates"):
            AGGREGATORS[rule]([], {})


def test_krum_scores_match_a_hand_computed_example():
    base = {"w": np.zeros(1, np.float32)}
    ups = [one("a", [0]), one("b", [1]), one("c", [3]), one("d", [10])]
    # f=1, n=4: each update sums its n-f-2 = 1 nearest squared distance.
    assert krum_scores(base, ups, 1) == {"a": 1.0, "b": 1.0, "c": 4.0, "d": 49.0}
    # f=0: the 2 nearest.
    assert krum_scores(base, ups, 0) == {"a": 10.0, "b": 5.0, "c": 13.0, "d": 49.0 + 81.0}
    discards = krum_discards(base, ups, {"byzantine": 1})  # keep n - f = 3
    assert list(discards) == ["d"]
    assert discards["d"] == "multi-Krum score 4.90e+01 is not among the 3 lowest (f=1)"


def test_multi_krum_discards_a_boosted_and_a_sign_flipped_update_among_five():
    base, honest = honest_round(count=3)
    boosted = attacked(honest[0], base, 10.0, "bank-x")
    flipped = attacked(honest[1], base, -1.0, "bank-y")
    ups = [*honest, boosted, flipped]
    discards = krum_discards(base, ups, {"byzantine": 2, "keep": 3})
    assert sorted(discards) == ["bank-x", "bank-y"]
    rng = np.random.default_rng(1)
    for _ in range(4):
        shuffled = [ups[i] for i in rng.permutation(len(ups))]
        assert krum_discards(base, shuffled, {"byzantine": 2, "keep": 3}) == discards


def test_multi_krum_ties_are_broken_by_participant_id():
    base = {"w": np.zeros(1, np.float32)}
    ups = [one("b", [1]), one("a", [1]), one("c", [1]), one("d", [1])]
    assert list(krum_discards(base, ups, {"byzantine": 0, "keep": 2})) == ["c", "d"]


def test_multi_krum_discards_nothing_when_too_few_updates_to_compare():
    base = {"w": np.zeros(1, np.float32)}
    ups = [one("a", [0]), one("b", [1]), one("c", [100])]
    assert krum_discards(base, ups, {"byzantine": 1}) == {}  # n - f - 2 = 0
    assert list(krum_discards(base, ups, {"byzantine": 0, "keep": 2})) == ["c"]  # n - f - 2 = 1


def test_multi_krum_refuses_bad_params_and_updates():
    base = {"w": np.zeros(1, np.float32)}
    with pytest.raises(AggregationError, match="no parameter 'f'"):
        krum_discards(base, [one("a", [0])], {"f": 1})
    with pytest.raises(AggregationError, match="lacks tensor 'w'"):
        krum_discards(base, [WeightedUpdate("a", 1, {"v": np.zeros(1, np.float32)})], {})
