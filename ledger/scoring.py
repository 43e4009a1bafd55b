"""Contribution scorers an auditor can recompute from the ledger and the artifact store.

Scores are integers in parts per million (``score_ppm``) so that they are exact in
canonical JSON and in token arithmetic. The scorer's name and parameters are recorded
with every round (:class:`~ledger.records.ScorerSpec`). The coordinator and the auditor
both call :func:`score_round`, which validates the spec and dispatches:

``cosine`` (:func:`cosine_scores`, no params, no data)
    Leave-self-out cosine of each change to the others' weighted mean change.
``loo`` (:func:`loo_scores`, params ``{"metric": "auc", "coalition": "share"}``)
    Leave-one-out: ``U(all) − U(all \\ {i})``.
``shapley`` (:func:`shapley_scores`, params ``{"metric": "auc", "coalition": "share",
"permutations": 2·n (at most 100), "truncation_ppm": 100, "round_truncation_ppm": 100}``)
    GTG-Shapley (Liu et al. 2022): within-round Monte-Carlo Shapley values over
    permutations of the round's participants, guided sampling, both truncations.

For ``loo`` and ``shapley`` the utility ``U(S)`` of a set ``S`` of accepted updates is
the ``metric`` (:data:`ledger.utility.METRICS`: ``auc``, ``accuracy``,
``neg_log_loss``) on the federation's validation set of the model that stands for
``S``; ``U(∅)`` is the round's base model's. With ``coalition = "share"`` (the
default) that model is the base plus ``S``'s share of the round's step,
``base + Σ_{i∈S} w_i·(x_i − base) / Σ_all w`` (float64, capped weights); with
``"fedavg"`` (GTG-Shapley's own reconstruction) it is ``fedavg(S)``
(:func:`ledger.aggregate.fedavg`: ``S``'s weights renormalised among themselves). Both
stand for the committed aggregate (up to float32 rounding) when ``S`` is the whole
round. They differ on a free rider that sends the base back. Under ``share`` it
changes no set's model and scores exactly 0. Under ``fedavg`` it pulls every set's
model back toward the base: that usually costs utility, but whenever some update is
harmful on its own (a few overfitted or mislabelled rows), ``{harmful, free rider}`` is
nearly the base and so far better than ``{harmful}``, and Shapley credits the free rider
for it; measured on synthetic rounds with a pre-trained base, one noisy 40-row bank
and one free rider, that gave the free rider +0.003 to +0.09 of AUC in 40 of 40 seeds.

A score is a difference of utilities in millionths of the metric (an AUC gain of
0.01 is 10 000 ppm), clipped to ±10^6.

What an auditor needs to recompute a round's scores: the scorer's name, params and seed
(the recorded ScorerSpec), the validation set (from the artifact store by the spec's
``validation_digest``; ``loo``/``shapley`` only), the round's accepted updates with
their capped FedAvg weights, the base model and (``cosine`` only) the previous global
model. Every scorer is deterministic: participants are taken in UTF-8 id order, sums
are accumulated in float64, ``shapley`` draws its permutations from
``numpy.random.default_rng(seed)`` and ``loo``/``shapley`` round every utility to an
integer number of billionths before any difference or truncation test. What BLAS may
still change from one machine to another are the last bits of a logit: harmless to
``cosine`` (±1 ppm is the audit's tolerance), but two validation rows whose logits tie to
the last bit and carry opposite labels could swap ranks and move an AUC utility by one
pair (1 / (positives × negatives)); an auditor on another machine who sees such a
difference can confirm it on the coordinator's platform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ledger.aggregate import AggregationError, WeightedUpdate, fedavg
from ledger.records import ScorerSpec
from ledger.utility import METRICS, UtilityError, ValidationSet, utility

__all__ = [
    "ScorerError",
    "cosine_scores",
    "loo_scores",
    "shapley_scores",
    "score_round",
    "scorer_params",
    "needs_validation",
    "to_ppm",
    "SCORERS",
    "MAX_PERMUTATIONS",
    "COALITIONS",
]

PPM = 1_000_000
_PPB = 1_000_000_000
# A change within this fraction of last round's global step repeats that step.
_REPEAT_TOLERANCE = 1e-3
MAX_PERMUTATIONS = 100
_DEFAULT_TRUNCATION_PPM = 100
_DEFAULT_ROUND_TRUNCATION_PPM = 100
COALITIONS = ("fedavg", "share")


class ScorerError(ValueError):
    """Scores cannot be computed: unknown scorer, bad params, missing validation set or inputs."""


def to_ppm(value: float) -> int:
    """A score in [-1, 1] as an integer number of parts per million (half-even rounding)."""
    if not np.isfinite(value):
        return 0
    return int(np.clip(round(value * PPM), -PPM, PPM))


def _ppb_to_ppm(value_ppb: int | Fraction) -> int:
    """Billionths (exact) as millionths, half-even, clipped to ±10^6."""
    return max(-PPM, min(PPM, round(Fraction(value_ppb) / 1000)))


def _flat_delta(arrays: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> np.ndarray:
    names = sorted(base, key=lambda n: n.encode("utf-8"))
    return np.concatenate(
        [(np.asarray(arrays[n], np.float64) - np.asarray(base[n], np.float64)).ravel() for n in names]
    )


def cosine_scores(
    base: Mapping[str, np.ndarray],
    updates: Sequence[WeightedUpdate],
    previous: Mapping[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Cosine similarity of each update's change to the weighted mean change of the *others*.

    Leave-self-out: a participant is scored against the FedAvg-weighted change of every
    other accepted update, never against an aggregate it is part of, so that it cannot
    raise its own score by weight or by pointing where it pushes the aggregate itself.
    Needs no data, so anyone holding the stored updates can recompute it. An update that
    changes nothing, a lone update, or one whose peers change nothing scores 0.

    With ``previous`` (the global model before ``base``, G_{r-1}), the direction of last
    round's global change is taken out of every change and of the reference first: what
    is scored is agreement on what is *new* this round. An update that merely repeats
    last round's step (no training) then changes nothing new and scores 0.
    """
    ordered = sorted(updates, key=lambda u: u.participant.encode("utf-8"))
    deltas = {u.participant: _flat_delta(u.arrays, base) for u in ordered}
    if previous is not None and deltas:
        step = _flat_delta(base, previous)
        step_sq = float(step @ step)
        if step_sq > 0.0:
            for pid, delta in deltas.items():
                new = delta - (float(delta @ step) / step_sq) * step
                # What is left of a repeated step is the rounding of the tensors' dtype,
                # not information: below this share of the change it counts as nothing.
                small = float(np.linalg.norm(new)) <= _REPEAT_TOLERANCE * float(np.linalg.norm(delta))
                deltas[pid] = np.zeros_like(delta) if small else new
    total = np.zeros_like(next(iter(deltas.values()))) if deltas else np.zeros(0)
    for update in ordered:
        total += np.float64(update.weight) * deltas[update.participant]
    scores: dict[str, int] = {}
    for update in ordered:
        delta = deltas[update.participant]
        # The others' weighted sum; its direction is their weighted mean's.
        reference = total - np.float64(update.weight) * delta
        norm, ref_norm = float(np.linalg.norm(delta)), float(np.linalg.norm(reference))
        if len(ordered) < 2 or norm == 0.0 or ref_norm == 0.0:
            scores[update.participant] = 0
        else:
            scores[update.participant] = to_ppm(float(delta @ reference) / (norm * ref_norm))
    return scores


