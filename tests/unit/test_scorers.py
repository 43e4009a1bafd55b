"""Leave-one-out and GTG-Shapley scores: free riders earn nothing, useful data earns more,
and the coordinator and the auditor get the same integers whatever the order."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from ledger.aggregate import WeightedUpdate, fedavg
from ledger.records import ScorerSpec
from ledger.scoring import (
    SCORERS,
    ScorerError,
    cosine_scores,
    loo_scores,
    needs_validation,
    score_round,
    scorer_params,
    shapley_scores,
)
from ledger.utility import ValidationSet, utility

FEATURES = 10
PPM = 1_000_000
_TRUE_W = np.random.default_rng(0).normal(size=FEATURES)


def _rows(n: int, seed: int, flip: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable rows; ``flip`` of the labels turned over (noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES))
    y = (x @ _TRUE_W > 0).astype(np.int8)
    flipped = rng.random(n) < flip
    y[flipped] = 1 - y[flipped]
    return x.astype(np.float32), y


BASE = {
    "out.weight": (np.random.default_rng(1).normal(size=(1, FEATURES)) * 0.1).astype(np.float32),
    "out.bias": np.zeros(1, np.float32),
}


def _trained(x: np.ndarray, y: np.ndarray, steps: int = 20, lr: float = 0.5,
             start: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A few full-batch gradient steps of logistic regression from ``start`` (BASE)."""
    start = BASE if start is None else start
    w, b = start["out.weight"][0].astype(np.float64), float(start["out.bias"][0])
    for _ in range(steps):
        g = 1 / (1 + np.exp(-(x @ w + b))) - y
        w, b = w - lr * x.T @ g / len(y), b - lr * float(g.mean())
    return {"out.weight": w[None].astype(np.float32), "out.bias": np.array([b], np.float32)}


@pytest.fixture(scope="module")
def validation() -> ValidationSet:
    return ValidationSet(*_rows(1000, 99))


@pytest.fixture(scope="module")
def round_updates() -> list[WeightedUpdate]:
    """Three honest banks with many, some and few rows, and a free rider."""
    big, mid, small = _rows(2000, 1), _rows(800, 2), _rows(40, 3)
    return [
        WeightedUpdate("bank-a", 2000, _trained(*big)),
        WeightedUpdate("bank-b", 800, _trained(*mid)),
        WeightedUpdate("bank-c", 40, _trained(*small)),
        WeightedUpdate("free-rider", 1000, BASE),
    ]


def _spec(name: str, validation: ValidationSet, **params: object) -> ScorerSpec:
    return ScorerSpec(name=name, params=params, seed=7, validation_digest=validation.digest())


