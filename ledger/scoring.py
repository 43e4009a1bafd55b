"""Contribution scorers an auditor can recompute from the ledger and the artifact store.

Scores are integers in parts per million (``score_ppm``) so that they are exact in
canonical JSON and in token arithmetic. The scorer's name and parameters are recorded
with every round (:class:`~ledger.records.ScorerSpec`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ledger.aggregate import WeightedUpdate

__all__ = ["cosine_scores", "to_ppm", "SCORERS"]

PPM = 1_000_000
# A change within this fraction of last round's global step repeats that step.
_REPEAT_TOLERANCE = 1e-3


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


SCORERS = {"cosine": cosine_scores}
