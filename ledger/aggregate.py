"""Deterministic aggregation that an auditor can recompute bit for bit (DESIGN §4.5).

FedAvg here fixes everything floating-point results depend on: updates are taken in
participant-id order, accumulated in float64, divided once, and cast back to each
tensor's dtype. The coordinator and ``fedledger audit verify`` call the same function.

The weights are the signed ``num_examples`` of the accepted entries, lowered by the
policy's cap on any one participant's share (:func:`capped_weights`, the contract's own
integer rule, so that ``CommitModel``, the coordinator and the auditor agree).

The robust rules follow the same discipline: an aggregator is called as
``AGGREGATORS[name](updates, params)`` with the policy's integer ``aggregation_params``
(:func:`check_params` validates them and fills defaults):

* ``fedavg`` — the weighted mean above; takes no parameters.
* ``median`` — the coordinate-wise median, unweighted (the mean of the two middle values
  when the count is even); takes no parameters.
* ``trimmed-mean`` — per coordinate, the ``k = floor(n · trim_ppm / 10⁶)`` largest and
  ``k`` smallest values are dropped and the rest averaged, unweighted.
* ``multi-krum`` — FedAvg of the updates that multi-Krum kept. The selection
  (:func:`ledger.robust.krum_discards`) runs before the round is recorded, so the
  aggregator only ever sees the kept updates; ``byzantine`` and ``keep`` parametrise it.

The median and the trimmed mean sort each coordinate's values, so they do not depend on
the order of ``updates``; they still accumulate in a fixed order, in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from chaincode.weights import capped_weights

__all__ = [
    "AGGREGATORS",
    "PARAMETERS",
    "AggregationError",
    "Aggregator",
    "WeightedUpdate",
    "capped",
    "capped_weights",
    "check_params",
    "fedavg",
    "median",
    "trimmed_mean",
]

PPM = 1_000_000


class AggregationError(ValueError):
    """The updates cannot be aggregated (no updates, mismatched tensors, zero weight)."""


@dataclass(frozen=True)
class WeightedUpdate:
    """One accepted update: who sent it, its weight (num_examples) and its tensors."""

    participant: str
    weight: int
    arrays: Mapping[str, np.ndarray]


def capped(updates: Sequence[WeightedUpdate], max_share_ppm: int | None) -> list[WeightedUpdate]:
    """``updates`` with their weights (signed counts) capped at ``max_share_ppm`` of the total."""
    weights = capped_weights({u.participant: u.weight for u in updates}, max_share_ppm)
    return [u if u.weight == weights[u.participant] else WeightedUpdate(u.participant, weights[u.participant], u.arrays)
            for u in updates]


def _ordered(updates: Sequence[WeightedUpdate]) -> tuple[list[WeightedUpdate], list[str]]:
    """``updates`` in participant-id order and their common tensor names (checked)."""
    if not updates:
        raise AggregationError("no updates to aggregate")
    ordered = sorted(updates, key=lambda u: u.participant.encode("utf-8"))
    names = sorted(ordered[0].arrays)
    for update in ordered[1:]:
        if sorted(update.arrays) != names:
            raise AggregationError(f"update of {update.participant} has other tensor names")
    return ordered, names


def _shape_checked(update: WeightedUpdate, name: str, ref: np.ndarray) -> np.ndarray:
    tensor = np.asarray(update.arrays[name])
    if tensor.shape != ref.shape:
        raise AggregationError(
            f"tensor {name!r} of {update.participant} has shape {tensor.shape}, expected {ref.shape}"
        )
    return tensor


def fedavg(updates: Sequence[WeightedUpdate]) -> dict[str, np.ndarray]:
    """Weighted mean of ``updates`` by ``weight``, in participant-id order, in float64."""
    ordered, names = _ordered(updates)
    total = sum(u.weight for u in ordered)
    if total <= 0:
        raise AggregationError("total weight is zero")
    reference = ordered[0].arrays
    result: dict[str, np.ndarray] = {}
    for name in names:
        ref = np.asarray(reference[name])
        acc = np.zeros(ref.shape, dtype=np.float64)
        for update in ordered:
            acc += np.float64(update.weight) * _shape_checked(update, name, ref).astype(np.float64)
        acc /= np.float64(total)
        result[name] = np.ascontiguousarray(acc.astype(ref.dtype))
    return result


def _sorted_values(ordered: Sequence[WeightedUpdate], name: str) -> tuple[np.ndarray, np.dtype]:
    """Each coordinate's values across the updates, sorted ascending (axis 0), in float64."""
    ref = np.asarray(ordered[0].arrays[name])
    stacked = np.stack([_shape_checked(u, name, ref).astype(np.float64) for u in ordered])
    return np.sort(stacked, axis=0, kind="stable"), ref.dtype


