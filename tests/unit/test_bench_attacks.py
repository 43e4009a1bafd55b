"""The attack benchmark on a tiny configuration: its tables have the expected shape, and
the coordinator's rules it simulates still stop a free rider and a copier and pay them nothing.

Prepare: 5 institutions, 2 rounds, 1 seed, two scenarios × two rules, no DP (DP-SGD's
accountant is slow and is covered by the model's tests). Execute: :func:`bench.attacks.measure`
in-process. Assert: one cell per scenario × rule, the free rider rejected as
``no_training`` every round, the rewards' budget paid in full and only to honest institutions.
"""

from __future__ import annotations

import json

import pytest

from bench import attacks

ROUNDS = 2


@pytest.fixture(scope="module")
def result() -> dict:
    settings = attacks.Settings(rounds=ROUNDS, repeats=1, scenarios=(("none", 0), ("free-rider", 1)),
                                rules=("fedavg", "median"), epsilons=(), scorers=("cosine", "loo"))
    return attacks.measure(settings, workers=1)


def test_every_scenario_has_one_cell_per_rule_with_an_ordered_spread(result) -> None:
    assert list(result["robust"]) == ["none", "free-rider×1"]
    for by_rule in result["robust"].values():
        assert list(by_rule) == ["fedavg", "median"]
        for cell in by_rule.values():
            spread = cell["auc"]
            assert 0.0 <= spread["min"] <= spread["median"] <= spread["max"] <= 1.0
            assert len(cell["runs"]) == 1 and len(cell["runs"][0]["rejected"]) == ROUNDS


def test_free_rider_is_rejected_as_no_training_in_every_round_under_every_rule(result) -> None:
    for cell in result["robust"]["free-rider×1"].values():
        assert cell["attackers"] == ["inst-5"]
        assert cell["attacker_rejections"] == {"no_training": ROUNDS}


def test_free_rider_and_copier_earn_nothing_and_the_whole_budget_is_paid(result) -> None:
    for run in result["rewards"]["by_seed"]:
        for scorer, tokens in run["tokens"].items():
            assert tokens["free-rider"] == 0 and tokens["copier"] == 0, scorer
            assert sum(tokens.values()) == 1000 * ROUNDS, scorer
        reasons = [by_pid.get("free-rider", [None])[0] for by_pid in run["rejected"]]
        assert reasons == ["no_training"] * ROUNDS
        # The copier has no global step to replay in round 1 and sends the base model back.
        assert [by_pid["copier"][0] for by_pid in run["rejected"]] == ["no_training", "copied_update"]


def test_int8_sends_about_a_quarter_of_the_bytes(result) -> None:
    assert 0.2 < result["compression"]["ratio"] < 0.3


def test_tables_plots_and_summary_are_produced(result, tmp_path) -> None:
    lines = attacks.tables(result)
    header = next(i for i, line in enumerate(lines) if line.startswith("final test AUC"))
    assert lines[header + 1].split() == ["scenario", "fedavg", "median"]
    assert lines[header + 3].startswith("free-rider×1")
    paths = attacks.plot(result, tmp_path)
    assert [p.name for p in paths] == ["bench-robust.png", "bench-dp.png", "bench-compression.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    summary = json.loads(json.dumps(attacks.summary(result)))
    assert "runs" not in summary["robust"]["none"]["fedavg"]


def test_a_federation_an_attacker_majority_could_take_is_refused() -> None:
    with pytest.raises(ValueError, match="participants"):
        attacks.Settings(participants=4, scenarios=(("sign-flip", 2),))
