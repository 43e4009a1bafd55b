"""Open a :class:`~ledger.protocol.Ledger` from its configuration — the one place that knows
every backend. Callers choose a backend by configuration alone."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from ledger.errors import LedgerUnavailable
from ledger.identity import Credentials
from ledger.protocol import Ledger
from ledger.records import Identity

__all__ = ["BACKENDS", "LedgerConfig", "open_ledger", "as_credentials", "network_member", "network_ca"]

BACKENDS = ("embedded", "fabric")


class LedgerConfig(BaseModel):
    """Which ledger: the embedded SQLite file, or a Fabric channel named by a connection profile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["embedded", "fabric"] = "embedded"
    path: Path | None = None
    profile: Path | None = None
    channel: str | None = None
    chaincode: str | None = None

    @model_validator(mode="after")
    def _located(self) -> LedgerConfig:
        if self.backend == "embedded" and self.path is None:
            raise ValueError("the embedded ledger needs the path of its file")
        if self.backend == "fabric" and self.profile is None:
            raise ValueError(
                "the fabric ledger needs a connection profile (fabric_profile in the federation file, "
                "written by `fedledger network up`)"
            )
        return self

    def describe(self) -> str:
        """Where the ledger is, for messages and reports."""
        return f"embedded:{self.path}" if self.backend == "embedded" else f"fabric:{self.profile}"


def _profile(config: LedgerConfig):  # type: ignore[no-untyped-def]
    from ledger.fabric.profile import ProfileError, load_profile

    try:
        return load_profile(config.profile)  # type: ignore[arg-type]
    except ProfileError as exc:
        raise LedgerUnavailable(f"the Fabric ledger cannot be opened: {exc}") from exc


def network_member(config: LedgerConfig, msp_id: str) -> tuple[Path, Path] | None:
    """``(certificate, key)`` of the organisation's client identity where the ledger's
    network issues identities (Fabric: its MSPs trust no other CA); ``None`` where callers
    bring their own (embedded)."""
    if config.backend == "embedded":
        return None
    org = _org(config, msp_id)
    keys = org.identities.get("user")
    if keys is None or keys.key is None:
        raise LedgerUnavailable(f"{config.profile}: {msp_id} has no client identity with a key")
    return keys.cert, keys.key


def network_ca(config: LedgerConfig, msp_id: str) -> tuple[Path, Path] | None:
    """``(certificate, key)`` of the organisation's CA in the ledger's network, which must
    issue its participants' certificates; ``None`` where any org CA will do (embedded)."""
    if config.backend == "embedded":
        return None
    org = _org(config, msp_id)
    if org.ca.key is None:
        raise LedgerUnavailable(f"{config.profile}: the CA key of {msp_id} is not in the profile")
    return org.ca.cert, org.ca.key


def _org(config: LedgerConfig, msp_id: str):  # type: ignore[no-untyped-def]
    from ledger.fabric.profile import ProfileError

    try:
        return _profile(config).org(msp_id)
    except ProfileError as exc:
        raise LedgerUnavailable(str(exc)) from exc


def as_credentials(who: Credentials | Identity) -> Credentials:
    """``who`` as credentials (an identity alone has no signer)."""
    return who if isinstance(who, Credentials) else Credentials(who)


def open_ledger(config: LedgerConfig, who: Credentials | Identity) -> Ledger:
    """Open the configured ledger, called as ``who``.

    The embedded backend needs only the identity; the Fabric backend signs every call
    and refuses credentials without a signer.
    """
    credentials = as_credentials(who)
    if config.backend == "embedded":
        from ledger.embedded import EmbeddedLedger

        return EmbeddedLedger(Path(config.path), credentials.identity)  # type: ignore[arg-type]
    from ledger.fabric.backend import FabricLedger

    return FabricLedger(_profile(config), credentials, channel=config.channel, chaincode=config.chaincode)
