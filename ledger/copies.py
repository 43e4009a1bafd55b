"""Free riders and copies among a round's updates (DESIGN §4).

A participant that did not train can still send something that looks like an update.
:func:`free_riders`, called by the coordinator before it records a round and by
``fedledger audit verify`` when it recomputes a rejection, catches the cheap ways:

* ``no_training`` — the update hardly moved from the base model: its change is at most
  ``no_training_ppm`` millionths of the base model's norm (an update equal to the base
  is always caught while the check is on);
* ``copied_update`` — its change points where someone else's already did: its cosine
  with the previous round's global change (a replay of last round's step, scaled or
  not), or with another participant's change this round, is at least
  ``copy_cosine_ppm`` millionths. A copy within the round rejects *every* member of the
  copy group: nobody can tell the original from the copy, and a Sybil pair must not be
  paid twice.

Cosines are compared as integers (:func:`ledger.scoring.to_ppm`), so the coordinator and
the auditor draw the same line; changes are flattened as the scorers flatten them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ledger.aggregate import WeightedUpdate
from ledger.robust import _key, flat_changes as _changes
from ledger.scoring import _flat_delta, to_ppm

__all__ = ["PPM", "cosine_ppm", "free_riders"]

PPM = 1_000_000


def _norm(vector: np.ndarray) -> float:
    # numpy's own summation, not BLAS: its order does not depend on the CPU.
    return float(np.sum(vector * vector)) ** 0.5


def cosine_ppm(a: np.ndarray, b: np.ndarray) -> int | None:
    """The cosine of two flattened changes in millionths (half-even); None if either is zero."""
    na, nb = _norm(a), _norm(b)
    if na == 0.0 or nb == 0.0:
        return None
    return to_ppm(float(np.sum(a * b)) / (na * nb))


def free_riders(
    base: Mapping[str, np.ndarray],
    updates: Sequence[WeightedUpdate],
    previous: Mapping[str, np.ndarray] | None,
    no_training_ppm: int | None,
    copy_cosine_ppm: int | None,
) -> dict[str, tuple[str, str]]:
    """The participants of ``updates`` that did not train or copied, as ``{pid: (reason, detail)}``.

    ``updates`` are dense and carry the base model's tensors; ``previous`` is G_{r-1}, the
    model before ``base`` (None in round 1). A check whose threshold is None is off. An
    update caught as ``no_training`` is not compared for copies. The result does not
    depend on the order of ``updates``.
    """
    changes = _changes(base, updates)
    found: dict[str, tuple[str, str]] = {}
    if no_training_ppm is not None:
        base_norm = _norm(_flat_delta(base, {n: np.zeros((), np.float64) for n in base}))
        for pid, change in changes.items():
            norm = _norm(change)
            if norm * PPM <= no_training_ppm * base_norm:
                detail = (f"change norm {norm:.4g} is at most {no_training_ppm / PPM:g}× "
                          f"the base model's norm {base_norm:.4g}")
                found[pid] = ("no_training", detail)
    if copy_cosine_ppm is None:
        return found
    candidates = [pid for pid in changes if pid not in found]
    details: dict[str, list[str]] = {pid: [] for pid in candidates}
    if previous is not None:
        step = _flat_delta(base, previous)
        for pid in candidates:
            cosine = cosine_ppm(changes[pid], step)
            if cosine is not None and cosine >= copy_cosine_ppm:
                details[pid].append(f"cosine {cosine / PPM:.6f} with the previous round's global change "
                                    f"(a replay of last round's step)")
    copied_from: dict[str, list[str]] = {pid: [] for pid in candidates}
    for i, pid in enumerate(candidates):
        for other in candidates[i + 1:]:
            cosine = cosine_ppm(changes[pid], changes[other])
            if cosine is not None and cosine >= copy_cosine_ppm:
                copied_from[pid].append(f"{other} ({cosine / PPM:.6f})")
                copied_from[other].append(f"{pid} ({cosine / PPM:.6f})")
    for pid in candidates:
        if copied_from[pid]:
            details[pid].append(f"cosine at least {copy_cosine_ppm / PPM:g} with the change of "
                                f"{', '.join(copied_from[pid])} this round (one copies the other)")
        if details[pid]:
            found[pid] = ("copied_update", "; ".join(details[pid]))
    return dict(sorted(found.items(), key=lambda item: _key(item[0])))
