"""Contribution scorers an auditor can recompute from the ledger and the artifact store.

Scores are integers in parts per million (``score_ppm``) so that they are exact in
canonical JSON and in token arithmetic. The scorer's name and parameters are recorded
with every round (:class:`~ledger.records.ScorerSpec`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ledger.aggregate import WeightedUpdate, fedavg

__all__ = ["cosine_scores", "to_ppm", "SCORERS"]

PPM = 1_000_000


def to_ppm(value: float) -> int:
    """A score in [-1, 1] as an integer number of parts per million (half-even rounding)."""
    if not np.isfinite(value):
        return 0
    return int(np.clip(round(value * PPM), -PPM, PPM))


def _flat_delta(arrays: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> np.ndarray:
    names = sorted(base, key=lambda n: n.encode("utf-8"))
    return np.concatenate(
        [(np.asarray(arrays[n], np.float64) - np.asarray(base[n], np.float64)).ravel() for n in names]
    )


def cosine_scores(
    base: Mapping[str, np.ndarray], updates: Sequence[WeightedUpdate]
) -> dict[str, int]:
    """Cosine similarity of each update's change to the provisional aggregate's change.

    Needs no data, so anyone holding the stored updates can recompute it. An update
    that changes nothing, or a round whose aggregate changes nothing, scores 0.
    """
    if not updates:
        return {}
    aggregate = _flat_delta(fedavg(updates), base)
    agg_norm = float(np.linalg.norm(aggregate))
    scores: dict[str, int] = {}
    for update in sorted(updates, key=lambda u: u.participant):
        delta = _flat_delta(update.arrays, base)
        norm = float(np.linalg.norm(delta))
        if norm == 0.0 or agg_norm == 0.0:
            scores[update.participant] = 0
        else:
            scores[update.participant] = to_ppm(float(delta @ aggregate) / (norm * agg_norm))
    return scores


SCORERS = {"cosine": cosine_scores}
