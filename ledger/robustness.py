"""The outlier test of a round's updates, by weight and by size of change (DESIGN §4).

One function, :func:`outliers`, used by the coordinator before it records a round and by
``fedledger audit verify`` when it recomputes an ``outlier`` rejection, with the
parameters of the federation's on-ledger policy:

* **weight** — an update that claims more than ``outlier_weight_ratio_ppm`` millionths of
  the median example count of the *other* candidates is rejected (integer arithmetic).
  A participant cannot raise its own reference: it is left out of it. It needs two
  peers: with one, nothing tells the liar from the larger honest institution, and the
  bounds are the declared dataset sizes (``examples_over_declared``) and the policy's
  cap on any one weight share.
* **norm** — an update whose change from the base model is more than
  ``outlier_norm_ratio_ppm`` millionths of a reference change is rejected. The reference
  is the median change of the other candidates when there are at least two; with fewer
  peers (a round of one or two replies) it is the larger of the peer's change, the base
  model's norm and the norm of the previous round's global change, so that a boosted
  update cannot pass merely because nobody else answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ledger.aggregate import WeightedUpdate
from ledger.records import FederationPolicy

if TYPE_CHECKING:
    from ledger.artifacts import ArtifactStore
    from ledger.protocol import Ledger

__all__ = ["PPM", "change_norm", "model_norm", "global_change_norm", "previous_base", "outliers"]

PPM = 1_000_000


def _names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(arrays, key=lambda n: n.encode("utf-8"))


def change_norm(arrays: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> float:
    """Euclidean norm of ``arrays − base`` over the base model's tensors, in float64."""
    total = 0.0
    for name in _names(base):
        delta = np.asarray(arrays[name], np.float64) - np.asarray(base[name], np.float64)
        total += float(np.sum(delta * delta))
    return total**0.5


def model_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """Euclidean norm of a model's tensors, in float64."""
    return change_norm(arrays, {n: np.zeros((), np.float64) for n in arrays})


def global_change_norm(previous_base: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> float:
    """The norm of the last round's global change ``G_r − G_{r−1}``, from two committed models."""
    return change_norm(base, previous_base)


def previous_base(ledger: Ledger, federation: str, round_no: int,
                  artifacts: ArtifactStore) -> dict[str, np.ndarray] | None:
    """G_{r-1}, the model round ``round_no − 1`` trained from, as recorded and stored
    (None in round 1). The coordinator and the auditor both take it from here, for the
    outlier test's reference and the scorer's last step; ledger and artifact errors
    propagate, since a reference the two could not both read would not be recomputable."""
    if round_no <= 1:
        return None
    return artifacts.get(ledger.get_round(federation, round_no - 1).record.base_model)


def _twice_median(values: Sequence[int]) -> int:
    """Twice the median of integers, exactly (the mean of the middle two when even)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return 2 * ordered[mid] if len(ordered) % 2 else ordered[mid - 1] + ordered[mid]


def outliers(
    base: Mapping[str, np.ndarray],
    updates: Sequence[WeightedUpdate],
    policy: FederationPolicy,
    previous_change: float | None = None,
) -> dict[str, str]:
    """The participants of ``updates`` that fail the outlier test, with the reason's detail.

    ``updates`` carry the *signed* example counts as weights (before any cap) and the
    updated tensors; ``previous_change`` is :func:`global_change_norm` of the previous
    round (None in the first round). The result does not depend on the order of ``updates``.
    """
    found: dict[str, str] = {}
    ordered = sorted(updates, key=lambda u: u.participant.encode("utf-8"))
    weight_ratio = policy.outlier_weight_ratio_ppm
    for update in ordered:
        others = [u.weight for u in ordered if u.participant != update.participant]
        if len(others) >= 2 and 2 * update.weight * PPM > weight_ratio * _twice_median(others):
            found[update.participant] = (
                f"claims {update.weight} examples, more than {weight_ratio / PPM:g}× the others' "
                f"median {_twice_median(others) / 2:g}"
            )
    norms = {u.participant: change_norm(u.arrays, base) for u in ordered}
    floor = max(model_norm(base), previous_change or 0.0)
    norm_ratio = policy.outlier_norm_ratio_ppm
    for update in ordered:
        if update.participant in found:
            continue
        others = [n for p, n in norms.items() if p != update.participant]
        if len(others) >= 2:
            reference, what = float(np.median(np.asarray(others, np.float64))), "the others' median"
        else:
            reference, what = max([*others, floor]), "the reference (too few peers)"
        norm = norms[update.participant]
        if reference > 0 and norm * PPM > norm_ratio * reference:
            found[update.participant] = (
                f"update norm {norm:.4g} exceeds {norm_ratio / PPM:g}× {what} {reference:.4g}"
            )
    return found