def median(updates: Sequence[WeightedUpdate]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of ``updates`` (unweighted), in float64, cast back.

    With an even count, the mean of the two middle values, ``(a + b) / 2`` in float64.
    """
    ordered, names = _ordered(updates)
    n, mid = len(ordered), len(ordered) // 2
    result: dict[str, np.ndarray] = {}
    for name in names:
        values, dtype = _sorted_values(ordered, name)
        middle = values[mid] if n % 2 else (values[mid - 1] + values[mid]) / np.float64(2)
        result[name] = np.ascontiguousarray(middle.astype(dtype))
    return result


def trimmed_mean(updates: Sequence[WeightedUpdate], trim_ppm: int) -> dict[str, np.ndarray]:
    """Coordinate-wise mean of ``updates`` without the ``k`` largest and ``k`` smallest values.

    ``k = floor(n · trim_ppm / 10⁶)`` (integer arithmetic); unweighted; the kept values are
    summed in ascending order in float64 and divided once. Refuses ``2k ≥ n``.
    """
    ordered, names = _ordered(updates)
    n = len(ordered)
    k = n * trim_ppm // PPM
    if 2 * k >= n:
        raise AggregationError(
            f"trimmed-mean with trim_ppm={trim_ppm} drops {k} from each end of {n} updates: nothing is left"
        )
    result: dict[str, np.ndarray] = {}
    for name in names:
        values, dtype = _sorted_values(ordered, name)
        acc = np.zeros(values.shape[1:], dtype=np.float64)
        for row in values[k:n - k]:
            acc += row
        acc /= np.float64(n - 2 * k)
        result[name] = np.ascontiguousarray(acc.astype(dtype))
    return result


# Each rule's integer parameters: name → (default or None when it depends on the round, lo, hi).
PARAMETERS: dict[str, dict[str, tuple[int | None, int, int]]] = {
    "fedavg": {},
    "median": {},
    # Below half, so that some values are always left: 2·floor(n·t) ≤ 2·n·t < n.
    "trimmed-mean": {"trim_ppm": (200_000, 0, PPM // 2 - 1)},
    # keep defaults to n − byzantine, known only in the round.
    "multi-krum": {"byzantine": (1, 0, PPM), "keep": (None, 1, PPM)},
}


def check_params(name: str, params: Mapping[str, int] | None) -> dict[str, int]:
    """The aggregation rule ``name``'s parameters, validated, with fixed defaults filled in.

    Raises :class:`AggregationError` naming the rule and key for an unknown rule, an unknown
    key, a value that is not an integer (``True`` is not one) or one out of range. The
    config loader calls it to refuse a bad policy before the federation is created.
    """
    spec = PARAMETERS.get(name)
    if spec is None:
        raise AggregationError(f"unknown aggregation {name!r} (known: {', '.join(PARAMETERS)})")
    given = dict(params or {})
    unknown = sorted(set(given) - set(spec))
    if unknown:
        takes = f"takes {', '.join(spec)}" if spec else "takes no parameters"
        raise AggregationError(f"aggregation_params: {name} has no parameter {unknown[0]!r} ({takes})")
    checked: dict[str, int] = {}
    for key, (default, lo, hi) in spec.items():
        if key not in given:
            if default is not None:
                checked[key] = default
            continue
        value = given[key]
        if type(value) is not int:
            raise AggregationError(
                f"aggregation_params.{key} of {name} must be an integer, not {type(value).__name__}"
            )
        if not lo <= value <= hi:
            raise AggregationError(f"aggregation_params.{key} of {name} must be from {lo} to {hi}, not {value}")
        checked[key] = value
    return checked


Aggregator = Callable[..., dict[str, np.ndarray]]
"""``aggregator(updates, params=None) -> tensors``; ``params`` is the policy's
``aggregation_params`` (None or empty: the defaults)."""


def _fedavg_rule(updates: Sequence[WeightedUpdate], params: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    check_params("fedavg", params)
    return fedavg(updates)


def _median_rule(updates: Sequence[WeightedUpdate], params: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    check_params("median", params)
    return median(updates)


def _trimmed_mean_rule(updates: Sequence[WeightedUpdate],
                       params: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    return trimmed_mean(updates, check_params("trimmed-mean", params)["trim_ppm"])


def _multi_krum_rule(updates: Sequence[WeightedUpdate],
                     params: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    # The updates multi-Krum discarded were rejected before the round was recorded.
    check_params("multi-krum", params)
    return fedavg(updates)


AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": _fedavg_rule,
    "median": _median_rule,
    "trimmed-mean": _trimmed_mean_rule,
    "multi-krum": _multi_krum_rule,
}
