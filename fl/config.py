"""Federation configuration: one TOML file, one model, validated once at the edge.

The file has two tables, both read by :func:`load_config` into one frozen
:class:`FederationConfig`::

    [federation]                 the federation: id, rounds, ledger, participants …
    workdir = "work"             the workspace (relative paths: to this file's folder)
    ledger = "embedded"          or "fabric" with fabric_profile = "<connection.json>"

    validation = "valid.csv"     optional: the coordinator's own validation file
    eval_fraction = 0.2          share of each institution's rows kept as its hold-out

    [federation.data]            the data schema every institution's CSV must fit:
    target = "deny"              target column, positive_label, negative_label,
    [[federation.data.features]] each feature's type, missing-value rule and constants
    [federation.model]           kind = "mlp" (hidden = [32]) or "logistic"; seed
    scorer = "cosine"            contribution scorer: cosine, loo or shapley (the last two
    scorer_params = {}           use the validation file), with its integer parameters
    aggregation = "fedavg"       or median, trimmed-mean, multi-krum; aggregation_params
    no_training = 1e-6           free riding: a change below this share of the model's norm
    copy_cosine = 0.9999         and a cosine to another change or last step at least this
    [federation.training]        local training settings sent to every participant, and
                                 what each must sign it did: fedprox_mu, compression
                                 ("none" or "int8"), dp_epsilon (per round; DP-SGD on when
                                 set), dp_epsilon_total, dp_delta, dp_max_grad_norm
    [[federation.participants]]  id, msp_id, data (the institution's own CSV, on its side)

    [deployment]                 optional: where the coordinator's SuperLink listens
    host = "127.0.0.1"           bind host
    port = 9092                  Fleet, Control and Runtime APIs share this one port
    address = ""                 what institutions dial; default host:port
    tls_hosts = ["127.0.0.1", "localhost"]   SANs of the SuperLink's TLS certificate
    sync_interval = 2.0          seconds between ledger → SuperLink key synchronisations
    app = ""                     the Flower app directory; default: this project

Nothing reads the environment: a command-line flag may override a value at the edge
through :func:`override`, which validates the result again.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fl.data import DataSchema
from fl.model_spec import ModelSpec
from fl.workspace import Workspace
from ledger.factory import LedgerConfig
from ledger.formats import ID_PATTERN

__all__ = [
    "ConfigError",
    "TrainingConfig",
    "ParticipantConfig",
    "DeploymentConfig",
    "FederationConfig",
    "load_config",
    "override",
    "write_config",
    "data_toml",
    "msp_for",
    "default_participants",
    "project_root",
]

# The tables of a federation file, and the model field each one fills.
TABLES = ("federation", "deployment")


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names the file, the key
    path and the problem (every problem, separated by ``; ``)."""


def project_root() -> Path:
    """The directory holding this project's ``pyproject.toml`` (the Flower app)."""
    return Path(__file__).resolve().parents[1]


def msp_for(participant: str) -> str:
    """The demo MSP id of a participant id: ``bank-a`` → ``BankAMSP``."""
    return "".join(part.capitalize() for part in participant.split("-")) + "MSP"


def default_participants(count: int) -> list[str]:
    """``bank-a``, ``bank-b``, … (then ``bank-aa``… past 26)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = []
    for i in range(count):
        suffix = letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26]
        names.append(f"bank-{suffix}")
    return names


def _check_id(value: str, what: str) -> str:
    if ID_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} must match [a-z0-9][a-z0-9-]{{0,63}}")
    return value


# An MSP id names a folder of the workspace (``pki/<msp>/``): letters first, no slashes.
MSP_PATTERN = r"^[A-Za-z][A-Za-z0-9.-]{0,127}$"
MspId = Annotated[str, Field(pattern=MSP_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainingConfig(_Model):
    """Local training settings sent to every participant, and the training every
    participant must sign it did (the policy's ``training``)."""

    local_epochs: int = Field(default=2, ge=1, le=100)
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1)
    seed: int = Field(default=42, ge=0)
    # FedProx's proximal coefficient μ (0: plain FedAvg).
    fedprox_mu: float = Field(default=0.0, ge=0, le=1_000)
    # How updates travel: as they are, or int8-quantised per tensor.
    compression: Literal["none", "int8"] = "none"
    # DP-SGD (Opacus) when dp_epsilon is set: the ε each round may spend, the total over
    # a participant's rounds (default: dp_epsilon × rounds), δ and the clipping norm.
    dp_epsilon: float | None = Field(default=None, gt=0, le=1_000)
    dp_epsilon_total: float | None = Field(default=None, gt=0, le=1_000_000)
    dp_delta: float = Field(default=1e-5, ge=1e-9, le=0.5)
    dp_max_grad_norm: float = Field(default=1.0, gt=0, le=1_000)

    @model_validator(mode="after")
    def _budget_fits(self) -> TrainingConfig:
        if self.dp_epsilon is not None and self.dp_epsilon_total is not None and self.dp_epsilon_total < self.dp_epsilon:
            raise ValueError(f"dp_epsilon_total {self.dp_epsilon_total} is below dp_epsilon {self.dp_epsilon}: "
                             "no round could be accepted")
        return self


