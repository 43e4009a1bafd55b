"""The coordinator's ServerApp: resume from the ledger, then run audited rounds.

The same code runs in the demo's simulation and in deployment. In deployment the
ServerApp reads the federation file named by the run config key ``config`` and the
coordinator identity from the federation's PKI directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl import data as fl_data
from fl import model as fl_model
from fl.config import ConfigError, FederationConfig, load_config, override
from fl.deploy.binding import NodeDirectory
from fl.metrics import CoordinatorMetrics, chain
from fl.records import to_record
from fl.resume import resume
from fl.runtime import configure_logging
from fl.strategy import AuditedFedAvg, RoundSummary, append_jsonl
from ledger.artifacts import ArtifactStore
from ledger.factory import open_ledger
from fl.identities import member_credentials
from ledger.identity import Credentials
from ledger.formats import PPM, sha256_hex, update_digest
from ledger.records import FederationPolicy, Identity, PrivacyPolicy, ScorerSpec, TrainingPolicy
from ledger.utility import ValidationSet

__all__ = [
    "CoordinatorRun",
    "coordinator_identity",
    "federation_policy",
    "identity_paths",
    "check_policy",
    "initial_model",
    "validation_digest",
    "validation_set",
    "store_validation_set",
    "scorer_spec",
    "training_policy",
    "training_settings",
    "make_server_app",
    "run_coordinator",
    "app",
]

log = structlog.get_logger("fedledger.coordinator")


def identity_paths(cfg: FederationConfig, name: str, msp_id: str) -> tuple[Path, Path]:
    """(key, certificate) files of ``name`` in org ``msp_id`` in the federation's workspace."""
    return cfg.workspace.key(msp_id, name), cfg.workspace.cert(msp_id, name)


def coordinator_identity(cfg: FederationConfig) -> Credentials:
    """The coordinator's ledger credentials (``CoordinatorMSP``)."""
    return member_credentials(cfg, cfg.coordinator_msp, "coordinator")


def initial_model(cfg: FederationConfig) -> dict[str, np.ndarray]:
    """The federation's deterministic initial global model: its declared model over its
    declared data (the input width is the schema's encoded feature count)."""
    return fl_model.initial_arrays(cfg.model, cfg.schema.n_features)


def validation_digest(cfg: FederationConfig) -> str | None:
    """SHA-256 of the coordinator's validation file, or None when it has none."""
    if cfg.validation is None:
        return None
    try:
        return sha256_hex(Path(cfg.validation).read_bytes())
    except OSError as exc:
        raise ConfigError(f"validation file {cfg.validation}: cannot be read ({exc.strerror or exc})") from exc


def validation_set(cfg: FederationConfig) -> ValidationSet | None:
    """The coordinator's validation file encoded by the schema, as the scorer reads it."""
    if cfg.validation is None:
        return None
    X, y = fl_data.load_csv(cfg.validation, cfg.schema)
    return ValidationSet(x=np.asarray(X, np.float32), y=np.asarray(y, np.int8))


def scorer_spec(cfg: FederationConfig) -> ScorerSpec:
    """The scorer the policy names: cosine needs nothing; loo and shapley name the encoded
    validation set by its digest (the coordinator stores it in the artifact store, where
    the auditor reads it), with the training seed for Shapley's permutations."""
    if cfg.scorer == "cosine":
        return ScorerSpec(name="cosine", params=dict(cfg.scorer_params))
    validation = validation_set(cfg)
    assert validation is not None  # the config refuses loo and shapley without a validation file
    return ScorerSpec(name=cfg.scorer, params=dict(cfg.scorer_params), seed=cfg.training.seed,
                      validation_digest=update_digest(validation.to_arrays()))


def training_policy(cfg: FederationConfig) -> TrainingPolicy:
    """What every participant must sign it did: FedProx μ, compression, DP-SGD budget."""
    training = cfg.training
    dp = None
    if training.dp_epsilon is not None:
        total = training.dp_epsilon_total if training.dp_epsilon_total is not None else training.dp_epsilon * cfg.rounds
        dp = PrivacyPolicy(epsilon_round_ppm=round(training.dp_epsilon * PPM), epsilon_total_ppm=round(total * PPM),
                           delta_ppb=max(1, round(training.dp_delta * 1e9)),
                           max_grad_norm_ppm=max(1, round(training.dp_max_grad_norm * PPM)))
    mu_ppm = round(training.fedprox_mu * PPM)
    return TrainingPolicy(algorithm="fedprox" if mu_ppm > 0 else "fedavg", mu_ppm=mu_ppm,
                          compression=training.compression, dp=dp)


