"""The privacy accountant the coordinator and the auditor rerun on a signed DP claim.

A participant that trains with DP-SGD signs a :class:`~ledger.formats.PrivacyClaim`: its
noise multiplier, sampling rate, number of steps, δ and the ε its own accountant
computed. :func:`check_claim` recomputes ε from the claim's own integer parameters with
the same RDP accountant Opacus uses (Poisson-subsampled Gaussian mechanism, Opacus's
default RDP orders) and refuses a claim whose ε does not follow from them.

The RDP arithmetic is Opacus's own: ``opacus/accountants/analysis/rdp.py`` is loaded by
file path (it needs only NumPy and SciPy) instead of importing the ``opacus`` package,
whose ``__init__`` imports torch — the auditor must not need torch to check a claim.
The result is therefore bit-for-bit what ``opacus.accountants.RDPAccountant`` reports.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from pathlib import Path
from types import ModuleType

from ledger.formats import PrivacyClaim

__all__ = ["ORDERS", "PrivacyAccountantUnavailable", "check_claim", "epsilon", "epsilon_ppm"]

ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
"""The RDP orders of ``opacus.accountants.RDPAccountant.DEFAULT_ALPHAS``."""

# A claimed ε may differ from the recomputed one by rounding (the claim's parameters are
# integers in millionths) and nothing more: this many ppm, or 1 % of the recomputed ε.
_TOLERANCE_PPM = 1_000
_TOLERANCE_FRACTION = 0.01
# Largest ε a claim can state (``PrivacyClaim`` bounds epsilon_ppm at 10**15).
_MAX_EPSILON = 1e9


class PrivacyAccountantUnavailable(RuntimeError):
    """Opacus's RDP analysis module cannot be found in this environment."""


@functools.lru_cache(maxsize=1)
def _rdp() -> ModuleType:
    spec = importlib.util.find_spec("opacus")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "accountants" / "analysis" / "rdp.py"
        if path.is_file():
            module_spec = importlib.util.spec_from_file_location("fedledger_opacus_rdp", path)
            if module_spec is None or module_spec.loader is None:
                break
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
    raise PrivacyAccountantUnavailable(
        "opacus is not installed (its accountants/analysis/rdp.py is needed to check privacy claims)"
    )


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps at ``delta`` (Opacus's RDP accountant).

    ``inf`` when there is no noise. Raises ``ValueError`` for parameters out of range.
    """
    if not (0 < sample_rate <= 1) or not (0 < delta < 1) or steps < 1 or not noise_multiplier >= 0:
        raise ValueError(f"need 0 < sample_rate <= 1, 0 < delta < 1, steps >= 1, noise >= 0; got "
                         f"{sample_rate}, {delta}, {steps}, {noise_multiplier}")
    if noise_multiplier == 0:
        return math.inf
    rdp = _rdp()
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound is still valid, just not the tightest.
        warnings.simplefilter("ignore", UserWarning)
        orders = list(ORDERS)
        curve = rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
        eps, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=delta)
    return float(eps)


def epsilon_ppm(claim: PrivacyClaim) -> int | None:
    """ε recomputed from the claim's own integer parameters, in millionths rounded up;
    ``None`` when no claim could state it (no noise: unbounded; or above 10⁹)."""
    return _epsilon_ppm(claim.noise_multiplier_ppm, claim.sample_rate_ppm, claim.steps, claim.delta_ppb)


# The coordinator and the auditor check every reply of every round, mostly with the same
# parameters; the slowest parameters (huge noise at a sampling rate near ½) take seconds.
@functools.lru_cache(maxsize=1024)
def _epsilon_ppm(noise_ppm: int, sample_rate_ppm: int, steps: int, delta_ppb: int) -> int | None:
    if noise_ppm == 0:
        return None
    eps = epsilon(noise_ppm / 1e6, sample_rate_ppm / 1e6, steps, delta_ppb / 1e9)
    return math.ceil(eps * 1e6) if math.isfinite(eps) and eps <= _MAX_EPSILON else None


def check_claim(claim: PrivacyClaim) -> str | None:
    """``None`` when ``claim`` is consistent; otherwise the detail of a ``bad_privacy_claim``.

    Refused: a negative ε; δ or the sampling rate out of range; no noise (an unbounded ε)
    with a finite ε; a claimed ε further than max(1 000 ppm, 1 %) from the ε
    recomputed from the claim's own parameters.
    """
    if claim.epsilon_ppm < 0:
        return f"epsilon_ppm {claim.epsilon_ppm} is negative"
    if not 1 <= claim.delta_ppb <= 999_999_999:
        return f"delta_ppb {claim.delta_ppb} is not in 1..999999999"
    if not 1 <= claim.sample_rate_ppm <= 1_000_000:
        return f"sample_rate_ppm {claim.sample_rate_ppm} is not in 1..1000000"
    if claim.steps < 1:
        return f"steps {claim.steps} is not positive"
    if claim.noise_multiplier_ppm == 0:
        return f"noise_multiplier_ppm is 0, so epsilon is unbounded, not {claim.epsilon_ppm} ppm"
    recomputed = epsilon_ppm(claim)
    if recomputed is None:
        return (f"noise_multiplier_ppm {claim.noise_multiplier_ppm} bounds epsilon by more than "
                f"{_MAX_EPSILON:.0e}, not {claim.epsilon_ppm} ppm")
    if abs(claim.epsilon_ppm - recomputed) > max(_TOLERANCE_PPM, _TOLERANCE_FRACTION * recomputed):
        return (f"epsilon_ppm {claim.epsilon_ppm} does not follow from the claim's parameters "
                f"(recomputed {recomputed})")
    return None