class ParticipantConfig(_Model):
    """One institution of the federation."""

    id: str
    msp_id: MspId
    data: Path | None = None

    _valid_id = field_validator("id")(lambda value: _check_id(value, "participant id"))


class DeploymentConfig(_Model):
    """``[deployment]``: where the coordinator listens and how the services behave."""

    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    address: str = ""
    tls_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost"], min_length=1)
    sync_interval: float = Field(default=2.0, gt=0, le=3600)
    app: Path | None = None

    @property
    def superlink_address(self) -> str:
        """``host:port`` that SuperNodes and the Flower CLI connect to."""
        return self.address or f"{self.host}:{self.port}"

    @property
    def app_dir(self) -> Path:
        """The Flower app (``pyproject.toml`` with ``[tool.flwr.app]``) to run."""
        return self.app if self.app is not None else project_root()


class FederationConfig(_Model):
    """Everything the coordinator, the institutions and the demo agree on."""

    id: str = "demo-fed"
    rounds: int = Field(default=3, ge=1, le=10_000)
    workdir: Path = Path("work")
    ledger: Literal["embedded", "fabric"] = "embedded"
    # The Fabric network's connection profile (``fedledger network up`` writes one).
    fabric_profile: Path | None = None
    coordinator_msp: MspId = "CoordinatorMSP"
    auditor_msps: list[MspId] = Field(default_factory=lambda: ["AuditorMSP"], max_length=64)
    reward_budget: int = Field(default=1000, ge=0)
    data_seed: int = 7
    dirichlet_alpha: float = Field(default=0.5, gt=0)
    # The outlier test and the weight cap, written into the policy when the federation
    # is created (the coordinator then reads them from the ledger): an update is an
    # outlier when its change exceeds max_norm_ratio × the others' median change, or it
    # claims more than max_weight_ratio × the others' median examples; no participant
    # carries more than max_weight_share of a round's FedAvg weight.
    max_norm_ratio: float = Field(default=10.0, gt=1, le=1000)
    # 100, not 10: with label-skewed data an honest institution may well hold 20× the
    # median of the others' rows; the declared dataset size and the weight cap bound a liar.
    max_weight_ratio: float = Field(default=100.0, gt=1, le=1_000_000)
    max_weight_share: float = Field(default=0.8, gt=0, le=1)
    # Contribution scorer (ledger.scoring): cosine needs no data; loo and shapley measure
    # the federation's metric on the coordinator's validation file.
    scorer: Literal["cosine", "loo", "shapley"] = "cosine"
    scorer_params: dict[str, int | str] = Field(default_factory=dict)
    # Aggregation rule (ledger.aggregate) and its integer parameters.
    aggregation: Literal["fedavg", "median", "trimmed-mean", "multi-krum"] = "fedavg"
    aggregation_params: dict[str, int] = Field(default_factory=dict)
    # Free riding (ledger.copies): an update whose change is at most no_training × the
    # model's norm did not train; one whose change has a cosine of at least copy_cosine
    # with another participant's change, or with last round's global change, is a copy.
    # ``false`` turns a check off.
    no_training: Annotated[float, Field(ge=0, le=1)] | Literal[False] = 1e-6
    copy_cosine: Annotated[float, Field(gt=0, le=1)] | Literal[False] = 0.9999
    # Prometheus /metrics of the coordinator on 127.0.0.1:<port> (off when unset).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Participants that must be connected before a round starts (default: all of them).
    min_participants: int | None = Field(default=None, ge=1)
    # The data every institution trains on, declared once: its digest is on the ledger.
    data: DataSchema | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    # The coordinator's own validation CSV (its digest goes into the policy); optional.
    validation: Path | None = None
    # Share of each institution's rows it keeps as a hold-out for federated evaluation.
    eval_fraction: float = Field(default=0.2, ge=0, le=0.9)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    participants: list[ParticipantConfig] = Field(min_length=1)
    # The file's [deployment] table (not part of [federation]).
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)

    _valid_id = field_validator("id")(lambda value: _check_id(value, "federation id"))

    @model_validator(mode="after")
    def _fabric_needs_a_profile(self) -> FederationConfig:
        if self.ledger == "fabric" and self.fabric_profile is None:
            raise ValueError(
                "ledger = \"fabric\" needs fabric_profile = \"<path of connection.json>\" "
                "(`fedledger network up` prints it)"
            )
        return self

    @model_validator(mode="after")
    def _rules_fit(self) -> FederationConfig:
        from ledger.aggregate import AggregationError, check_params
        from ledger.records import ScorerSpec
        from ledger.scoring import ScorerError, scorer_params

        try:
            check_params(self.aggregation, self.aggregation_params)
        except AggregationError as exc:
            raise ValueError(f"aggregation_params: {exc}") from None
        try:
            scorer_params(ScorerSpec(name=self.scorer, params=dict(self.scorer_params), seed=self.training.seed))
        except ScorerError as exc:
            raise ValueError(f"scorer_params: {exc}") from None
        if self.scorer in ("loo", "shapley") and self.validation is None:
            raise ValueError(f"scorer = {self.scorer!r} measures contributions on the coordinator's validation "
                             "file: set validation = \"<CSV>\"")
        return self

    @field_validator("auditor_msps")
    @classmethod
    def _unique_auditors(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("auditor MSP ids must be unique")
        return value

    @field_validator("participants")
    @classmethod
    def _unique(cls, value: list[ParticipantConfig]) -> list[ParticipantConfig]:
        ids = [p.id for p in value]
        if len(set(ids)) != len(ids):
            raise ValueError("participant ids must be unique")
        return value

    @property
    def schema(self) -> DataSchema:
        """The declared data schema; ConfigError when the file declares none."""
        if self.data is None:
            raise ConfigError(
                f"federation {self.id} declares no data schema: add a [federation.data] table "
                "(target, positive_label, negative_label and [[federation.data.features]])"
            )
        return self.data

    @property
    def quorum(self) -> int:
        """How many participants a round waits for."""
        return min(self.min_participants or len(self.participants), len(self.participants))

    @property
    def workspace(self) -> Workspace:
        """Where every file of this federation lives (the one owner of the layout)."""
        return Workspace(self.workdir)

    @property
    def auditor_msp(self) -> str:
        """The organisation the CLI audits as (the first auditor)."""
        return self.auditor_msps[0] if self.auditor_msps else "AuditorMSP"

    @property
    def ledger_path(self) -> Path:
        """The embedded ledger's SQLite file."""
        return self.workspace.ledger_db

    @property
    def ledger_config(self) -> LedgerConfig:
        """Which ledger this federation records on (the one input of ``open_ledger``)."""
        return LedgerConfig(backend=self.ledger, path=self.ledger_path, profile=self.fabric_profile)

    @property
    def artifacts_path(self) -> Path:
        """The content-addressed artifact store."""
        return self.workspace.artifacts

    @property
    def rounds_log(self) -> Path:
        """One JSON line per completed round, written by the coordinator."""
        return self.workspace.rounds_log

    def participant_ids(self) -> list[str]:
        """Participant ids in configuration order (partition i ↔ participant i)."""
        return [p.id for p in self.participants]

    def participant(self, participant: str) -> ParticipantConfig:
        """The entry of ``participant``; ConfigError when the file does not name it."""
        for entry in self.participants:
            if entry.id == participant:
                return entry
        raise ConfigError(f"participant {participant!r} is not in federation {self.id} "
                          f"(participants: {', '.join(self.participant_ids())})")


def _describe(errors: list[Any], prefix_of: Any) -> str:
    parts = []
    for error in errors:
        loc = [str(p) for p in error["loc"]]
        where = ".".join(prefix_of(loc)) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _file_key_path(loc: list[str]) -> list[str]:
    """A model location as the key path in the file (``deployment`` is its own table)."""
    if loc and loc[0] == "deployment":
        return loc
    return ["federation", *loc]


def _relative_to(base: Path, value: Any) -> Any:
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return str(base / value)
    if isinstance(value, str) and value:
        return str(Path(value).expanduser())
    return value


def load_config(path: Path) -> FederationConfig:
    """Read and validate a federation TOML file once.

    Relative paths (``workdir``, ``fabric_profile``, participants' ``data``,
    ``[deployment] app``) are relative to the file's folder. Every problem is reported
    in one :class:`ConfigError`: ``<file>: <key path>: <problem>``.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found (give --config or set FEDLEDGER_CONFIG)") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a federation file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise ConfigError(f"{path}: unknown table{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'[{name}]' for name in unknown)} (known: [federation], [deployment])")
    federation = data.get("federation")
    if not isinstance(federation, dict):
        raise ConfigError(f"{path}: federation: missing [federation] table" if federation is None
                          else f"{path}: federation: must be a table")
    deployment = data.get("deployment", {})
    if not isinstance(deployment, dict):
        raise ConfigError(f"{path}: deployment: must be a table")
    base = path.parent.absolute()
    merged: dict[str, Any] = dict(federation)
    for key in ("workdir", "fabric_profile", "validation"):
        merged[key] = _relative_to(base, merged.get(key))
        if merged[key] is None:
            del merged[key]
    participants = merged.get("participants")
    if isinstance(participants, list):
        merged["participants"] = [
            {**p, "data": _relative_to(base, p["data"])} if isinstance(p, dict) and "data" in p else p
            for p in participants
        ]
    if deployment:
        deployment = dict(deployment)
        if "app" in deployment:
            deployment["app"] = _relative_to(base, deployment["app"]) or None
        merged["deployment"] = deployment
    try:
        return FederationConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc.errors(), _file_key_path)}") from None


def override(config: FederationConfig, source: Path | str = "command line", **changes: Any) -> FederationConfig:
    """``config`` with the non-``None`` ``changes`` applied and validated again.

    ``deployment`` takes a dict of ``[deployment]`` keys; anything else a top-level
    ``[federation]`` key. Errors name ``source`` (a flag: ``--port``) and the key path.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    deployment = {k: v for k, v in (changes.pop("deployment", None) or {}).items() if v is not None}
    if not changes and not deployment:
        return config
    data = config.model_dump()
    data.update(changes)
    data["deployment"].update(deployment)
    try:
        return FederationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors(), _file_key_path)}") from None


