"""Validation utility of a model from its named tensors: numpy only, so an auditor needs no torch.

The data-based contribution scorers (:mod:`ledger.scoring`: ``loo``, ``shapley``) value a
set of updates by how well their FedAvg scores a *validation set* the coordinator fixed
for the federation. An auditor must recompute that value from what is stored, so the
forward pass of the federation's model (:mod:`fl.model`: ReLU hidden layers
``hidden.<i>.weight``/``hidden.<i>.bias``, then ``out.weight``/``out.bias``, one logit
per row) is repeated here in float64 from the tensors themselves.

The validation set is stored in the artifact store as the arrays
:meth:`ValidationSet.to_arrays` gives (``x`` float32 ``[n, features]``, ``y`` int8 ``[n]``
of 0/1); its digest (:meth:`ValidationSet.digest`, the ``FLU1`` digest of those arrays)
is the ``validation_digest`` of the federation's :class:`~ledger.records.ScorerSpec`.

Everything here is deterministic: fixed layer order, float64 accumulation, ranks with
ties averaged. The matrix products use BLAS, whose last bits may differ between
machines; the scores built on these values are compared with a ±1 ppm tolerance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ledger.formats import update_digest

__all__ = ["UtilityError", "ValidationSet", "logits", "METRICS", "utility", "auc", "accuracy", "neg_log_loss"]


class UtilityError(ValueError):
    """A validation set or a model's tensors cannot be used (named key, shape or value)."""


_HIDDEN = re.compile(r"hidden\.(0|[1-9][0-9]*)\.(weight|bias)")
# A logit beyond this is a probability within e^-100 of 0 or 1; clipping it keeps the
# log-loss of a wild model finite without changing any sensible model's loss.
_LOGIT_CLIP = 100.0


