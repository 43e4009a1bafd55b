"""Deterministic aggregation that an auditor can recompute bit for bit (DESIGN §4.5).

FedAvg here fixes everything floating-point results depend on: updates are taken in
participant-id order, accumulated in float64, divided once, and cast back to each
tensor's dtype. The coordinator and ``fedledger audit verify`` call the same function.

The weights are the signed ``num_examples`` of the accepted entries, lowered by the
policy's cap on any one participant's share (:func:`capped_weights`, the contract's own
integer rule, so that ``CommitModel``, the coordinator and the auditor agree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from chaincode.weights import capped_weights

__all__ = ["WeightedUpdate", "AggregationError", "fedavg", "capped_weights", "capped", "AGGREGATORS"]


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


def fedavg(updates: Sequence[WeightedUpdate]) -> dict[str, np.ndarray]:
    """Weighted mean of ``updates`` by ``weight``, in participant-id order, in float64."""
    if not updates:
        raise AggregationError("no updates to aggregate")
    ordered = sorted(updates, key=lambda u: u.participant.encode("utf-8"))
    total = sum(u.weight for u in ordered)
    if total <= 0:
        raise AggregationError("total weight is zero")
    reference = ordered[0].arrays
    names = sorted(reference)
    for update in ordered[1:]:
        if sorted(update.arrays) != names:
            raise AggregationError(f"update of {update.participant} has other tensor names")
    result: dict[str, np.ndarray] = {}
    for name in names:
        ref = np.asarray(reference[name])
        acc = np.zeros(ref.shape, dtype=np.float64)
        for update in ordered:
            tensor = np.asarray(update.arrays[name])
            if tensor.shape != ref.shape:
                raise AggregationError(
                    f"tensor {name!r} of {update.participant} has shape {tensor.shape}, "
                    f"expected {ref.shape}"
                )
            acc += np.float64(update.weight) * tensor.astype(np.float64)
        acc /= np.float64(total)
        result[name] = np.ascontiguousarray(acc.astype(ref.dtype))
    return result


AGGREGATORS = {"fedavg": fedavg}
