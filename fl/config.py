"""Federation configuration: one TOML file, validated once at the edge, passed down.

Environment variables ``FEDLEDGER_<FIELD>`` override top-level scalar fields (for
example ``FEDLEDGER_ROUNDS=5``); nothing deeper in the code reads the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ledger.factory import LedgerConfig
from ledger.formats import ID_PATTERN

__all__ = [
    "ConfigError",
    "TrainingConfig",
    "ParticipantConfig",
    "FederationConfig",
    "load_config",
    "write_config",
    "msp_for",
    "default_participants",
]


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names the file."""


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


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainingConfig(_Model):
    """Local training settings sent to every participant."""

    local_epochs: int = Field(default=2, ge=1, le=100)
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 42


class ParticipantConfig(_Model):
    """One institution of the federation."""

    id: str
    msp_id: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9.-]{0,127}$")
    data: Path | None = None

    _valid_id = field_validator("id")(lambda value: _check_id(value, "participant id"))


class FederationConfig(_Model):
    """Everything the coordinator, the institutions and the demo agree on."""

    id: str = "demo-fed"
    rounds: int = Field(default=3, ge=1, le=10_000)
    workdir: Path = Path("work")
    ledger: Literal["embedded", "fabric"] = "embedded"
    # The Fabric network's connection profile (``fedledger network up`` writes one).
    fabric_profile: Path | None = None
    coordinator_msp: str = "CoordinatorMSP"
    auditor_msps: list[str] = Field(default_factory=lambda: ["AuditorMSP"])
    reward_budget: int = Field(default=1000, ge=0)
    data_seed: int = 7
    dirichlet_alpha: float = Field(default=0.5, gt=0)
    max_norm_ratio: float = Field(default=10.0, gt=1)
    # Prometheus /metrics of the coordinator on 127.0.0.1:<port> (off when unset).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Participants that must be connected before a round starts (default: all of them).
    min_participants: int | None = Field(default=None, ge=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    participants: list[ParticipantConfig] = Field(min_length=1)

    _valid_id = field_validator("id")(lambda value: _check_id(value, "federation id"))

    @model_validator(mode="after")
    def _fabric_needs_a_profile(self) -> FederationConfig:
        if self.ledger == "fabric" and self.fabric_profile is None:
            raise ValueError(
                "ledger = \"fabric\" needs fabric_profile = \"<path of connection.json>\" "
                "(`fedledger network up` prints it)"
            )
        return self

    @property
    def quorum(self) -> int:
        """How many participants a round waits for."""
        return min(self.min_participants or len(self.participants), len(self.participants))

    @field_validator("participants")
    @classmethod
    def _unique(cls, value: list[ParticipantConfig]) -> list[ParticipantConfig]:
        ids = [p.id for p in value]
        if len(set(ids)) != len(ids):
            raise ValueError("participant ids must be unique")
        return value

    # Derived locations inside the workdir -------------------------------------------
    @property
    def ledger_path(self) -> Path:
        """The embedded ledger's SQLite file."""
        return self.workdir / "ledger.db"

    @property
    def ledger_config(self) -> LedgerConfig:
        """Which ledger this federation records on (the one input of ``open_ledger``)."""
        return LedgerConfig(backend=self.ledger, path=self.ledger_path, profile=self.fabric_profile)

    @property
    def artifacts_path(self) -> Path:
        """The content-addressed artifact store."""
        return self.workdir / "artifacts"

    @property
    def rounds_log(self) -> Path:
        """One JSON line per completed round, written by the coordinator."""
        return self.workdir / "coordinator" / "rounds.jsonl"

    def participant_ids(self) -> list[str]:
        """Participant ids in configuration order (partition i ↔ participant i)."""
        return [p.id for p in self.participants]


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    scalar = {"id", "rounds", "workdir", "ledger", "fabric_profile", "reward_budget", "data_seed"}
    out: dict[str, Any] = {}
    for name in scalar:
        value = environ.get(f"FEDLEDGER_{name.upper()}")
        if value is not None:
            out[name] = value
    return out


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> FederationConfig:
    """Read and validate a federation TOML file; errors name the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    section = data.get("federation", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [federation] must be a table")
    merged = {**section, **_env_overrides(os.environ if environ is None else environ)}
    for key in ("workdir", "fabric_profile"):
        if merged.get(key) and not Path(str(merged[key])).expanduser().is_absolute():
            merged[key] = path.parent / str(merged[key])
    # Relative data paths, like the workdir, are relative to the federation file.
    for participant in merged.get("participants") or []:
        if isinstance(participant, dict) and "data" in participant and not Path(str(participant["data"])).is_absolute():
            participant["data"] = str(path.parent / str(participant["data"]))
    try:
        return FederationConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def write_config(config: FederationConfig, path: Path) -> None:
    """Write ``config`` as a federation TOML file (used by the demo and onboarding)."""
    lines = ["[federation]"]
    for key in ("id", "rounds", "ledger", "coordinator_msp", "reward_budget", "data_seed",
                "dirichlet_alpha", "max_norm_ratio", "min_participants", "metrics_port"):
        if getattr(config, key) is not None:
            lines.append(f"{key} = {_toml(getattr(config, key))}")
    lines.append(f"workdir = {_toml(str(config.workdir))}")
    if config.fabric_profile is not None:
        lines.append(f"fabric_profile = {_toml(str(config.fabric_profile))}")
    lines.append(f"auditor_msps = {_toml(config.auditor_msps)}")
    lines.append("")
    lines.append("[federation.training]")
    for key, value in config.training.model_dump().items():
        lines.append(f"{key} = {_toml(value)}")
    for participant in config.participants:
        lines.append("")
        lines.append("[[federation.participants]]")
        lines.append(f"id = {_toml(participant.id)}")
        lines.append(f"msp_id = {_toml(participant.msp_id)}")
        if participant.data is not None:
            lines.append(f"data = {_toml(str(participant.data))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
