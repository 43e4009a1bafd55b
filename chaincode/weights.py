"""The aggregation weights a round's accepted entries entitle each participant to.

FedAvg weighs each accepted update by its signed ``num_examples``. A policy may also cap
any one participant's share of the total weight (``max_weight_share_ppm``, millionths):
the largest counts are then lowered, all to one integer weight ``W``, the largest for
which every share stays within the cap (integer "water filling"). ``CommitModel``
refuses weights other than these, and the coordinator's aggregation must use the same
function, so that the recorded weights, the committed model and the audit agree.
Integers only: the contract is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PPM", "capped_weights", "aggregation_weights"]

PPM = 1_000_000


def capped_weights(counts: Mapping[str, int], cap_ppm: int | None) -> dict[str, int]:
    """``counts`` with no share above ``cap_ppm`` / 10^6 of the total (``None``: no cap).

    The top ``k`` counts (largest first, ties by id) are lowered to
    ``W = floor(cap·S / (10^6 − cap·k))``, ``S`` the sum of the others, for the smallest
    ``k`` at which the largest remaining count is at most ``W``. When no ``k`` works
    (fewer participants than ``10^6 / cap``), every participant weighs the same, 1.
    """
    weights = dict(counts)
    if cap_ppm is None or cap_ppm >= PPM or not weights:
        return weights
    order = sorted(weights, key=lambda pid: (-weights[pid], pid))
    rest = sum(weights.values())
    for k, pid in enumerate(order):
        if cap_ppm * k >= PPM:
            break
        limit = (cap_ppm * rest) // (PPM - cap_ppm * k)
        if weights[pid] <= limit:
            return {p: (limit if i < k else weights[p]) for i, p in enumerate(order)}
        rest -= weights[pid]
    return dict.fromkeys(weights, 1)


def aggregation_weights(policy: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, int]:
    """The weight of each accepted participant of ``record`` under ``policy``."""
    counts = {e["participant"]: e["num_examples"] for e in record["entries"] if e["status"] == "accepted"}
    return capped_weights(counts, policy.get("max_weight_share_ppm"))
