"""Deployment settings: the optional ``[deployment]`` table of the federation file.

It sits beside ``[federation]`` in the same TOML file, is validated once (pydantic) at
the edge, and is overridden by ``FEDLEDGER_SUPERLINK_*`` variables, then by CLI flags::

    [deployment]
    host = "127.0.0.1"        # where the coordinator's SuperLink listens
    port = 9092               # Fleet, Control and Runtime APIs share this one port
    address = ""              # what institutions dial; default host:port
    tls_hosts = ["127.0.0.1", "localhost"]   # SANs of the SuperLink's TLS certificate
    sync_interval = 2.0       # seconds between ledger → SuperLink key synchronisations
    app = ""                  # the Flower app directory; default: this project
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fl.config import ConfigError

__all__ = ["DeploymentConfig", "load_deployment", "project_root"]


def project_root() -> Path:
    """The directory holding this project's ``pyproject.toml`` (the Flower app)."""
    return Path(__file__).resolve().parents[2]


class DeploymentConfig(BaseModel):
    """Where the coordinator listens and how the services behave."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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


_ENV = {
    "host": "FEDLEDGER_SUPERLINK_HOST",
    "port": "FEDLEDGER_SUPERLINK_PORT",
    "address": "FEDLEDGER_SUPERLINK_ADDRESS",
}


def load_deployment(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> DeploymentConfig:
    """Read ``[deployment]`` from ``path`` (absent file or table: defaults), apply the
    environment, then the non-``None`` ``overrides`` (CLI flags)."""
    data: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read: {exc}") from exc
        section = raw.get("deployment", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [deployment] must be a table")
        data.update(section)
        if data.get("app") and not Path(str(data["app"])).is_absolute():
            data["app"] = Path(path).parent / str(data["app"])
    env = os.environ if environ is None else environ
    for field, name in _ENV.items():
        if env.get(name):
            data[field] = env[name]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path or '[deployment]'}: deployment.{where}: {first['msg']}") from exc
