"""Federated evaluation on the institution's side: its hold-out, its metrics, in millionths.

Every institution keeps a share of its own rows out of training (:func:`holdout_split`,
deterministic and stratified, from the ``eval-fraction`` and ``seed`` every round's
config carries, so the institution, the coordinator and an auditor derive the same
split), and after each round evaluates the newly committed global model on it. The
metrics it signs are integers in millionths (:func:`metrics_ppm`): signed and ledger
data hold no floats. The reply carries them as a MetricRecord (``num-examples``,
``accuracy-ppm``, ``log-loss-ppm`` and, when the hold-out has both classes, ``auc-ppm``);
the signing mod (:mod:`fl.signing`) turns that into a signed
:class:`~ledger.formats.EvaluationManifest`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ledger.formats import MAX_LOG_LOSS_PPM, PPM

__all__ = [
    "DEFAULT_EVAL_FRACTION",
    "EVAL_FRACTION_KEY",
    "holdout_split",
    "eval_fraction",
    "metrics_ppm",
    "metric_record_values",
]

DEFAULT_EVAL_FRACTION = 0.2
EVAL_FRACTION_KEY = "eval-fraction"


def eval_fraction(config: Mapping[str, Any]) -> float:
    """The hold-out fraction a round's config names (the default when it names none)."""
    value = float(config.get(EVAL_FRACTION_KEY, DEFAULT_EVAL_FRACTION))
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ValueError(f"{EVAL_FRACTION_KEY} {value!r} must be in [0, 1)")
    return value


def holdout_split(
    X: npt.ArrayLike, y: npt.ArrayLike, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_hold, y_hold)``: a deterministic, stratified hold-out.

    Each class gives ``round(fraction × its rows)`` rows to the hold-out, at least one
    when it has two or more rows and never all of them, so both classes are in both
    parts whenever each has two rows, and a tiny file still trains (a class with a single
    row stays in training). Rows keep their original order within each part.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows, y has {len(y)}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-out fraction {fraction!r} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), dtype=bool)
    if fraction > 0:
        for label in np.unique(y):
            rows = np.flatnonzero(y == label)
            take = min(max(int(round(fraction * len(rows))), 1), len(rows) - 1)
            if take > 0:
                held[rng.permutation(rows)[:take]] = True
    return X[~held], y[~held], X[held], y[held]


def _ppm(value: float, hi: int) -> int:
    if not math.isfinite(value):
        return hi
    return min(max(int(round(value * PPM)), 0), hi)


def metrics_ppm(result: Mapping[str, Any], y_hold: npt.ArrayLike) -> dict[str, int | None]:
    """``fl.model.evaluate``'s floats as the signed integers in millionths.

    AUC is ``None`` when the hold-out has a single class (the model reports a stand-in
    0.5 then, which must not be signed as a measurement); a log-loss beyond the format's
    bound is clamped to it.
    """
    both = len(np.unique(np.asarray(y_hold))) == 2
    return {
        "accuracy_ppm": _ppm(float(result["accuracy"]), PPM),
        "auc_ppm": _ppm(float(result["auc"]), PPM) if both else None,
        "log_loss_ppm": _ppm(float(result["loss"]), MAX_LOG_LOSS_PPM),
    }


def metric_record_values(num_examples: int, metrics: Mapping[str, int | None]) -> dict[str, int]:
    """The evaluate reply's MetricRecord content (a missing AUC is left out)."""
    values = {"num-examples": int(num_examples)}
    for name, value in metrics.items():
        if value is not None:
            values[name.replace("_", "-")] = int(value)
    return values