@pytest.mark.parametrize("metric", ["auc", "accuracy", "neg_log_loss"])
@pytest.mark.parametrize("name", ["loo", "shapley"])
def test_a_free_rider_sending_the_base_back_scores_exactly_zero_by_default(
    name: str, metric: str, validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    scores = score_round(_spec(name, validation, metric=metric), BASE, round_updates, None, validation)

    assert set(scores) == {"bank-a", "bank-b", "bank-c", "free-rider"}
    assert all(isinstance(v, int) and -PPM <= v <= PPM for v in scores.values())
    assert scores["free-rider"] == 0
    assert scores["bank-a"] > 0


@pytest.mark.parametrize("metric", ["auc", "neg_log_loss"])
def test_with_fedavg_coalitions_a_free_rider_among_honest_banks_scores_at_most_zero(
    metric: str, validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    spec = _spec("shapley", validation, metric=metric, coalition="fedavg")
    scores = score_round(spec, BASE, round_updates, None, validation)
    assert scores["free-rider"] < 0 < scores["bank-a"]


def test_with_fedavg_coalitions_a_free_rider_is_credited_for_undoing_a_noisy_update_and_with_shares_not(
    validation: ValidationSet,
) -> None:
    # A round later in training: the base already learned something, one bank overfits
    # 40 mislabelled rows, one sends the base back.
    base = _trained(*_rows(300, 50), steps=2)
    updates = [WeightedUpdate("bank-a", 2000, _trained(*_rows(2000, 1), start=base)),
               WeightedUpdate("bank-noisy", 40, _trained(*_rows(40, 3, flip=0.4), start=base)),
               WeightedUpdate("free-rider", 1000, base)]

    fedavg_scores = shapley_scores(base, updates, None, validation, coalition="fedavg")
    share_scores = shapley_scores(base, updates, None, validation, coalition="share")

    assert fedavg_scores["free-rider"] > 1000  # what the default avoids
    assert share_scores["free-rider"] == 0
    assert share_scores["bank-a"] > share_scores["bank-noisy"]


@pytest.mark.parametrize("metric", ["auc", "accuracy", "neg_log_loss"])
@pytest.mark.parametrize("name", ["loo", "shapley"])
@pytest.mark.parametrize("flip", [0.0, 0.4])
def test_an_update_from_many_clean_rows_outscores_one_from_few_or_noisy_rows(
    name: str, metric: str, flip: float, validation: ValidationSet
) -> None:
    updates = [WeightedUpdate("bank-many", 2000, _trained(*_rows(2000, 1))),
               WeightedUpdate("bank-few", 40, _trained(*_rows(40, 3, flip=flip)))]

    scores = score_round(_spec(name, validation, metric=metric), BASE, updates, None, validation)

    assert scores["bank-many"] > scores["bank-few"]
    assert scores["bank-many"] > 0


@pytest.mark.parametrize("name", ["loo", "shapley"])
def test_scores_are_identical_whatever_the_order_of_the_updates(
    name: str, validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    spec = _spec(name, validation)
    expected = score_round(spec, BASE, round_updates, None, validation)
    shuffler = random.Random(3)
    for _ in range(5):
        shuffled = list(round_updates)
        shuffler.shuffle(shuffled)
        assert score_round(spec, BASE, shuffled, None, validation) == expected


def test_leave_one_out_is_the_metric_lost_without_each_update_in_ppm(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    others = [u for u in round_updates if u.participant != "bank-a"]
    full = utility(fedavg(round_updates), validation)

    by_fedavg = loo_scores(BASE, round_updates, None, validation, coalition="fedavg")
    by_share = loo_scores(BASE, round_updates, None, validation)

    assert by_fedavg["bank-a"] == pytest.approx((full - utility(fedavg(others), validation)) * PPM, abs=1)
    total = sum(u.weight for u in round_updates)
    others_share = {k: BASE[k].astype(np.float64) + sum(
        u.weight * (u.arrays[k].astype(np.float64) - BASE[k]) for u in others) / total for k in BASE}
    assert by_share["bank-a"] == pytest.approx((full - utility(others_share, validation)) * PPM, abs=1)
    for coalition in ("fedavg", "share"):
        lone = loo_scores(BASE, round_updates[:1], None, validation, coalition=coalition)
        assert lone["bank-a"] == pytest.approx((utility(round_updates[0].arrays, validation)
                                                - utility(BASE, validation)) * PPM, abs=1)


@pytest.mark.parametrize("coalition", ["fedavg", "share"])
def test_shapley_without_truncation_shares_out_the_whole_round_gain(
    coalition: str, validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    scores = shapley_scores(BASE, round_updates, None, validation, permutations=12, truncation_ppm=0,
                            round_truncation_ppm=0, coalition=coalition, seed=1)

    gain_ppm = (utility(fedavg(round_updates), validation) - utility(BASE, validation)) * PPM
    # Each permutation's marginals telescope to the gain; only ppm rounding is lost.
    assert sum(scores.values()) == pytest.approx(gain_ppm, abs=len(scores) + 1)


def test_shapley_of_a_lone_update_is_its_leave_one_out_score(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    lone = round_updates[1:2]
    assert shapley_scores(BASE, lone, None, validation, round_truncation_ppm=0) == loo_scores(
        BASE, lone, None, validation)


def test_shapley_is_reproducible_from_its_seed_and_guided_sampling_leaves_two_banks_nothing_to_draw(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    once = shapley_scores(BASE, round_updates, None, validation, permutations=5, seed=11, truncation_ppm=0)
    assert shapley_scores(BASE, round_updates, None, validation, permutations=5, seed=11, truncation_ppm=0) == once
    assert shapley_scores(BASE, round_updates, None, validation, permutations=5, seed=12, truncation_ppm=0) != once
    # Two banks: each leads in turn and the other follows, whatever the seed.
    two = round_updates[:2]
    assert (shapley_scores(BASE, two, None, validation, seed=1)
            == shapley_scores(BASE, two, None, validation, seed=2))


def test_a_round_that_changes_less_than_the_round_truncation_scores_zero_for_everyone(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    riders = [WeightedUpdate(p, 10, BASE) for p in ("a", "b", "c")]
    assert shapley_scores(BASE, riders, None, validation) == {"a": 0, "b": 0, "c": 0}
    everything = shapley_scores(BASE, round_updates, None, validation, round_truncation_ppm=PPM)
    assert set(everything.values()) == {0}


def test_within_permutation_truncation_skips_marginals_after_the_prefix_is_close_enough(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    exact = shapley_scores(BASE, round_updates, None, validation, truncation_ppm=0, round_truncation_ppm=0)
    loose = shapley_scores(BASE, round_updates, None, validation, truncation_ppm=50_000, round_truncation_ppm=0)
    assert loose != exact
    # bank-a leads a quarter of the permutations and then closes nearly all the gap alone.
    assert loose["bank-a"] > 0 and loose["free-rider"] <= 0


def test_a_round_with_no_accepted_update_has_no_scores(validation: ValidationSet) -> None:
    for name in ("cosine", "loo", "shapley"):
        assert score_round(_spec(name, validation), BASE, [], None, validation) == {}


def test_cosine_through_score_round_is_todays_cosine_and_ignores_the_validation_set(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    previous = {k: v * 0.5 for k, v in BASE.items()}
    expected = cosine_scores(BASE, round_updates, previous)
    assert score_round(ScorerSpec(), BASE, round_updates, previous) == expected
    assert score_round(ScorerSpec(), BASE, round_updates, previous, validation) == expected
    assert SCORERS["cosine"] is cosine_scores and set(SCORERS) == {"cosine", "loo", "shapley"}


@pytest.mark.parametrize(("name", "params", "message"), [
    ("banzhaf", {}, "unknown scorer 'banzhaf'"),
    ("cosine", {"metric": "auc"}, "scorer 'cosine' has no param 'metric' \\(known: none\\)"),
    ("loo", {"permutations": 4}, "scorer 'loo' has no param 'permutations'"),
    ("loo", {"metric": "f1"}, "param 'metric': 'f1' is not one of auc, accuracy, neg_log_loss"),
    ("loo", {"coalition": "mean"}, "param 'coalition': 'mean' is not one of fedavg, share"),
    ("shapley", {"permutations": 0}, "param 'permutations': 0 is not an integer in \\[1, 100\\]"),
    ("shapley", {"permutations": 101}, "param 'permutations': 101"),
    ("shapley", {"permutations": True}, "param 'permutations': True"),
    ("shapley", {"permutations": "10"}, "param 'permutations': '10'"),
    ("shapley", {"permutations": 10.0}, "param 'permutations': 10.0"),
    ("shapley", {"truncation_ppm": -1}, "param 'truncation_ppm': -1 is not an integer in \\[0, 1000000\\]"),
    ("shapley", {"round_truncation_ppm": 10**6 + 1}, "param 'round_truncation_ppm'"),
])
def test_bad_scorer_specs_are_refused_naming_the_scorer_and_the_param(
    name: str, params: dict, message: str, validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    spec = _spec(name, validation, **params)
    with pytest.raises(ScorerError, match=message):
        scorer_params(spec)
    with pytest.raises(ScorerError, match=message):
        score_round(spec, BASE, round_updates, None, validation)


def test_a_negative_shapley_seed_is_refused(validation: ValidationSet) -> None:
    spec = ScorerSpec(name="shapley", seed=-1, validation_digest=validation.digest())
    with pytest.raises(ScorerError, match="seed must be non-negative"):
        scorer_params(spec)


def test_params_are_completed_with_documented_defaults(validation: ValidationSet) -> None:
    assert scorer_params(_spec("loo", validation)) == {"metric": "auc", "coalition": "share"}
    assert scorer_params(_spec("shapley", validation, permutations=8)) == {
        "metric": "auc", "coalition": "share", "permutations": 8, "truncation_ppm": 100,
        "round_truncation_ppm": 100}
    assert scorer_params(ScorerSpec()) == {}
    assert [needs_validation(n) for n in ("cosine", "loo", "shapley")] == [False, True, True]


@pytest.mark.parametrize("name", ["loo", "shapley"])
def test_a_data_scorer_without_its_validation_set_is_refused(
    name: str, validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    with pytest.raises(ScorerError, match=f"scorer '{name}' needs a validation set"):
        score_round(_spec(name, validation), BASE, round_updates)
    with pytest.raises(ScorerError, match="needs the validation set's digest"):
        score_round(ScorerSpec(name=name), BASE, round_updates, None, validation)
    with pytest.raises(ScorerError, match="needs a validation set"):
        SCORERS[name](BASE, round_updates, None)


def test_a_validation_set_other_than_the_recorded_one_is_refused(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    other = ValidationSet(*_rows(1000, 100))
    with pytest.raises(ScorerError, match="is not the one the spec records"):
        score_round(_spec("loo", validation), BASE, round_updates, None, other)


def test_updates_that_are_not_the_model_or_repeat_a_participant_are_refused(
    validation: ValidationSet, round_updates: list[WeightedUpdate]
) -> None:
    odd = WeightedUpdate("bank-z", 10, {"out.weight": np.zeros((1, 3), np.float32),
                                        "out.bias": np.zeros(1, np.float32)})
    with pytest.raises(ScorerError, match="cannot be computed"):
        score_round(_spec("shapley", validation), BASE, [*round_updates, odd], None, validation)
    with pytest.raises(ScorerError, match="'bank-a' has more than one update"):
        score_round(_spec("loo", validation), BASE, [*round_updates, round_updates[0]], None, validation)


def test_shapley_of_five_banks_on_the_demo_sized_model_takes_well_under_a_second() -> None:
    rng = np.random.default_rng(0)
    shapes = {"hidden.0.weight": (32, 30), "hidden.0.bias": (32,), "hidden.1.weight": (16, 32),
              "hidden.1.bias": (16,), "out.weight": (1, 16), "out.bias": (1,)}
    base = {k: (rng.normal(size=s) * 0.3).astype(np.float32) for k, s in shapes.items()}
    updates = [WeightedUpdate(f"bank-{i}", 100 * (i + 1),
                              {k: (v + rng.normal(size=v.shape) * 0.05).astype(np.float32) for k, v in base.items()})
               for i in range(5)]
    y = (rng.random(1000) < 0.4).astype(np.int8)
    vs = ValidationSet((rng.normal(size=(1000, 30)) + y[:, None]).astype(np.float32), y)
    spec = ScorerSpec(name="shapley", params={"permutations": 10, "truncation_ppm": 0, "round_truncation_ppm": 0},
                      seed=1, validation_digest=vs.digest())

    start = time.perf_counter()
    scores = score_round(spec, base, updates, None, vs)
    elapsed = time.perf_counter() - start

    assert len(scores) == 5 and any(scores.values())
    assert elapsed < 1.0, f"shapley took {elapsed:.2f} s"