class _Utilities:
    """``U(S)`` in integer billionths of the metric, each subset computed once.

    ``coalition`` says which model stands for a set ``S`` of updates: ``"share"`` is
    ``base + Σ_{i∈S} w_i·(x_i − base) / Σ_all w`` (S's share of the round's step, the
    others' share left out: an update equal to the base adds exact zeros and changes no
    set's model); ``"fedavg"`` is ``fedavg(S)`` (S's weights renormalised among themselves).
    """

    def __init__(
        self,
        base: Mapping[str, np.ndarray],
        updates: Sequence[WeightedUpdate],
        validation: ValidationSet | None,
        metric: str,
        coalition: str,
    ) -> None:
        if validation is None:
            raise ScorerError("this scorer needs a validation set and none was given")
        if metric not in METRICS:
            raise ScorerError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
        if coalition not in COALITIONS:
            raise ScorerError(f"unknown coalition {coalition!r} (known: {', '.join(COALITIONS)})")
        ordered = sorted(updates, key=lambda u: u.participant.encode("utf-8"))
        ids = [u.participant for u in ordered]
        if len(set(ids)) != len(ids):
            dup = next(p for p in ids if ids.count(p) > 1)
            raise ScorerError(f"participant {dup!r} has more than one update")
        self.ids = ids
        self._by_id = {u.participant: u for u in ordered}
        self._base, self._validation, self._metric, self._coalition = base, validation, metric, coalition
        self._total = sum(u.weight for u in ordered)
        self._cache: dict[frozenset[str], int] = {}

    def _model(self, members: list[WeightedUpdate]) -> Mapping[str, np.ndarray]:
        if self._coalition == "fedavg":
            # A set with no weight moves nothing: its aggregate is the base model.
            return fedavg(members) if sum(u.weight for u in members) > 0 else self._base
        model: dict[str, np.ndarray] = {}
        for name in sorted(self._base, key=lambda n: n.encode("utf-8")):
            start = np.asarray(self._base[name], dtype=np.float64)
            step = np.zeros(start.shape, dtype=np.float64)
            for update in members:
                if set(update.arrays) != set(self._base):
                    raise AggregationError(f"update of {update.participant} has other tensor names than the base")
                tensor = np.asarray(update.arrays[name], dtype=np.float64)
                if tensor.shape != start.shape:
                    raise AggregationError(f"tensor {name!r} of {update.participant} has shape {tensor.shape}, "
                                           f"expected {start.shape}")
                step += np.float64(update.weight) * (tensor - start)
            model[name] = start + step / np.float64(self._total) if self._total > 0 else start
        return model

    def __call__(self, subset: frozenset[str]) -> int:
        cached = self._cache.get(subset)
        if cached is not None:
            return cached
        members = [self._by_id[p] for p in sorted(subset, key=lambda p: p.encode("utf-8"))]
        try:
            value = utility(self._model(members), self._validation, self._metric)
        except (AggregationError, UtilityError) as exc:
            raise ScorerError(f"utility of {sorted(subset)} cannot be computed: {exc}") from exc
        # Integer billionths: later differences and truncation tests are exact.
        self._cache[subset] = result = int(round(value * _PPB)) if np.isfinite(value) else 0
        return result


