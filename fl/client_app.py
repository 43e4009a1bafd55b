"""The institution's ClientApp: train locally, then sign what leaves (DESIGN §3).

The signing mod is the outermost mod, so the signature covers exactly what leaves the
institution (the demo alone adds adversary mods around and inside it). Who the
participant is, where its key and data are, comes from a *resolver* of the Flower
context: in deployment from the SuperNode's ``--node-config`` (``participant``, ``key``,
``data``), in the demo's simulation from the partition id.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl import data as fl_data
from fl import model as fl_model
from fl.adversary import make_adversary_mods
from fl.records import to_arrays, to_record
from fl.runtime import configure_logging
from fl.signing import SignerSpec, make_signing_mod
from ledger.pki import load_private_key

__all__ = ["ClientRuntime", "make_client_app", "node_config_resolver", "app"]


@dataclass(frozen=True)
class ClientRuntime:
    """Everything one institution's ClientApp needs."""

    participant: str
    key: ec.EllipticCurvePrivateKey
    load_data: Callable[[], tuple[np.ndarray, np.ndarray]]
    adversary: str | None = None


Resolver = Callable[[Context], ClientRuntime]


def make_client_app(resolve: Resolver, *, audited: bool = True, adversarial: bool = False) -> ClientApp:
    """A ClientApp whose participant, key and data come from ``resolve(context)``.

    The signing mod is the outermost mod. ``adversarial=True`` (demo and tests only)
    wraps the adversary mods around and inside it so that ``resolve(ctx).adversary``
    can misbehave; ``audited=False`` leaves out signing: plain Flower, used only by the
    benchmark that measures what the audit layer costs.
    """
    signing = make_signing_mod(lambda ctx: SignerSpec(resolve(ctx).participant, resolve(ctx).key))
    mods = [signing] if audited else []
    if audited and adversarial:
        outer, inner = make_adversary_mods(lambda ctx: resolve(ctx).adversary)
        mods = [outer, signing, inner]
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        runtime = resolve(context)
        config = msg.content["config"]
        X, y = runtime.load_data()
        arrays = to_arrays(msg.content["arrays"])
        model = fl_model.CreditMLP(X.shape[1])
        fl_model.set_arrays(model, arrays)
        result = fl_model.train(
            model,
            X,
            y,
            epochs=int(config["local-epochs"]),
            lr=float(config["learning-rate"]),
            batch_size=int(config["batch-size"]),
            seed=int(config["seed"]) + int(config["round"]),
        )
        metrics = MetricRecord(
            {"num-examples": int(result["num_examples"]), "train-loss": float(result["loss"])}
        )
        return Message(
            RecordDict({"arrays": to_record(fl_model.get_arrays(model)), "metrics": metrics}),
            reply_to=msg,
        )

    return app


@functools.lru_cache(maxsize=64)
def _key(path: str) -> ec.EllipticCurvePrivateKey:
    return load_private_key(Path(path))


@functools.lru_cache(maxsize=16)
def _csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    return fl_data.load_csv(Path(path), fl_data.credit_schema())


@functools.lru_cache(maxsize=1)
def _service_logging() -> None:
    # Deployment only (the demo keeps its console): JSON lines, like every service.
    configure_logging(json_logs=True)


def node_config_resolver(context: Context) -> ClientRuntime:
    """Deployment: the SuperNode's ``--node-config`` names participant, key and data."""
    _service_logging()
    cfg = context.node_config
    try:
        participant, key, data = str(cfg["participant"]), str(cfg["key"]), str(cfg["data"])
    except KeyError as exc:
        raise ValueError(f"node config lacks {exc.args[0]!r} (participant, key, data)") from exc
    return ClientRuntime(
        participant=participant,
        key=_key(key),
        load_data=functools.partial(_csv, data),
    )


app = make_client_app(node_config_resolver)
