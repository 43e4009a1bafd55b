"""The federation's model, built from its declared spec; deterministic training; array exchange.

``[federation.model]`` declares a :class:`ModelSpec`: ``kind = "mlp"`` (ReLU hidden layers
of the ``hidden`` sizes) or ``"logistic"`` (no hidden layer), and the ``seed`` of the
initial weights. Either gives one logit per row (positive class = the schema's
``positive_label``).

Arrays cross the Flower/ledger boundary as ``dict[str, np.ndarray]`` keyed by the
``state_dict`` names, float32 and C-contiguous, so the update digest of DESIGN §3 is well
defined. The names are part of the wire format and stable: ``hidden.<i>.weight`` and
``hidden.<i>.bias`` for hidden layer ``i`` (from 0, input side first), then
``out.weight`` and ``out.bias``; a logistic model has only the ``out`` pair.
"""

from __future__ import annotations

import random
from collections.abc import Mapping


import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fl.model_spec import ModelSpec

__all__ = [
    "ModelSpec",
    "build_model",
    "evaluate",
    "get_arrays",
    "initial_arrays",
    "set_arrays",
    "set_seed",
    "train",
]

_DTYPE = np.dtype(np.float32)
class _LogitNet(nn.Module):
    """Feed-forward net: ReLU hidden layers (maybe none), then one logit per row."""

    def __init__(self, n_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        widths = (n_features, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``[batch]``."""
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x).squeeze(-1)


def build_model(spec: ModelSpec, n_features: int) -> nn.Module:
    """A fresh model of ``spec`` for ``n_features`` inputs (weights from torch's global RNG)."""
    if n_features < 1:
        raise ValueError(f"n_features must be positive, got {n_features}")
    return _LogitNet(n_features, spec.hidden)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (for code that does not take a generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _tensors(X: npt.ArrayLike, y: npt.ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.tensor(np.asarray(X, dtype=np.float32))
    yt = torch.tensor(np.asarray(y, dtype=np.float32))
    if xt.ndim != 2 or yt.ndim != 1 or len(xt) != len(yt):
        raise ValueError(
            f"need X [n, features] and y [n], got {tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    if len(xt) == 0:
        raise ValueError("no examples")
    return xt, yt


def train(
    model: nn.Module,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> dict[str, float | int]:
    """Train in place with BCE-with-logits and SGD (momentum 0.9); same seed → same weights.

    Returns the mean training loss over the last epoch and the number of local examples
    (the FedAvg weight).
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    torch.set_num_threads(1)  # the host is shared; also keeps float reductions reproducible
    xt, yt = _tensors(X, y)
    n = len(xt)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    model.train()
    epoch_loss = 0.0
    for _ in range(epochs):
        epoch_loss = 0.0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            (loss / len(idx)).backward()
            optimizer.step()
            epoch_loss += loss.item()
    return {"loss": epoch_loss / n, "num_examples": n}


def evaluate(model: nn.Module, X: npt.ArrayLike, y: npt.ArrayLike) -> dict[str, float | int]:
    """Mean BCE loss, accuracy at threshold 0.5, and ROC AUC on ``(X, y)``.

    AUC is undefined when ``y`` holds one class; 0.5 (chance) is reported then so that the
    metrics stay finite and can go into canonical JSON (which forbids NaN).
    """
    torch.set_num_threads(1)
    xt, yt = _tensors(X, y)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(xt)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, yt).item()
    model.train(was_training)
    scores = logits.numpy()
    labels = yt.numpy()
    accuracy = float(((scores > 0) == (labels > 0.5)).mean())
    auc = float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else 0.5
    return {"loss": loss, "accuracy": accuracy, "auc": auc, "num_examples": len(labels)}


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Copy the model's state into float32 C-contiguous numpy arrays keyed by state_dict name."""
    return {
        name: np.array(t.detach().cpu().numpy(), dtype=_DTYPE, order="C", copy=True)
        for name, t in model.state_dict().items()
    }


def _and_more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def set_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load arrays into the model, strictly: every key, shape and dtype (float32) must match.

    Checks everything before touching the model, so a refused update leaves it unchanged.
    Raises ``ValueError`` naming the offending key.
    """
    state = model.state_dict()
    missing = [k for k in state if k not in arrays]
    extra = [k for k in arrays if k not in state]
    if missing:
        raise ValueError(f"missing key {missing[0]!r}{_and_more(missing)}")
    if extra:
        raise ValueError(f"unexpected key {extra[0]!r}{_and_more(extra)}")
    for name, current in state.items():
        value = arrays[name]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"key {name!r}: expected a numpy array, got {type(value).__name__}")
        if value.dtype != _DTYPE:
            raise ValueError(f"key {name!r}: dtype {value.dtype} != float32")
        if value.shape != tuple(current.shape):
            raise ValueError(f"key {name!r}: shape {value.shape} != {tuple(current.shape)}")
    copies = {k: torch.from_numpy(np.array(arrays[k], order="C", copy=True)) for k in state}
    model.load_state_dict(copies, strict=True)


def initial_arrays(spec: ModelSpec, n_features: int) -> dict[str, np.ndarray]:
    """Deterministic initial global model: same spec and width → bit-identical arrays.

    Uses a forked torch RNG seeded with ``spec.seed``, so the caller's global RNG state is
    left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(spec, n_features)
    return get_arrays(model)