def loo_scores(
    base: Mapping[str, np.ndarray],
    updates: Sequence[WeightedUpdate],
    previous: Mapping[str, np.ndarray] | None = None,
    validation: ValidationSet | None = None,
    *,
    metric: str = "auc",
    coalition: str = "share",
) -> dict[str, int]:
    """Leave-one-out: ``U(all) − U(all \\ {i})`` in millionths of ``metric``, per participant.

    ``U(S)`` is ``metric`` on ``validation`` of the model that stands for ``S`` —
    by default S's share of the round's step, with ``coalition="fedavg"`` ``fedavg(S)``
    (module docstring); ``U(∅)`` is the base model's (so a lone update scores its gain
    over the base). An update without which the
    aggregate is as good or better scores ≤ 0. ``previous`` is accepted for a uniform
    signature and not used.
    """
    values = _Utilities(base, updates, validation, metric, coalition)
    everyone = frozenset(values.ids)
    if not everyone:
        return {}
    full = values(everyone)
    return {pid: _ppb_to_ppm(full - values(everyone - {pid})) for pid in values.ids}


def shapley_scores(
    base: Mapping[str, np.ndarray],
    updates: Sequence[WeightedUpdate],
    previous: Mapping[str, np.ndarray] | None = None,
    validation: ValidationSet | None = None,
    *,
    metric: str = "auc",
    permutations: int | None = None,
    truncation_ppm: int = _DEFAULT_TRUNCATION_PPM,
    round_truncation_ppm: int = _DEFAULT_ROUND_TRUNCATION_PPM,
    coalition: str = "share",
    seed: int = 0,
) -> dict[str, int]:
    """GTG-Shapley values in millionths of ``metric``: mean truncated marginal over permutations.

    The ``n`` participants are sorted by UTF-8 id. Permutation ``k`` (``k = 0 …
    permutations−1``, default ``min(2n, 100)``) puts participant ``k mod n`` first
    (GTG's guided sampling, so every participant leads equally often) and the others in
    the order ``numpy.random.default_rng(seed).permutation`` draws, one draw per
    permutation in turn. Walking a permutation, each participant's marginal is
    ``U(prefix + i) − U(prefix)``; once ``|U(all) − U(prefix)| ≤ truncation_ppm``
    the rest of that permutation's marginals are 0 (within-round truncation). If
    ``|U(all) − U(∅)| ≤ round_truncation_ppm`` the round is not worth sampling and every
    score is 0 (between-round truncation; ``U(∅)`` is the base model's). Since the
    first step of every permutation tests the same gap, the round is in effect skipped
    below the larger of the two thresholds. ``U(S)`` is cached per set, so at most
    ``2^n`` utilities are computed; ``coalition`` chooses the model that stands for a set
    (module docstring). ``previous`` is accepted for a uniform signature and not used.
    """
    values = _Utilities(base, updates, validation, metric, coalition)
    ids = values.ids
    n = len(ids)
    if n == 0:
        return {}
    count = min(2 * n, MAX_PERMUTATIONS) if permutations is None else permutations
    if count < 1:
        raise ScorerError(f"permutations must be at least 1, got {count}")
    if seed < 0:
        raise ScorerError(f"seed must be non-negative, got {seed}")
    empty, full = values(frozenset()), values(frozenset(ids))
    if abs(full - empty) <= round_truncation_ppm * 1000:
        return {pid: 0 for pid in ids}
    rng = np.random.default_rng(seed)
    totals = [0] * n  # integer billionths: exact sums
    for k in range(count):
        lead = k % n
        others = [i for i in range(n) if i != lead]
        order = [lead] + [others[j] for j in rng.permutation(n - 1)]
        prefix: frozenset[str] = frozenset()
        before = empty
        for i in order:
            if abs(full - before) <= truncation_ppm * 1000:
                break  # the rest of this permutation adds (about) nothing: marginals 0
            prefix = prefix | {ids[i]}
            after = values(prefix)
            totals[i] += after - before
            before = after
    return {pid: _ppb_to_ppm(Fraction(totals[i], count)) for i, pid in enumerate(ids)}