def training_settings(policy: TrainingPolicy) -> dict[str, str | float]:
    """The train message's keys that tell an institution how to train, from the ledger's
    policy (so every participant trains as it must then sign)."""
    settings: dict[str, str | float] = {"algorithm": policy.algorithm, "fedprox-mu": policy.mu_ppm / PPM,
                                        "compression": policy.compression}
    if policy.dp is not None:
        settings.update({"dp-epsilon": policy.dp.epsilon_round_ppm / PPM, "dp-delta": policy.dp.delta_ppb / 1e9,
                         "dp-max-grad-norm": policy.dp.max_grad_norm_ppm / PPM})
    return settings


def federation_policy(cfg: FederationConfig) -> FederationPolicy:
    """The policy a federation is created with: auditors, budget, scorer, aggregation, the
    digests of the data schema, of the initial model and of the coordinator's validation
    file, the hold-out share of federated evaluation, the outlier test's ratios and the
    cap on any one participant's weight share (all on the ledger)."""
    return FederationPolicy(
        auditor_msps=list(cfg.auditor_msps),
        reward_budget=cfg.reward_budget,
        scorer=scorer_spec(cfg),
        aggregation=cfg.aggregation,
        aggregation_params=dict(cfg.aggregation_params),
        training=training_policy(cfg),
        no_training_ppm=None if cfg.no_training is False else round(cfg.no_training * PPM),
        copy_cosine_ppm=None if cfg.copy_cosine is False else max(1, round(cfg.copy_cosine * PPM)),
        data_schema_digest=cfg.schema.digest(),
        model=update_digest(initial_model(cfg)),
        validation_digest=validation_digest(cfg),
        eval_fraction_ppm=round(cfg.eval_fraction * PPM),
        max_weight_share_ppm=max(1, round(cfg.max_weight_share * PPM)),
        outlier_norm_ratio_ppm=max(PPM + 1, round(cfg.max_norm_ratio * PPM)),
        outlier_weight_ratio_ppm=max(PPM + 1, round(cfg.max_weight_ratio * PPM)),
    )


def check_policy(cfg: FederationConfig, policy: FederationPolicy) -> None:
    """Refuse to run when the federation file no longer declares what the ledger recorded.

    The schema, the initial model, the validation file, the scorer, the aggregation rule,
    the training every participant must sign and the free-riding thresholds are fixed
    when the federation is created; a coordinator whose file drifted would train on,
    evaluate against or score by something other than what auditors and institutions
    agreed to.
    """
    problems = []
    if policy.data_schema_digest != cfg.schema.digest():
        problems.append(f"[federation.data] has digest {cfg.schema.digest()[:16]}…, the ledger's policy "
                        f"{(policy.data_schema_digest or 'none')[:16]}…")
    if policy.model and policy.model != update_digest(initial_model(cfg)):
        problems.append("[federation.model] gives another initial model than the ledger's policy")
    if policy.validation_digest != validation_digest(cfg):
        problems.append(f"the validation file {cfg.validation} is not the one whose digest is in the policy")
    declared = federation_policy(cfg) if not problems else None
    for field, key in (("scorer", "scorer / scorer_params"), ("aggregation", "aggregation"),
                       ("aggregation_params", "aggregation_params"), ("training", "[federation.training]"),
                       ("no_training_ppm", "no_training"), ("copy_cosine_ppm", "copy_cosine")):
        if declared is not None and getattr(declared, field) != getattr(policy, field):
            problems.append(f"{key} of the file is not the ledger's policy ({field} "
                            f"{_short(getattr(policy, field))} on the ledger)")
    if problems:
        raise ConfigError(f"federation {cfg.id}: " + "; ".join(problems))


def store_validation_set(cfg: FederationConfig, policy: FederationPolicy, artifacts: ArtifactStore) -> None:
    """Put the scorer's validation set where the auditor will read it (content-addressed,
    idempotent); refuse to run if the file no longer encodes to the policy's digest."""
    digest = policy.scorer.validation_digest
    if digest is None:
        return
    validation = validation_set(cfg)
    stored = artifacts.put(validation.to_arrays()) if validation is not None else None
    if stored != digest:
        raise ConfigError(f"federation {cfg.id}: the validation file {cfg.validation} does not encode to the "
                          f"scorer's validation set {digest[:16]}… named in the ledger's policy")


def _short(value: object) -> str:
    text = value.model_dump_json() if hasattr(value, "model_dump_json") else repr(value)
    return text if len(text) <= 120 else text[:117] + "…"


