"""Free riders and copies: an update that did not train, or copied, is not paid."""

from __future__ import annotations

import numpy as np

from ledger.aggregate import WeightedUpdate
from ledger.copies import cosine_ppm, free_riders

NO_TRAINING, COPY = 1_000, 999_900


def tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"w": rng.normal(size=(16, 8)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)}


def moved(base: dict[str, np.ndarray], step: dict[str, np.ndarray], factor: float = 1.0) -> dict[str, np.ndarray]:
    return {n: (base[n].astype(np.float64) + factor * step[n]).astype(np.float32) for n in base}


def change(update: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: update[n].astype(np.float64) - base[n] for n in base}


def honest_round(seed: int = 0):
    """G_{r-1}, G_r and three updates trained on different data (independent changes)."""
    rng = np.random.default_rng(seed)
    previous = tensors(rng)
    base = moved(previous, {n: 0.1 * rng.normal(size=t.shape) for n, t in previous.items()})
    ups = [WeightedUpdate(pid, 100, moved(base, {n: 0.1 * rng.normal(size=t.shape) for n, t in base.items()}))
           for pid in ("bank-a", "bank-b", "bank-c")]
    return previous, base, ups


def test_honest_independent_updates_are_not_flagged():
    previous, base, ups = honest_round()
    assert free_riders(base, ups, previous, NO_TRAINING, COPY) == {}


def test_checks_that_are_off_flag_nothing():
    previous, base, ups = honest_round()
    lazy = WeightedUpdate("bank-z", 100, dict(base))
    copy = WeightedUpdate("bank-y", 100, dict(ups[0].arrays))
    assert free_riders(base, [*ups, lazy, copy], previous, None, None) == {}


def test_the_base_model_sent_back_is_no_training():
    previous, base, ups = honest_round()
    lazy = WeightedUpdate("bank-z", 100, {n: t.copy() for n, t in base.items()})
    found = free_riders(base, [*ups, lazy], previous, 0, COPY)
    assert list(found) == ["bank-z"] and found["bank-z"][0] == "no_training"
    assert "change norm 0" in found["bank-z"][1]
    # A tiny nudge is caught by a threshold above it, not by one below it.
    rng = np.random.default_rng(5)
    nudged = WeightedUpdate("bank-z", 100, moved(base, {n: 1e-4 * rng.normal(size=t.shape) for n, t in base.items()}))
    assert free_riders(base, [*ups, nudged], previous, NO_TRAINING, None)["bank-z"][0] == "no_training"
    assert free_riders(base, [*ups, nudged], previous, 1, None) == {}


def test_half_of_last_rounds_global_step_is_a_copied_update():
    previous, base, ups = honest_round()
    replay = WeightedUpdate("bank-z", 100, moved(base, change(base, previous), 0.5))
    found = free_riders(base, [*ups, replay], previous, NO_TRAINING, COPY)
    assert list(found) == ["bank-z"]
    reason, detail = found["bank-z"]
    assert reason == "copied_update" and "previous round's global change" in detail
    # Without G_{r-1} (round 1) there is no step to replay.
    assert free_riders(base, [*ups, replay], None, NO_TRAINING, COPY) == {}


def test_twice_anothers_change_rejects_both_and_names_the_other():
    previous, base, ups = honest_round()
    sybil = WeightedUpdate("bank-z", 100, moved(base, change(ups[1].arrays, base), 2.0))
    found = free_riders(base, [*ups, sybil], previous, NO_TRAINING, COPY)
    assert sorted(found) == ["bank-b", "bank-z"]
    assert {reason for reason, _ in found.values()} == {"copied_update"}
    assert "bank-z (" in found["bank-b"][1] and "bank-b (" in found["bank-z"][1]
    assert "1.000000" in found["bank-z"][1]


def test_a_copy_group_of_three_rejects_all_three():
    previous, base, ups = honest_round()
    copies = [WeightedUpdate(pid, 100, moved(base, change(ups[0].arrays, base), k))
              for pid, k in (("bank-y", 3.0), ("bank-z", 0.25))]
    found = free_riders(base, [*ups, *copies], previous, NO_TRAINING, COPY)
    assert sorted(found) == ["bank-a", "bank-y", "bank-z"]
    assert "bank-y (" in found["bank-a"][1] and "bank-z (" in found["bank-a"][1]


def test_a_no_training_update_is_not_also_a_copy():
    previous, base, ups = honest_round()
    lazy = [WeightedUpdate(pid, 100, dict(base)) for pid in ("bank-y", "bank-z")]
    found = free_riders(base, [*ups, *lazy], previous, 0, COPY)
    assert found == {pid: found[pid] for pid in ("bank-y", "bank-z")}
    assert {reason for reason, _ in found.values()} == {"no_training"}


def test_the_verdict_does_not_depend_on_the_order_of_updates():
    previous, base, ups = honest_round(3)
    ups += [WeightedUpdate("bank-z", 100, moved(base, change(ups[2].arrays, base), 2.0)),
            WeightedUpdate("bank-y", 100, dict(base)),
            WeightedUpdate("bank-x", 100, moved(base, change(base, previous), 0.5))]
    expected = free_riders(base, ups, previous, NO_TRAINING, COPY)
    assert sorted(expected) == ["bank-c", "bank-x", "bank-y", "bank-z"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [ups[i] for i in rng.permutation(len(ups))]
        assert free_riders(base, shuffled, previous, NO_TRAINING, COPY) == expected


def test_cosine_is_an_integer_in_millionths_and_undefined_for_no_change():
    assert cosine_ppm(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == 707_107
    assert cosine_ppm(np.array([1.0, 0.0]), np.array([-2.0, 0.0])) == -1_000_000
    assert cosine_ppm(np.zeros(2), np.array([1.0, 1.0])) is None
