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

Local training is FedAvg's plain SGD, optionally with FedProx's proximal term and/or
DP-SGD (Opacus, RDP accountant); :func:`train` returns the
:class:`~ledger.formats.TrainingClaim` of what it did, which the participant signs.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl.model_spec import ModelSpec
from ledger.formats import PrivacyClaim, TrainingClaim

__all__ = [
    "DPSettings",
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


@dataclass(frozen=True)
class DPSettings:
    """Local differential privacy for one round of training (DP-SGD through Opacus).

    ``epsilon`` and ``delta`` are the per-round target the noise multiplier is chosen for;
    ``max_grad_norm`` is the per-example gradient clipping bound.
    """

    epsilon: float
    delta: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"dp epsilon must be a positive finite number, got {self.epsilon}")
        if not 1e-9 <= self.delta < 1:  # the signed claim holds δ in billionths
            raise ValueError(f"dp delta must be in [1e-9, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"dp max_grad_norm must be a positive finite number, got {self.max_grad_norm}")


def _proximal_step(params: list[nn.Parameter], anchors: list[torch.Tensor] | None, lr: float, mu: float) -> None:
    """FedProx: one gradient step on μ/2‖w − w_global‖², i.e. ``w -= lr·μ·(w − w_global)``.

    Applied after the optimizer's step rather than added to the loss: Opacus replaces
    ``p.grad`` with the clipped, noised sum of per-example gradients, so a term in the
    loss would be clipped and noised with the data (and, being the same for every
    example, would count against the clipping bound). The proximal gradient depends
    only on the weights and the public global model, so applying it outside DP-SGD is
    post-processing and costs no privacy. It bypasses momentum, the same way in both
    paths, so the non-DP and DP runs optimise the same objective.
    """
    if anchors is None or mu == 0:
        return
    with torch.no_grad():
        for p, anchor in zip(params, anchors, strict=True):
            p.sub_(p - anchor, alpha=lr * mu)


def _anchors(model: nn.Module, global_arrays: Mapping[str, np.ndarray] | None, mu: float) -> list[torch.Tensor] | None:
    """The global model's tensors in ``model.parameters()`` order (FedProx's reference)."""
    if mu == 0:
        return None
    if global_arrays is None:
        raise ValueError("FedProx (mu > 0) needs global_arrays, the global model received")
    names = [name for name, _ in model.named_parameters()]
    missing = [name for name in names if name not in global_arrays]
    if missing:
        raise ValueError(f"global_arrays lacks key {missing[0]!r}{_and_more(missing)}")
    out = []
    for (name, p) in model.named_parameters():
        value = np.asarray(global_arrays[name], dtype=_DTYPE)
        if value.shape != tuple(p.shape):
            raise ValueError(f"global_arrays key {name!r}: shape {value.shape} != {tuple(p.shape)}")
        out.append(torch.from_numpy(np.array(value, order="C", copy=True)))
    return out


def _ppm(x: float) -> int:
    return int(round(x * 1_000_000))


def train(
    model: nn.Module,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    mu: float = 0.0,
    global_arrays: Mapping[str, np.ndarray] | None = None,
    dp: DPSettings | None = None,
) -> dict[str, Any]:
    """Train in place with BCE-with-logits and SGD (momentum 0.9); same seed → same weights.

    ``mu > 0`` adds FedProx's proximal term towards ``global_arrays`` (see
    :func:`_proximal_step`); ``mu = 0`` trains bit-identically to plain FedAvg. ``dp``
    trains with DP-SGD through Opacus (RDP accountant, Poisson sampling at
    ``batch_size / rows``, noise multiplier chosen for ``dp.epsilon`` at ``dp.delta``
    over ``epochs``), seeded from ``seed`` for both sampling and noise.

    Returns the mean training loss over the last epoch, the number of local examples
    (the FedAvg weight) and ``training``, the :class:`~ledger.formats.TrainingClaim` of
    what was done (``dp`` filled from what Opacus used and the ε its accountant
    computed, rounded up; the caller sets the algorithm and compression names).
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"FedProx mu must be a non-negative finite number, got {mu}")
    torch.set_num_threads(1)  # the host is shared; also keeps float reductions reproducible
    xt, yt = _tensors(X, y)
    anchors = _anchors(model, global_arrays, mu)
    if dp is not None:
        loss, privacy = _train_private(model, xt, yt, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                       mu=mu, anchors=anchors, dp=dp)
    else:
        loss, privacy = _train_plain(model, xt, yt, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                     mu=mu, anchors=anchors), None
    claim = TrainingClaim(algorithm="fedprox" if mu > 0 else "fedavg", mu_ppm=_ppm(mu), compression="none",
                          dp=privacy)
    return {"loss": loss, "num_examples": len(xt), "training": claim}


def _train_plain(model: nn.Module, xt: torch.Tensor, yt: torch.Tensor, *, epochs: int, lr: float,
                 batch_size: int, seed: int, mu: float, anchors: list[torch.Tensor] | None) -> float:
    n = len(xt)
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
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
            _proximal_step(params, anchors, lr, mu)
            epoch_loss += loss.item()
    return epoch_loss / n


def _train_private(model: nn.Module, xt: torch.Tensor, yt: torch.Tensor, *, epochs: int, lr: float,
                   batch_size: int, seed: int, mu: float, anchors: list[torch.Tensor] | None,
                   dp: DPSettings) -> tuple[float, PrivacyClaim]:
    """DP-SGD with Opacus; the model keeps its own parameter names (hooks, no wrapper)."""
    from opacus import PrivacyEngine  # heavy, and only needed when DP is on

    with warnings.catch_warnings():
        # Opacus warns about its non-secure RNG (seeded on purpose, see below), about the
        # noise search's largest RDP order and about full backward hooks on inputs that
        # need no gradient: none of them is news to the institution running this.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"opacus\.")
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        return _dp_sgd(PrivacyEngine, model, xt, yt, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                       mu=mu, anchors=anchors, dp=dp)


def _dp_sgd(engine_class: Any, model: nn.Module, xt: torch.Tensor, yt: torch.Tensor, *, epochs: int, lr: float,
            batch_size: int, seed: int, mu: float, anchors: list[torch.Tensor] | None,
            dp: DPSettings) -> tuple[float, PrivacyClaim]:

    params = list(model.parameters())
    loader = DataLoader(TensorDataset(xt, yt), batch_size=batch_size,
                        generator=torch.Generator().manual_seed(seed))
    # Not secure_mode: the sampling and the noise are seeded so that a run can be
    # reproduced; the accounting (what the claim states) is the same either way.
    engine = engine_class(accountant="rdp")
    hooks, optimizer, private_loader = engine.make_private_with_epsilon(
        module=model,
        optimizer=torch.optim.SGD(params, lr=lr, momentum=0.9),
        data_loader=loader,
        target_epsilon=dp.epsilon,
        target_delta=dp.delta,
        epochs=epochs,
        max_grad_norm=dp.max_grad_norm,
        noise_generator=torch.Generator().manual_seed(seed + 1),
        wrap_model=False,  # hooks on the model itself: state_dict names stay hidden.0.weight, …
    )
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    model.train()
    epoch_loss, seen = 0.0, 0
    try:
        for _ in range(epochs):
            epoch_loss, seen = 0.0, 0
            for xb, yb in private_loader:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                # Opacus scales per-example gradients of a mean loss by the batch it sees;
                # an empty Poisson batch still steps (the accountant counts it), with noise only.
                (loss / max(len(xb), 1)).backward()
                optimizer.step()
                _proximal_step(params, anchors, lr, mu)
                epoch_loss += loss.item()
                seen += len(xb)
    finally:
        hooks.cleanup()
        for p in params:
            p.grad = None
            for attr in ("grad_sample", "_forward_counter", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)
    [(noise_multiplier, sample_rate, steps)] = engine.accountant.history
    epsilon = engine.get_epsilon(dp.delta)
    claim = PrivacyClaim(
        noise_multiplier_ppm=_ppm(noise_multiplier),
        max_grad_norm_ppm=_ppm(dp.max_grad_norm),
        sample_rate_ppm=_ppm(sample_rate),
        steps=int(steps),
        delta_ppb=int(round(dp.delta * 1_000_000_000)),
        epsilon_ppm=math.ceil(epsilon * 1_000_000),
    )
    return epoch_loss / max(seen, 1), claim


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