def _evaluator(cfg: FederationConfig) -> Callable[[dict[str, np.ndarray]], dict[str, float]] | None:
    """The coordinator's own evaluation on its validation file (None without one)."""
    if cfg.validation is None:
        return None
    X, y = fl_data.load_csv(cfg.validation, cfg.schema)

    def evaluate(arrays: dict[str, np.ndarray]) -> dict[str, float]:
        model = fl_model.build_model(cfg.model, X.shape[1])
        fl_model.set_arrays(model, arrays)
        result = fl_model.evaluate(model, X, y)
        return {"accuracy": float(result["accuracy"]), "auc": float(result["auc"]),
                "loss": float(result["loss"])}

    return evaluate


@dataclass
class CoordinatorRun:
    """What a coordinator run did: rounds completed before it, and its round summaries."""

    resumed_from: int
    summaries: list[RoundSummary]
    initial_metrics: dict[str, float]


def run_coordinator(
    grid: Grid,
    cfg: FederationConfig,
    identity: Identity,
    *,
    node_directory: NodeDirectory | None = None,
    timeout: float = 600.0,
) -> CoordinatorRun:
    """Resume from the ledger and run the remaining rounds of ``cfg``."""
    ledger = open_ledger(cfg.ledger_config, identity)
    stop_metrics: Callable[[], None] = lambda: None  # noqa: E731
    try:
        artifacts = ArtifactStore(cfg.artifacts_path)
        policy = ledger.get_federation(cfg.id).policy
        check_policy(cfg, policy)
        store_validation_set(cfg, policy, artifacts)
        state = resume(ledger, cfg.id, artifacts, initial_model(cfg))
        evaluate = _evaluator(cfg)
        initial_metrics = evaluate(dict(state.arrays)) if evaluate is not None else {}
        remaining = cfg.rounds - state.completed
        on_round = append_jsonl(cfg.rounds_log)
        if cfg.metrics_port is not None:
            metrics = CoordinatorMetrics()
            stop_metrics = metrics.serve(cfg.metrics_port)
            metrics.last_round.set(state.completed)
            on_round = chain(on_round, metrics.observe)
        log.info("coordinator_resumed", completed=state.completed, remaining=remaining,
                 model=state.model)
        if remaining <= 0:
            return CoordinatorRun(state.completed, [], initial_metrics)
        strategy = AuditedFedAvg(
            ledger=ledger,
            artifacts=artifacts,
            federation=cfg.id,
            train_settings={
                "local-epochs": cfg.training.local_epochs,
                "learning-rate": cfg.training.learning_rate,
                "batch-size": cfg.training.batch_size,
                "seed": cfg.training.seed,
                "data-schema": cfg.schema.digest(),
                **training_settings(policy.training),
            },
            round_offset=state.completed,
            expected_nodes=cfg.quorum,
            node_directory=node_directory,
            evaluate=evaluate,
            on_round=on_round,
            max_norm_ratio=cfg.max_norm_ratio,
            scorer=policy.scorer,
            aggregation=policy.aggregation,
            max_num_examples=policy.max_num_examples,
            # Receipts are signed with the coordinator's ledger key, where this process holds it.
            receipts=identity if isinstance(identity, Credentials) and identity.signer is not None else None,
        )
        strategy.start(grid, to_record(state.arrays), num_rounds=remaining, timeout=timeout)
        return CoordinatorRun(state.completed, strategy.summaries, initial_metrics)
    finally:
        stop_metrics()
        ledger.close()


def make_server_app(
    cfg: FederationConfig,
    identity: Identity,
    on_done: Callable[[CoordinatorRun], None] | None = None,
) -> ServerApp:
    """A ServerApp bound to ``cfg`` (used by the demo's simulation)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_coordinator(grid, cfg, identity)
        if on_done is not None:
            on_done(result)

    return server


app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    """Deployment: ``run_config['config']`` names the federation TOML file and
    ``num-server-rounds`` the total rounds (the coordinator sets both)."""
    if not context.run_config.get("config"):
        raise ValueError("run config lacks 'config' (the federation TOML file)")
    configure_logging(json_logs=True)
    cfg = load_config(Path(str(context.run_config["config"])))
    if "num-server-rounds" in context.run_config:
        cfg = override(cfg, "run config num-server-rounds", rounds=int(context.run_config["num-server-rounds"]))
    # SuperNode authentication is on in deployment: bind every reply to the participant
    # whose ledger certificate holds the authenticated node's key.
    run_coordinator(grid, cfg, coordinator_identity(cfg), node_directory=NodeDirectory())
