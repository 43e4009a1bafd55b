"""The one place that knows where an organisation member's ledger credentials live.

* Explicit files (``--identity-cert`` / ``--identity-key``) always win.
* Where the ledger's network issues identities (a Fabric channel's MSPs trust no other
  CA), the organisation's client identity from that network.
* Otherwise the workspace's ``pki/<msp>/<name>.crt`` (and ``.key`` beside it when
  present; :class:`fl.workspace.Workspace` owns the layout) — the demo and onboarding
  write them there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fl.config import FederationConfig
from ledger.errors import LedgerError
from ledger.factory import network_ca, network_member
from ledger.identity import Credentials

__all__ = ["member_credentials", "adopt_network_cas", "CredentialsError"]


class CredentialsError(ValueError):
    """No usable credentials: the message names the file or profile and what is missing."""


def adopt_network_cas(cfg: FederationConfig, msp_ids: set[str]) -> bool:
    """Where the ledger's network has its own org CAs, copy each one to
    the workspace's org CA directory so that participant certificates are issued by it there.
    Returns whether it did (False: any org CA will do)."""
    try:
        cas = {msp: network_ca(cfg.ledger_config, msp) for msp in sorted(msp_ids)}
    except LedgerError as exc:
        raise CredentialsError(str(exc)) from None
    for msp, files in cas.items():
        if files is None:
            return False
        cert, key = files
        ca_dir = cfg.workspace.ca_dir(msp)
        ca_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cert, ca_dir / "ca.crt")
        (ca_dir / "ca.key").touch(mode=0o600)
        (ca_dir / "ca.key").chmod(0o600)
        shutil.copyfile(key, ca_dir / "ca.key")
    return True


def member_credentials(
    cfg: FederationConfig,
    msp_id: str,
    name: str,
    *,
    cert: Path | None = None,
    key: Path | None = None,
) -> Credentials:
    """The credentials ``name`` of ``msp_id`` calls the federation's ledger with."""
    if cert is not None:
        default_key = cert.with_suffix(".key")
        return Credentials.from_files(msp_id, cert, key or (default_key if default_key.exists() else None))
    try:
        issued = network_member(cfg.ledger_config, msp_id)
    except LedgerError as exc:
        raise CredentialsError(str(exc)) from None
    if issued is not None:
        return Credentials.from_files(msp_id, issued[0], key or issued[1])
    key_path, cert_path = cfg.workspace.key(msp_id, name), cfg.workspace.cert(msp_id, name)
    return Credentials.from_files(msp_id, cert_path, key or (key_path if key_path.exists() else None))
