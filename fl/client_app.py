"""The institution's ClientApp: train locally, then sign what leaves (DESIGN §3).

The signing mod is the outermost mod, so the signature covers exactly what leaves the
institution (the demo alone adds adversary mods around and inside it). Who the
participant is, how it signs and where its data is comes from a *resolver* of the
Flower context: in deployment from the SuperNode's ``--node-config`` (``participant``,
``data``, ``config`` — the institution's own copy of the federation file, whose
``[federation.data]`` and ``[federation.model]`` say how to read the CSV and what model
to build — and ``signer``, the institution signer's Unix socket — never a key: this code
is shipped by the coordinator, and the key stays with the institution's signer), in the
demo's in-process simulation from the partition id (with a key object: one process,
no institution boundary to keep).

A message may carry the coordinator's signed receipt for this node's last reply
(:data:`ledger.receipts.RECEIPT_RECORD`); it is handed to the institution's signer,
which checks and journals it. Without a signer socket (the simulation) it is left alone.

Every message from the coordinator names the digest of the data schema it trains under
(``data-schema``); an institution whose own declared schema differs refuses it, so no
model is trained or evaluated on data read under another schema.

A train message's config also says how to train (:func:`training_settings`):
``algorithm`` (``fedavg`` or ``fedprox`` with ``fedprox-mu``), ``compression`` of the
reply (``none`` or ``int8``, :mod:`ledger.compression`) and, when the policy turns on
differential privacy, ``dp-epsilon``, ``dp-delta`` and ``dp-max-grad-norm``. The reply
carries the arrays as compressed, and a ``"training"`` record with the claim of how they
were trained, which the signing mod signs into a version 2 manifest.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl import data as fl_data
from fl import model as fl_model
from fl import evaluation as fl_eval
from fl.adversary import make_adversary_mods
from fl.config import FederationConfig, load_config
from fl.model_spec import ModelSpec
from fl.records import to_arrays, to_record
from fl.runtime import configure_logging
from fl.signer.client import SignerClient, SignerError
from fl.signing import (TRAINING_KEY, ManifestSigner, NoSigner, SignerSpec, key_signer, make_signing_mod,
                        socket_signer)
from ledger.compression import SCHEMES, compress
from ledger.formats import canonical_json
from ledger.pki import load_private_key
from ledger.receipts import RECEIPT_RECORD

__all__ = ["ALGORITHMS", "ClientRuntime", "SchemaMismatch", "TrainingSettings", "hand_over_receipt",
           "make_client_app", "node_config_resolver", "training_settings", "app"]

log = structlog.get_logger("fedledger.client")
ALGORITHMS = ("fedavg", "fedprox")


@dataclass(frozen=True)
class ClientRuntime:
    """Everything one institution's ClientApp needs.

    Exactly one way to sign: ``signer`` (the path of the institution signer's socket,
    deployment) or ``key`` (a key object, the demo's simulation and tests).
    """

    participant: str
    key: ec.EllipticCurvePrivateKey | None
    load_data: Callable[[], tuple[np.ndarray, np.ndarray]]
    adversary: str | None = None
    signer: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    # Digest of the schema load_data reads under; messages naming another are refused.
    schema_digest: str | None = None

    def check_schema(self, config: Any) -> None:
        """Refuse a message whose ``data-schema`` is not this institution's declared schema."""
        wanted = config.get("data-schema") if hasattr(config, "get") else None
        if self.schema_digest is not None and wanted is not None and str(wanted) != self.schema_digest:
            raise SchemaMismatch(
                f"{self.participant}: the coordinator's data schema {str(wanted)[:16]}… is not the one "
                f"this institution declared ({self.schema_digest[:16]}…); nothing was trained"
            )

    def manifest_signer(self) -> ManifestSigner:
        """How this participant signs; :class:`~fl.signing.NoSigner` when it cannot."""
        if self.signer is not None:
            return socket_signer(self.signer)
        if self.key is not None:
            return key_signer(self.key)
        raise NoSigner(f"{self.participant}: the node config names no signer socket (`signer`)")


def hand_over_receipt(runtime: ClientRuntime, msg: Message) -> None:
    """Give the coordinator's receipt in ``msg`` to the institution's signer (which verifies
    and journals it). A refused or undeliverable receipt does not stop the work: the
    refusal is in the journal, and a missing receipt is what ``audit mine`` reports."""
    if runtime.signer is None or RECEIPT_RECORD not in msg.content.config_records:
        return
    try:
        SignerClient(runtime.signer).record_receipt(dict(msg.content.config_records[RECEIPT_RECORD]))
    except SignerError as exc:
        log.warning("receipt_not_recorded", participant=runtime.participant, error=str(exc)[:500])


@dataclass(frozen=True)
class TrainingSettings:
    """How the coordinator asks this round to be trained (the train message's config)."""

    algorithm: str = "fedavg"
    mu: float = 0.0
    compression: str = "none"
    dp: fl_model.DPSettings | None = None


_DP_KEYS = ("dp-epsilon", "dp-delta", "dp-max-grad-norm")


def _number(config: Any, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"train config {key!r} must be a finite number, got {value!r}")
    return float(value)


def training_settings(config: Any) -> TrainingSettings:
    """Read ``algorithm``, ``fedprox-mu``, ``compression`` and the ``dp-*`` keys (absent:
    FedAvg, uncompressed, no DP). Raises ``ValueError`` naming the key for an unknown
    algorithm or compression, a μ that does not fit the algorithm, or a partial DP config.
    """
    algorithm = str(config.get("algorithm", "fedavg"))
    if algorithm not in ALGORITHMS:
        raise ValueError(f"train config 'algorithm' is {algorithm!r}; this institution runs {', '.join(ALGORITHMS)}")
    compression = str(config.get("compression", "none"))
    if compression not in SCHEMES:
        raise ValueError(f"train config 'compression' is {compression!r}; known: {', '.join(SCHEMES)}")
    mu = _number(config, "fedprox-mu") if "fedprox-mu" in config else 0.0
    if mu < 0:
        raise ValueError(f"train config 'fedprox-mu' must not be negative, got {mu}")
    if algorithm == "fedavg" and mu != 0:
        raise ValueError(f"train config 'fedprox-mu' is {mu} but 'algorithm' is 'fedavg' (μ is FedProx's)")
    present = [key for key in _DP_KEYS if key in config]
    dp = None
    if present:
        missing = [key for key in _DP_KEYS if key not in config]
        if missing:
            raise ValueError(f"train config has {present[0]!r} but lacks {missing[0]!r}: DP needs {', '.join(_DP_KEYS)}")
        eps, delta, norm = (_number(config, key) for key in _DP_KEYS)
        try:
            dp = fl_model.DPSettings(epsilon=eps, delta=delta, max_grad_norm=norm)
        except ValueError as exc:
            raise ValueError(f"train config dp-*: {exc}") from None
    return TrainingSettings(algorithm=algorithm, mu=mu, compression=compression, dp=dp)


class SchemaMismatch(ValueError):
    """The coordinator asked for work under a data schema the institution did not declare."""


Resolver = Callable[[Context], ClientRuntime]


def make_client_app(resolve: Resolver, *, audited: bool = True, adversarial: bool = False) -> ClientApp:
    """A ClientApp whose participant, key and data come from ``resolve(context)``.

    The signing mod is the outermost mod. ``adversarial=True`` (demo and tests only)
    wraps the adversary mods around and inside it so that ``resolve(ctx).adversary``
    can misbehave; ``audited=False`` leaves out signing: plain Flower, used only by the
    benchmark that measures what the audit layer costs.
    """
    def signer_of(ctx: Context) -> SignerSpec:
        runtime = resolve(ctx)
        return SignerSpec(runtime.participant, runtime.manifest_signer())

    signing = make_signing_mod(signer_of)
    mods = [signing] if audited else []
    if audited and adversarial:
        outer, inner = make_adversary_mods(lambda ctx: resolve(ctx).adversary)
        mods = [outer, signing, inner]
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        runtime = resolve(context)
        hand_over_receipt(runtime, msg)
        config = msg.content["config"]
        runtime.check_schema(config)
        # Only the training part: the hold-out is kept for federated evaluation.
        X, y, _, _ = fl_eval.holdout_split(*runtime.load_data(), fl_eval.eval_fraction(config), int(config["seed"]))
        arrays = to_arrays(msg.content["arrays"])
        settings = training_settings(config)
        model = fl_model.build_model(runtime.model, X.shape[1])
        fl_model.set_arrays(model, arrays)
        result = fl_model.train(
            model,
            X,
            y,
            epochs=int(config["local-epochs"]),
            lr=float(config["learning-rate"]),
            batch_size=int(config["batch-size"]),
            seed=int(config["seed"]) + int(config["round"]),
            mu=settings.mu,
            global_arrays=arrays,
            dp=settings.dp,
        )
        claim = replace(result["training"], algorithm=settings.algorithm, compression=settings.compression)
        sent = compress(fl_model.get_arrays(model), arrays, settings.compression)
        metrics = MetricRecord(
            {"num-examples": int(result["num_examples"]), "train-loss": float(result["loss"])}
        )
        return Message(
            RecordDict({
                "arrays": to_record(sent),
                "metrics": metrics,
                TRAINING_KEY: ConfigRecord({"claim": canonical_json(claim.to_dict()).decode("utf-8")}),
            }),
            reply_to=msg,
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the committed global model on this institution's hold-out (signed by the mod)."""
        runtime = resolve(context)
        hand_over_receipt(runtime, msg)
        config = msg.content["config"]
        runtime.check_schema(config)
        _, _, X, y = fl_eval.holdout_split(*runtime.load_data(), fl_eval.eval_fraction(config), int(config["seed"]))
        if len(y) == 0:
            raise ValueError("the local data has no hold-out rows to evaluate on")
        model = fl_model.build_model(runtime.model, X.shape[1])
        fl_model.set_arrays(model, to_arrays(msg.content["arrays"]))
        result = fl_model.evaluate(model, X, y)
        metrics = fl_eval.metrics_ppm(result, y)
        return Message(
            RecordDict({"metrics": MetricRecord(fl_eval.metric_record_values(len(y), metrics))}),
            reply_to=msg,
        )

    return app


@functools.lru_cache(maxsize=64)
def _key(path: str) -> ec.EllipticCurvePrivateKey:
    return load_private_key(Path(path))


@functools.lru_cache(maxsize=16)
def _federation(path: str) -> FederationConfig:
    return load_config(Path(path))


@functools.lru_cache(maxsize=16)
def _csv(path: str, config: str) -> tuple[np.ndarray, np.ndarray]:
    return fl_data.load_csv(Path(path), _federation(config).schema)


@functools.lru_cache(maxsize=1)
def _service_logging() -> None:
    # Deployment only (the demo keeps its console): JSON lines, like every service.
    configure_logging(json_logs=True)


def node_config_resolver(context: Context) -> ClientRuntime:
    """Deployment: the SuperNode's ``--node-config`` names participant, data, the
    institution's federation file and its signer.

    A ``key`` entry is never read: the ClientApp signs only through the signer socket.
    Without ``signer`` the node cannot sign, and a train reply fails (fail closed).
    """
    _service_logging()
    cfg = context.node_config
    try:
        participant, data, config = str(cfg["participant"]), str(cfg["data"]), str(cfg["config"])
    except KeyError as exc:
        raise ValueError(f"node config lacks {exc.args[0]!r} (participant, data, config, signer)") from exc
    federation = _federation(config)
    signer = cfg.get("signer")
    return ClientRuntime(
        participant=participant,
        key=None,
        load_data=functools.partial(_csv, data, config),
        signer=str(signer) if signer else None,
        model=federation.model,
        schema_digest=federation.schema.digest(),
    )


app = make_client_app(node_config_resolver)
