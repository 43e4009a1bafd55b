"""What becomes of an authenticated update: one set of rules for the coordinator and the auditor.

Once a reply's signature has been verified (DESIGN §4), the coordinator decides whether
its update is used, and ``fedledger audit verify`` decides it again from the ledger and
the artifact store. Both call the functions here, with the federation's on-ledger policy,
so that every rejection below is recomputable:

1. **The signed training claim** (:func:`claim_rejection`), per update:
   ``training_mismatch`` — the claim is not the policy's algorithm, FedProx μ,
   compression, DP clipping norm or δ (a version 1 manifest claims plain FedAvg);
   ``bad_privacy_claim`` — the claimed ε is negative or does not follow from the signed
   DP-SGD parameters (:func:`ledger.privacy.check_claim`);
   ``privacy_budget_exceeded`` — the ε is above the per-round budget, or the
   participant's accepted rounds so far plus this one exceed the total budget.
2. **The content** (:func:`dense_update`), per update: ``bad_compression`` — the int8
   form does not decode (a scale that is not finite, a tensor of the wrong type);
   ``non_finite`` / ``wrong_shape`` — the dense update cannot enter an aggregate.
3. **The round** (:func:`round_rejections`), over the updates that passed 1 and 2:
   ``no_training`` / ``copied_update`` (:mod:`ledger.copies`), then the outlier test
   (:mod:`ledger.robustness`) among the rest, then, under multi-Krum, the updates its
   selection discards (``robust_discarded``, :mod:`ledger.robust`).

Needs no Flower and no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ledger.aggregate import WeightedUpdate
from ledger.compression import CompressionError, decompress
from ledger.copies import free_riders
from ledger.formats import PPM, Manifest
from ledger.records import FederationPolicy, RoundView
from ledger.robust import krum_discards
from ledger.robustness import global_change_norm, outliers

__all__ = ["Rejection", "claim_rejection", "dense_update", "round_rejections", "privacy_spent",
           "signed_epsilon", "ROUND_REASONS", "CLAIM_REASONS"]

Rejection = tuple[str, str]  # (reason, detail)

CLAIM_REASONS = ("training_mismatch", "bad_privacy_claim", "privacy_budget_exceeded")
ROUND_REASONS = ("no_training", "copied_update", "outlier", "robust_discarded")


def signed_epsilon(manifest: Manifest) -> int | None:
    """The ε (millionths) a manifest signed for its round; None without a DP claim."""
    dp = manifest.claim().dp
    return None if dp is None else dp.epsilon_ppm


def claim_rejection(manifest: Manifest, policy: FederationPolicy, spent_ppm: int = 0) -> Rejection | None:
    """Check the signed training claim against the policy; ``spent_ppm`` is the ε the
    participant's accepted updates of earlier rounds signed. None when it holds."""
    claim, rule = manifest.claim(), policy.training
    for field in ("algorithm", "mu_ppm", "compression"):
        if getattr(claim, field) != getattr(rule, field):
            return ("training_mismatch", f"signed {field} {getattr(claim, field)!r}, the policy requires "
                                         f"{getattr(rule, field)!r} (manifest v{manifest.v})")
    dp, budget = claim.dp, rule.dp
    if budget is None:
        if dp is not None:
            return ("training_mismatch", "signed a DP claim, the policy has no differential privacy")
        return None
    if dp is None:
        return ("training_mismatch", "the policy requires DP-SGD and the manifest claims none")
    if dp.max_grad_norm_ppm != budget.max_grad_norm_ppm or dp.delta_ppb != budget.delta_ppb:
        return ("training_mismatch", f"signed clipping norm {dp.max_grad_norm_ppm} ppm and δ {dp.delta_ppb} ppb, "
                                     f"the policy requires {budget.max_grad_norm_ppm} ppm and {budget.delta_ppb} ppb")
    from ledger.privacy import check_claim  # the accountant is loaded only when DP is on

    problem = check_claim(dp)
    if problem is not None:
        return ("bad_privacy_claim", problem)
    if dp.epsilon_ppm > budget.epsilon_round_ppm:
        return ("privacy_budget_exceeded", f"ε {dp.epsilon_ppm / PPM:g} this round, the budget per round is "
                                           f"{budget.epsilon_round_ppm / PPM:g}")
    if spent_ppm + dp.epsilon_ppm > budget.epsilon_total_ppm:
        return ("privacy_budget_exceeded", f"ε {spent_ppm / PPM:g} spent before plus {dp.epsilon_ppm / PPM:g} "
                                           f"exceeds the total budget {budget.epsilon_total_ppm / PPM:g}")
    return None


def dense_update(sent: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
                 policy: FederationPolicy) -> tuple[dict[str, np.ndarray] | None, Rejection | None]:
    """The update as tensors of the base model's names, shapes and dtypes, decoded from
    what was signed and sent under the policy's compression; or why it cannot be used."""
    try:
        arrays = decompress(sent, base, policy.training.compression)
    except CompressionError as exc:
        return None, ("bad_compression", str(exc))
    for name, tensor in arrays.items():
        if tensor.dtype.kind in "fc" and not np.all(np.isfinite(tensor)):
            return None, ("non_finite", f"tensor {name!r} has NaN or infinite values")
    if sorted(arrays) != sorted(base):
        return None, ("wrong_shape", "tensor names differ from the global model")
    for name, tensor in arrays.items():
        ref = base[name]
        if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
            return None, ("wrong_shape", f"tensor {name!r} is {tensor.dtype}{list(tensor.shape)}, "
                                         f"expected {ref.dtype}{list(ref.shape)}")
    return dict(arrays), None


def round_rejections(base: Mapping[str, np.ndarray], updates: Sequence[WeightedUpdate],
                     policy: FederationPolicy, previous: Mapping[str, np.ndarray] | None = None
                     ) -> dict[str, Rejection]:
    """The round-level rejections among ``updates`` (dense, weighted by their *signed*
    example counts): free riders and copies, then outliers among the rest, then the
    updates a multi-Krum policy discards. ``previous`` is G_{r-1} (None in round 1).
    The result does not depend on the order of ``updates``."""
    found: dict[str, Rejection] = dict(free_riders(base, updates, previous, policy.no_training_ppm,
                                                   policy.copy_cosine_ppm))
    rest = [u for u in updates if u.participant not in found]
    previous_change = global_change_norm(previous, base) if previous is not None else None
    for pid, detail in outliers(base, rest, policy, previous_change).items():
        found[pid] = ("outlier", detail)
    if policy.aggregation == "multi-krum":
        rest = [u for u in rest if u.participant not in found]
        for pid, detail in krum_discards(base, rest, policy.aggregation_params).items():
            found[pid] = ("robust_discarded", detail)
    return found


def privacy_spent(views: Iterable[RoundView], before_round: int) -> dict[str, int]:
    """Each participant's signed ε summed over its accepted updates of rounds before
    ``before_round`` (what the contract keeps as ``epsilon~F~P``)."""
    spent: dict[str, int] = {}
    for view in views:
        if view.round >= before_round:
            continue
        for entry in view.record.entries:
            if entry.status == "accepted" and entry.epsilon_ppm is not None:
                spent[entry.participant] = spent.get(entry.participant, 0) + entry.epsilon_ppm
    return spent