def write_config(config: FederationConfig, path: Path) -> None:
    """Write ``config`` as a federation TOML file (the demo, onboarding, Kubernetes).

    ``[deployment]`` is written only when it differs from the defaults.
    """
    lines = ["[federation]"]
    for key in ("id", "rounds", "ledger", "coordinator_msp", "reward_budget", "data_seed",
                "dirichlet_alpha", "max_norm_ratio", "max_weight_ratio", "max_weight_share",
                "min_participants", "metrics_port", "scorer", "aggregation"):
        if getattr(config, key) is not None:
            lines.append(f"{key} = {_toml(getattr(config, key))}")
    lines.append(f"workdir = {_toml(str(config.workdir))}")
    if config.fabric_profile is not None:
        lines.append(f"fabric_profile = {_toml(str(config.fabric_profile))}")
    if config.validation is not None:
        lines.append(f"validation = {_toml(str(config.validation))}")
    lines.append(f"eval_fraction = {_toml(config.eval_fraction)}")
    lines.append(f"auditor_msps = {_toml(config.auditor_msps)}")
    for key in ("scorer_params", "aggregation_params"):
        if getattr(config, key):
            lines.append(f"{key} = {_toml(getattr(config, key))}")
    for key in ("no_training", "copy_cosine"):
        lines.append(f"{key} = {_toml(getattr(config, key))}")
    if config.data is not None:
        lines.extend(_table("federation.data", config.data.model_dump(mode="json", exclude_none=True)))
    lines.extend(_table("federation.model", config.model.model_dump(mode="json")))
    lines.append("")
    lines.append("[federation.training]")
    for key, value in config.training.model_dump().items():
        if value is not None:
            lines.append(f"{key} = {_toml(value)}")
    for participant in config.participants:
        lines.append("")
        lines.append("[[federation.participants]]")
        lines.append(f"id = {_toml(participant.id)}")
        lines.append(f"msp_id = {_toml(participant.msp_id)}")
        if participant.data is not None:
            lines.append(f"data = {_toml(str(participant.data))}")
    if config.deployment != DeploymentConfig():
        lines.append("")
        lines.append("[deployment]")
        for key, value in config.deployment.model_dump(exclude_none=True).items():
            lines.append(f"{key} = {_toml(str(value) if isinstance(value, Path) else value)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def data_toml(schema: DataSchema) -> str:
    """``schema`` as the ``[federation.data]`` table of a federation file."""
    return "\n".join(_table("federation.data", schema.model_dump(mode="json", exclude_none=True))).lstrip() + "\n"


def _table(name: str, table: dict[str, Any]) -> list[str]:
    """``[name]`` with its scalar and list keys, then its arrays of tables ``[[name.key]]``."""
    def is_tables(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    lines = ["", f"[{name}]"]
    lines += [f"{key} = {_toml(value)}" for key, value in table.items() if not is_tables(value)]
    for key, value in table.items():
        if is_tables(value):
            for item in value:
                lines += ["", f"[[{name}.{key}]]"]
                lines += [f"{k} = {_toml(v)}" for k, v in item.items()]
    return lines


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