SCORERS: dict[str, Callable[..., dict[str, int]]] = {
    "cosine": cosine_scores,
    "loo": loo_scores,
    "shapley": shapley_scores,
}
"""Scorer functions by the name a ScorerSpec records; call them through :func:`score_round`."""

_NEEDS_VALIDATION = {"cosine": False, "loo": True, "shapley": True}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "cosine": {},
    "loo": {"metric": "auc", "coalition": "share"},
    "shapley": {
        "metric": "auc",
        "coalition": "share",
        "permutations": None,
        "truncation_ppm": _DEFAULT_TRUNCATION_PPM,
        "round_truncation_ppm": _DEFAULT_ROUND_TRUNCATION_PPM,
    },
}
_INT_RANGES = {
    "permutations": (1, MAX_PERMUTATIONS),
    "truncation_ppm": (0, PPM),
    "round_truncation_ppm": (0, PPM),
}


def needs_validation(name: str) -> bool:
    """Whether scorer ``name`` measures utility on a validation set (``loo``, ``shapley``)."""
    if name not in SCORERS:
        raise ScorerError(f"unknown scorer {name!r} (known: {', '.join(SCORERS)})")
    return _NEEDS_VALIDATION[name]


def scorer_params(spec: ScorerSpec) -> dict[str, Any]:
    """The spec's params checked and completed with their defaults (``permutations`` None: 2·n ≤ 100).

    Raises :class:`ScorerError` naming the scorer and the key: unknown scorer, unknown
    key, a metric not in :data:`~ledger.utility.METRICS`, an integer out of range or not
    an integer, a negative seed. Call it when a policy is written as well as per round.
    """
    needs_validation(spec.name)
    defaults = _DEFAULTS[spec.name]
    unknown = sorted(set(spec.params) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise ScorerError(f"scorer {spec.name!r} has no param {unknown[0]!r} (known: {known})")
    params = {**defaults, **spec.params}
    if "metric" in params and params["metric"] not in METRICS:
        raise ScorerError(
            f"scorer {spec.name!r} param 'metric': {params['metric']!r} is not one of {', '.join(METRICS)}"
        )
    if "coalition" in params and params["coalition"] not in COALITIONS:
        raise ScorerError(
            f"scorer {spec.name!r} param 'coalition': {params['coalition']!r} is not one of {', '.join(COALITIONS)}"
        )
    for key, (lo, hi) in _INT_RANGES.items():
        if key not in params or (key == "permutations" and params[key] is None):
            continue
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ScorerError(f"scorer {spec.name!r} param {key!r}: {value!r} is not an integer in [{lo}, {hi}]")
    if spec.name == "shapley" and spec.seed < 0:
        raise ScorerError(f"scorer 'shapley' seed must be non-negative, got {spec.seed}")
    return params


def score_round(
    spec: ScorerSpec,
    base: Mapping[str, np.ndarray],
    updates: Sequence[WeightedUpdate],
    previous: Mapping[str, np.ndarray] | None = None,
    validation: ValidationSet | None = None,
) -> dict[str, int]:
    """One round's scores in ppm (in [-10^6, 10^6]) per accepted participant, by ``spec``.

    The one entry point of the coordinator and the auditor. ``updates`` carry the capped
    FedAvg weights; ``previous`` is used by ``cosine`` only, ``validation`` by ``loo`` and
    ``shapley`` only, and must then be the set whose digest the spec records. Raises
    :class:`ScorerError` for an unknown scorer, bad params, a missing or mismatched
    validation set, or updates that cannot be aggregated or evaluated.
    """
    params = scorer_params(spec)
    if spec.name == "cosine":
        return cosine_scores(base, updates, previous)
    if validation is None:
        raise ScorerError(f"scorer {spec.name!r} needs a validation set and none was given")
    if spec.validation_digest is None:
        raise ScorerError(f"scorer {spec.name!r} needs the validation set's digest in its spec")
    digest = validation.digest()
    if digest != spec.validation_digest:
        raise ScorerError(
            f"validation set {digest[:16]}… is not the one the spec records ({spec.validation_digest[:16]}…)"
        )
    if spec.name == "loo":
        return loo_scores(base, updates, previous, validation, **params)
    return shapley_scores(base, updates, previous, validation, seed=spec.seed, **params)
