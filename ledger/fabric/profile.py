"""The connection profile: where a Fabric network's endpoints and identities are.

``fedledger network up`` writes one (``<data dir>/connection.json``) for the local
network, so nothing needs editing by hand; for a remote network an operator writes the
same file. Every path in it is absolute or relative to the profile file itself.

Shape::

    {
      "name": "fedledger",
      "channel": "fedledger",
      "chaincode": "fedaudit",
      "orderers": [{"name", "endpoint", "server_name", "tls_ca", "admin_endpoint"?}],
      "orgs": {
        "CoordinatorMSP": {
          "msp_id": "CoordinatorMSP",
          "ca": {"cert", "key"?},          # the org CA (key only where this side holds it)
          "tls_ca": "…",                   # the org's TLS CA certificate
          "peers": [{"name", "endpoint", "server_name", "tls_ca", "operations"?}],
          "identities": {"admin": {"cert", "key"}, "user": {"cert", "key"}},
          "tls_client": {"cert", "key"}?   # for mutual TLS to peers and orderers
        }, …
      }
    }
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ProfileError",
    "KeyPair",
    "PeerEndpoint",
    "OrdererEndpoint",
    "OrgProfile",
    "ConnectionProfile",
    "load_profile",
]


class ProfileError(ValueError):
    """A connection profile that cannot be read; the message names the file and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KeyPair(_Model):
    """A certificate and (where this side holds it) its private key, as file paths."""

    cert: Path
    key: Path | None = None


class PeerEndpoint(_Model):
    """One peer's Gateway endpoint and the TLS facts needed to dial it."""

    name: str
    endpoint: str = Field(description="host:port of the peer's gRPC listener (Gateway service)")
    server_name: str = Field(description="TLS server name to verify (a SAN of its TLS cert)")
    tls_ca: Path
    operations: str | None = Field(default=None, description="host:port of /healthz and /metrics")


class OrdererEndpoint(_Model):
    """One ordering node: its client endpoint and, for local networks, its admin endpoint."""

    name: str
    endpoint: str
    server_name: str
    tls_ca: Path
    admin_endpoint: str | None = None
    operations: str | None = None


class OrgProfile(_Model):
    """One organisation of the channel: MSP id, CA, peers (maybe none) and identities."""

    msp_id: str
    ca: KeyPair
    tls_ca: Path
    peers: list[PeerEndpoint] = []
    identities: dict[str, KeyPair] = {}
    tls_client: KeyPair | None = None


class ConnectionProfile(_Model):
    """A channel, its chaincode, and where every organisation's endpoints and identities are."""

    name: str
    channel: str
    chaincode: str = "fedaudit"
    orderers: list[OrdererEndpoint]
    orgs: dict[str, OrgProfile]

    def org(self, msp_id: str) -> OrgProfile:
        """The organisation ``msp_id``; a clear error when the profile has none."""
        try:
            return self.orgs[msp_id]
        except KeyError:
            raise ProfileError(
                f"the connection profile has no organisation {msp_id!r}; it has {sorted(self.orgs)}"
            ) from None

    def peers(self) -> list[tuple[str, PeerEndpoint]]:
        """Every peer of the channel with its org's MSP id, in profile order."""
        return [(msp, peer) for msp, org in self.orgs.items() for peer in org.peers]

    def resolved(self, base: Path) -> ConnectionProfile:
        """This profile with every relative path made absolute against ``base``."""
        data = self.model_dump(mode="python")
        return ConnectionProfile.model_validate(_resolve(data, base))

    def save(self, path: Path) -> Path:
        """Write the profile as indented JSON (atomically)."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


def _resolve(value: object, base: Path) -> object:
    if isinstance(value, Path):
        return value if value.is_absolute() else (base / value)
    if isinstance(value, dict):
        return {k: _resolve(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def load_profile(path: str | Path) -> ConnectionProfile:
    """Read a connection profile; relative paths are relative to the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such connection profile (is the network up?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: not a readable JSON connection profile: {exc}") from None
    try:
        profile = ConnectionProfile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"{path}: {where}: {first['msg']}") from None
    return profile.resolved(path.parent.resolve())