def _check_validation(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2:
        raise UtilityError(f"validation key 'x' must be 2-D [rows, features], got shape {x.shape}")
    if y.ndim != 1:
        raise UtilityError(f"validation key 'y' must be 1-D [rows], got shape {y.shape}")
    if len(x) != len(y):
        raise UtilityError(f"validation key 'x' has {len(x)} rows, key 'y' has {len(y)}")
    if len(y) == 0:
        raise UtilityError("validation set is empty")
    if x.shape[1] == 0:
        raise UtilityError("validation key 'x' has no features")
    if x.dtype != np.float32:
        raise UtilityError(f"validation key 'x' must be float32, got {x.dtype}")
    if y.dtype != np.int8:
        raise UtilityError(f"validation key 'y' must be int8, got {y.dtype}")
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        raise UtilityError(f"validation key 'y' row {int(bad[0])}: label {int(y[bad[0]])} is not 0 or 1")
    rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if rows.size:
        raise UtilityError(f"validation key 'x' row {int(rows[0])} holds a non-finite value")


@dataclass(frozen=True, eq=False)  # arrays have no truth value: identity equality
class ValidationSet:
    """The rows contribution scores are measured on: ``x`` float32 ``[n, f]``, ``y`` int8 0/1 ``[n]``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        _check_validation(np.asarray(self.x), np.asarray(self.y))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored in the artifact store: ``{"x": ..., "y": ...}``, C-contiguous."""
        return {"x": np.ascontiguousarray(self.x), "y": np.ascontiguousarray(self.y)}

    def digest(self) -> str:
        """The ``FLU1`` digest of :meth:`to_arrays`: the ``validation_digest`` of a ScorerSpec."""
        return update_digest(self.to_arrays())

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ValidationSet:
        """A validated set from ``{"x", "y"}``: ``x`` of real numbers becomes float32, ``y`` of
        0/1 values (integer, bool or float) int8. Raises :class:`UtilityError` naming the key."""
        for key in ("x", "y"):
            if key not in arrays:
                raise UtilityError(f"validation set has no key {key!r}")
        extra = sorted(set(arrays) - {"x", "y"})
        if extra:
            raise UtilityError(f"validation set has unexpected key {extra[0]!r}")
        x, y = np.asarray(arrays["x"]), np.asarray(arrays["y"])
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise UtilityError(f"validation key 'x' must hold real numbers, got dtype {x.dtype}")
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise UtilityError(f"validation key 'y' must hold 0/1 labels, got dtype {y.dtype}")
        if y.ndim == 1 and y.size:
            bad = np.flatnonzero((y != 0) & (y != 1))
            if bad.size:
                raise UtilityError(f"validation key 'y' row {int(bad[0])}: label {y[bad[0]].item()!r} is not 0 or 1")
        if x.ndim == 2 and np.issubdtype(x.dtype, np.floating):
            rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
            if rows.size:
                raise UtilityError(f"validation key 'x' row {int(rows[0])} holds a non-finite value")
        with np.errstate(over="ignore"):  # an overflow is reported just below, by row
            x32 = np.ascontiguousarray(x, dtype=np.float32)
        if x32.ndim == 2:
            rows = np.flatnonzero(~np.isfinite(x32).all(axis=1))
            if rows.size:  # finite in float64 but beyond float32's range
                raise UtilityError(f"validation key 'x' row {int(rows[0])} does not fit in float32")
        return cls(x=x32, y=np.ascontiguousarray(y, dtype=np.int8))


def _layers(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(prefix, weight, bias)`` per layer, hidden layers by integer index, then ``out``."""
    hidden: dict[int, set[str]] = {}
    for name in arrays:
        match = _HIDDEN.fullmatch(name)
        if match:
            hidden.setdefault(int(match.group(1)), set()).add(match.group(2))
        elif name not in ("out.weight", "out.bias"):
            raise UtilityError(f"model tensor {name!r} is not part of the federation's model")
    prefixes = [f"hidden.{i}" for i in sorted(hidden)] + ["out"]
    if sorted(hidden) != list(range(len(hidden))):
        raise UtilityError(f"model hidden layers {sorted(hidden)} are not numbered 0, 1, …")
    layers = []
    for prefix in prefixes:
        for part in ("weight", "bias"):
            if f"{prefix}.{part}" not in arrays:
                raise UtilityError(f"model has no tensor {prefix}.{part!s}")
        weight = np.asarray(arrays[f"{prefix}.weight"], dtype=np.float64)
        bias = np.asarray(arrays[f"{prefix}.bias"], dtype=np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise UtilityError(
                f"model tensors {prefix}.weight {weight.shape} and {prefix}.bias {bias.shape} "
                "are not a [out, in] weight and its [out] bias"
            )
        layers.append((prefix, weight, bias))
    if layers[-1][1].shape[0] != 1:
        raise UtilityError(f"model tensor out.weight has {layers[-1][1].shape[0]} outputs, expected 1")
    return layers


def logits(arrays: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The model's logit per row of ``x`` (float64 ``[n]``): ``fl.model``'s forward pass in numpy.

    Each layer computes ``h @ weight.T + bias`` (``weight`` is ``[out, in]`` like torch's
    Linear), ReLU after every hidden layer, none after ``out``.
    """
    h = np.asarray(x, dtype=np.float64)
    if h.ndim != 2:
        raise UtilityError(f"inputs must be 2-D [rows, features], got shape {h.shape}")
    layers = _layers(arrays)
    for prefix, weight, bias in layers:
        if weight.shape[1] != h.shape[1]:
            raise UtilityError(f"model tensor {prefix}.weight takes {weight.shape[1]} inputs, gets {h.shape[1]}")
        h = h @ weight.T + bias
        if prefix != "out":
            h = np.maximum(h, 0.0)
    return np.ascontiguousarray(h[:, 0])


def _sane(z: np.ndarray) -> np.ndarray:
    # NaN (a model whose tensors overflow) carries no ranking information: it counts as 0.
    return np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0)


def auc(z: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by the rank statistic (Mann–Whitney U), ties averaged; 0.5 with a single class."""
    z, y = _sane(z), np.asarray(y)
    positive = y == 1
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = np.argsort(z, kind="stable")
    ranked = z[order]
    # Start of each run of equal values; every member of a run gets the run's mean rank.
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks are 1-based: (start+1 + end) / 2
    ranks = np.empty(len(z), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def accuracy(z: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose logit is on the side of their label (threshold 0, like ``fl.model``)."""
    return float(np.mean((_sane(z) > 0) == (np.asarray(y) == 1)))


def neg_log_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Minus the mean binary cross-entropy of the logits (higher is better); logits clipped to ±100."""
    z = np.clip(_sane(z), -_LOGIT_CLIP, _LOGIT_CLIP)
    t = np.asarray(y, dtype=np.float64)
    # BCE with logits, stably: softplus(z) − t·z.
    loss = np.maximum(z, 0.0) - t * z + np.log1p(np.exp(-np.abs(z)))
    return -float(np.mean(loss))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc,
    "accuracy": accuracy,
    "neg_log_loss": neg_log_loss,
}
"""Utility functions of ``(logits, labels)``, higher is better, by the name a ScorerSpec uses."""


def utility(arrays: Mapping[str, np.ndarray], validation: ValidationSet, metric: str = "auc") -> float:
    """``metric`` of the model ``arrays`` on ``validation`` (a float, higher is better)."""
    if metric not in METRICS:
        raise UtilityError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    return METRICS[metric](logits(arrays, validation.x), validation.y)
