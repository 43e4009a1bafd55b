"""The one place that knows where an organisation member's ledger credentials live.

* Explicit files (``--identity-cert`` / ``--identity-key``) always win.
* On the embedded ledger: ``<workdir>/pki/<msp>/<name>.crt`` (and ``.key`` beside it when
  present) — the demo and onboarding write them there.
* On Fabric: the organisation's client identity from the connection profile (the
  network's MSP issued it; Fabric accepts only identities of the channel's MSPs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fl.config import FederationConfig
from ledger.fabric.profile import ProfileError, load_profile
from ledger.identity import Credentials

__all__ = ["pki_paths", "member_credentials", "adopt_network_cas", "CredentialsError"]


class CredentialsError(ValueError):
    """No usable credentials: the message names the file or profile and what is missing."""


def pki_paths(workdir: Path, msp_id: str, name: str) -> tuple[Path, Path]:
    """``(key, certificate)`` of ``name`` in org ``msp_id`` under a work directory's PKI."""
    org = workdir / "pki" / msp_id
    return org / f"{name}.key", org / f"{name}.crt"


def adopt_network_cas(cfg: FederationConfig, msp_ids: set[str]) -> None:
    """On Fabric an organisation's CA is the one in the channel's MSP: copy each org's CA
    (from the connection profile) to ``<workdir>/pki/<msp>/ca`` so that participant
    certificates are issued by it there."""
    try:
        profile = load_profile(cfg.fabric_profile)  # type: ignore[arg-type]
        orgs = {msp: profile.org(msp) for msp in sorted(msp_ids)}
    except ProfileError as exc:
        raise CredentialsError(str(exc)) from None
    for msp, org in orgs.items():
        if org.ca.key is None:
            raise CredentialsError(f"{cfg.fabric_profile}: the CA key of {msp} is not in the profile")
        ca_dir = cfg.workdir / "pki" / msp / "ca"
        ca_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(org.ca.cert, ca_dir / "ca.crt")
        (ca_dir / "ca.key").touch(mode=0o600)
        (ca_dir / "ca.key").chmod(0o600)
        shutil.copyfile(org.ca.key, ca_dir / "ca.key")


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
    if cfg.ledger == "fabric":
        try:
            profile = load_profile(cfg.fabric_profile)  # type: ignore[arg-type]
            keys = profile.org(msp_id).identities.get("user")
        except ProfileError as exc:
            raise CredentialsError(str(exc)) from None
        if keys is None or keys.key is None:
            raise CredentialsError(
                f"{cfg.fabric_profile}: {msp_id} has no client identity with a key; pass --identity-cert "
                "and --identity-key"
            )
        return Credentials.from_files(msp_id, keys.cert, key or keys.key)
    key_path, cert_path = pki_paths(cfg.workdir, msp_id, name)
    return Credentials.from_files(msp_id, cert_path, key or (key_path if key_path.exists() else None))
