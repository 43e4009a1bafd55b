"""Multi-Krum selection of a round's updates, recomputable by an auditor (DESIGN §4.5).

Multi-Krum (Blanchard et al., 2017) scores every update by how far it lies from its
nearest peers and keeps the ``keep`` updates with the lowest scores; the others are
rejected before the round is recorded, and the kept ones are averaged by FedAvg
(``AGGREGATORS["multi-krum"]``). A scaled or sign-flipped update lies far from every
honest one, so its score is high whatever it claims about itself.

Everything the result depends on is fixed: changes are flattened from the base model in
sorted tensor-name order (as the scorers do), distances are summed in float64, each
pair's distance is computed once, and ties are broken by participant id (UTF-8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ledger.aggregate import AggregationError, WeightedUpdate, check_params
from ledger.scoring import _flat_delta

__all__ = ["krum_discards", "krum_scores"]


def _key(participant: str) -> bytes:
    return participant.encode("utf-8")


def flat_changes(base: Mapping[str, np.ndarray], updates: Sequence[WeightedUpdate]) -> dict[str, np.ndarray]:
    """Each update's flattened change from ``base``, in participant-id order (shapes checked;
    AggregationError, a ValueError, for two updates of one participant or a misfit tensor)."""
    changes: dict[str, np.ndarray] = {}
    for update in sorted(updates, key=lambda u: _key(u.participant)):
        if update.participant in changes:
            raise AggregationError(f"two updates of {update.participant}")
        for name, tensor in base.items():
            if name not in update.arrays:
                raise AggregationError(f"update of {update.participant} lacks tensor {name!r}")
            if np.shape(update.arrays[name]) != np.shape(tensor):
                raise AggregationError(
                    f"tensor {name!r} of {update.participant} has shape {np.shape(update.arrays[name])}, "
                    f"expected {np.shape(tensor)}"
                )
        changes[update.participant] = _flat_delta(update.arrays, base)
    return changes


def krum_scores(base: Mapping[str, np.ndarray], updates: Sequence[WeightedUpdate],
                byzantine: int) -> dict[str, float]:
    """Each update's Krum score: the sum of its squared distances to its ``n − f − 2`` nearest others.

    Empty when ``n − f − 2 < 1`` (too few updates to tell anyone apart).
    """
    changes = flat_changes(base, updates)
    pids = list(changes)
    n = len(pids)
    nearest = n - byzantine - 2
    if nearest < 1:
        return {}
    distances = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            diff = changes[pids[i]] - changes[pids[j]]
            # numpy's own summation, not BLAS: its order does not depend on the CPU.
            distances[i, j] = distances[j, i] = float(np.sum(diff * diff))
    scores: dict[str, float] = {}
    for i, pid in enumerate(pids):
        others = np.sort(np.delete(distances[i], i))
        total = 0.0
        for value in others[:nearest]:  # ascending, one at a time: a fixed summation order
            total += float(value)
        scores[pid] = total
    return scores


def krum_discards(base: Mapping[str, np.ndarray], updates: Sequence[WeightedUpdate],
                  params: Mapping[str, int] | None = None) -> dict[str, str]:
    """The updates multi-Krum does not keep, each with a detail for its rejection.

    ``params`` are the policy's ``aggregation_params`` for ``multi-krum``: ``byzantine``
    (f, default 1) and ``keep`` (m, default n − f). Updates are ranked by
    :func:`krum_scores` (ties by participant id) and the ``m`` lowest are kept. When
    ``n − f − 2 < 1`` — too few updates for Krum to compare — nothing is discarded: a
    round of two or three replies is left to the outlier test. The result does not
    depend on the order of ``updates``.
    """
    checked = check_params("multi-krum", params)
    byzantine = checked["byzantine"]
    scores = krum_scores(base, updates, byzantine)
    if not scores:
        return {}
    keep = checked.get("keep", len(scores) - byzantine)
    ranked = sorted(scores, key=lambda p: (scores[p], _key(p)))
    return {
        pid: f"multi-Krum score {scores[pid]:.2e} is not among the {keep} lowest (f={byzantine})"
        for pid in sorted(ranked[keep:], key=_key)
    }
