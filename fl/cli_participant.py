"""``fedledger participant …``: keys, the demo org CA, and registration on the ledger.

Thin commands: parse → :mod:`fl.onboarding` → print (a line for people, ``--json`` for
machines). A failure prints ``error: <one line>`` on stderr and exits 1.

Ledger commands find the ledger, federation and default identities in the federation
file (``--config``, default ``./federation.toml``, env ``FEDLEDGER_CONFIG``); ``--ledger``
and ``--federation`` override it, ``--msp-id`` and ``--identity-cert`` name the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from pydantic import ValidationError

from fl import onboarding
from fl.config import ConfigError, FederationConfig, load_config
from fl.identities import member_credentials
from ledger.factory import LedgerConfig
from ledger.identity import Credentials
from ledger.errors import LedgerError
from ledger.formats import FormatError

__all__ = ["participant_app"]

participant_app = typer.Typer(
    help="Onboard institutions: keys, demo org CA, register / admit / revoke / list.",
    no_args_is_help=True,
)
ca_app = typer.Typer(help="A small org CA for demos and tests (use your own CA in production).",
                     no_args_is_help=True)
participant_app.add_typer(ca_app, name="ca")

_ERRORS = (ValueError, LedgerError, OSError)  # KeyFileError, CertificateError, ConfigError… are ValueErrors


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Every expected failure becomes ``error: …`` and exit 1 (no traceback)."""
    try:
        yield
    except _ERRORS as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(text)


def _emit(as_json: bool, payload: dict[str, Any], human: Callable[[], str]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        typer.echo(human())


# Shared options ----------------------------------------------------------------------
ConfigOpt = typer.Option(Path("federation.toml"), "--config", envvar="FEDLEDGER_CONFIG",
                         help="Federation file (ledger, federation id, identity locations).")
LedgerOpt = typer.Option(None, "--ledger", help="Ledger location (embedded: the SQLite file).")
BackendOpt = typer.Option(None, "--backend", help="Ledger backend: embedded or fabric.")
FederationOpt = typer.Option(None, "--federation", help="Federation id.")
MspOpt = typer.Option(None, "--msp-id", envvar="FEDLEDGER_MSP_ID", help="The caller's MSP id.")
IdentityOpt = typer.Option(None, "--identity-cert", envvar="FEDLEDGER_IDENTITY_CERT",
                           help="The caller's X.509 certificate (PEM).")
IdentityKeyOpt = typer.Option(None, "--identity-key", envvar="FEDLEDGER_IDENTITY_KEY",
                              help="The caller's private key (PEM; Fabric signs every call with it).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document.")


def _load_optional(config: Path, needed: bool) -> FederationConfig | None:
    if config.exists():
        return load_config(config.resolve())
    if needed:
        raise ConfigError(f"{config}: file not found (give --config, or --ledger and --federation)")
    return None


def _target(config: Path, ledger: Optional[Path], backend: Optional[str],
            federation: Optional[str]) -> tuple[onboarding.LedgerTarget, FederationConfig | None]:
    cfg = _load_optional(config, needed=ledger is None or federation is None)
    base = cfg.ledger_config if cfg else None
    try:
        ledger_config = LedgerConfig(
            backend=backend or (base.backend if base else "embedded"),
            path=ledger or (base.path if base else None),
            profile=base.profile if base else None,
        )
    except ValidationError as exc:
        raise ConfigError(f"{config}: {exc.errors()[0]['msg']}") from None
    target = onboarding.LedgerTarget(ledger_config, federation or (cfg.id if cfg else ""))
    return target, cfg


def _coordinator_identity(cfg: FederationConfig | None, msp_id: Optional[str],
                          identity_cert: Optional[Path], identity_key: Optional[Path] = None) -> Credentials:
    msp = msp_id or (cfg.coordinator_msp if cfg else None)
    if msp is None:
        raise ConfigError("--msp-id is required without a federation file")
    if cfg is not None:
        return member_credentials(cfg, msp, "coordinator", cert=identity_cert, key=identity_key)
    if identity_cert is None:
        raise ConfigError("--identity-cert is required without a federation file")
    return Credentials.from_files(msp, identity_cert, identity_key)


# Keys and CA -------------------------------------------------------------------------
@participant_app.command("keygen")
def keygen_cmd(
    participant: str = typer.Option(..., "--participant", "-p", help="Participant id (CN of the CSR)."),
    org: Optional[str] = typer.Option(None, "--org", help="Organisation / MSP id (O of the CSR)."),
    out: Path = typer.Option(Path("."), "--out", help="Directory for the key, OpenSSH key and CSR."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
    pkcs11: Optional[Path] = typer.Option(None, "--pkcs11", help="PKCS#11 module: create the key in a token."),
    token_label: Optional[str] = typer.Option(None, "--token-label", help="With --pkcs11: the token's label."),
    key_label: Optional[str] = typer.Option(None, "--key-label", help="With --pkcs11: the key's label "
                                            "(default: the participant id)."),
    pin_file: Optional[Path] = typer.Option(None, "--pin-file", help="With --pkcs11: file (0600) with the user PIN."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a P-256 key (PEM and OpenSSH, mode 0600, or in a PKCS#11 token) and a CSR."""
    if pkcs11 is not None:
        _keygen_pkcs11(participant, org, out, force, pkcs11, token_label, key_label, pin_file, as_json)
        return
    with _one_line_errors():
        files = onboarding.keygen(out, participant, org, overwrite=force)
    payload = {"participant": participant, "key": str(files.key), "openssh_key": str(files.openssh_key),
               "openssh_public": str(files.openssh_public), "csr": str(files.csr)}
    _emit(as_json, payload, lambda: f"key {files.key} (0600), node key {files.openssh_key}, CSR {files.csr}")


# --- keygen --pkcs11: the key is created in a token and never leaves it ----------------
def _keygen_pkcs11(participant: str, org: Optional[str], out: Path, force: bool, module: Path,
                   token_label: Optional[str], key_label: Optional[str], pin_file: Optional[Path],
                   as_json: bool) -> None:
    """Create the key in the token and write only public files: the CSR and OpenSSH public key."""
    from cryptography.hazmat.primitives import serialization

    from ledger import pki
    from ledger.keys_pkcs11 import Pkcs11Config, Pkcs11Key, generate_key, make_csr, read_pin

    with _one_line_errors():
        if token_label is None or pin_file is None:
            raise ValueError("--pkcs11 needs --token-label and --pin-file")
        config = Pkcs11Config(module, token_label, key_label or participant, read_pin(pin_file))
        generate_key(config, overwrite=force)
        key = Pkcs11Key(config)
        try:
            csr = make_csr(key, participant, org)
            public = key.public_key()
        finally:
            key.close()
        csr_path = pki.write_public_file(out / f"{participant}.csr", csr.public_bytes(serialization.Encoding.PEM))
        ssh_pub = pki.write_public_file(out / f"{participant}.ssh.pub",
                                        pki.openssh_public_key(public, participant) + "\n")
    payload = {"participant": participant, "key": config.describe(), "openssh_public": str(ssh_pub),
               "csr": str(csr_path)}
    _emit(as_json, payload, lambda: f"key {config.describe()} (in the token), CSR {csr_path}")


@ca_app.command("init")
def ca_init_cmd(
    org: str = typer.Option(..., "--org", help="Organisation / MSP id of the CA."),
    directory: Path = typer.Option(Path("ca"), "--dir", help="Where ca.key and ca.crt go."),
    name: Optional[str] = typer.Option(None, "--name", help="CA common name (default ca.<org>)."),
    days: int = typer.Option(3650, "--days", min=1, help="Validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a self-signed P-256 org CA (demo and tests)."""
    with _one_line_errors():
        files = onboarding.ca_init(directory, org, common_name=name, days=days, overwrite=force)
    payload = {"key": str(files.key), "cert": str(files.cert), "subject": files.subject,
               "not_after": files.not_after}
    _emit(as_json, payload, lambda: f"CA {files.subject}: {files.cert} (key {files.key}, 0600)")


@ca_app.command("sign")
def ca_sign_cmd(
    csr: Path = typer.Option(..., "--csr", help="The participant's CSR."),
    ca_dir: Path = typer.Option(Path("ca"), "--ca-dir", help="Directory with ca.key and ca.crt."),
    out: Optional[Path] = typer.Option(None, "--out", help="Certificate file (default: CSR name .crt)."),
    days: int = typer.Option(365, "--days", min=1, help="Validity in days."),
    as_json: bool = JsonOpt,
) -> None:
    """Sign a participant CSR (P-256 only) into a certificate of this CA."""
    target = out or csr.with_suffix(".crt")
    with _one_line_errors():
        cert = onboarding.ca_sign(ca_dir, csr, target, days=days)
    payload = {"cert": str(target), "subject": cert.subject.rfc4514_string(),
               "issuer": cert.issuer.rfc4514_string(), "not_after": cert.not_valid_after_utc.isoformat()}
    _emit(as_json, payload, lambda: f"certificate {target}: {payload['subject']} until {payload['not_after']}")


# Ledger ------------------------------------------------------------------------------
def _parse_meta(items: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FormatError(f"--meta {item!r} must be KEY=VALUE")
        meta[key] = value
    return meta


@participant_app.command("register")
def register_cmd(
    participant: str = typer.Option(..., "--participant", "-p", help="Participant id."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="The participant's certificate."),
    ca_cert: Optional[Path] = typer.Option(None, "--ca-cert", help="Org CA certificate to check against."),
    key: Optional[Path] = typer.Option(None, "--key", help="The private key, to check it matches."),
    meta: list[str] = typer.Option([], "--meta", help="KEY=VALUE stored with the registration."),
    config: Path = ConfigOpt, ledger: Optional[Path] = LedgerOpt, backend: Optional[str] = BackendOpt,
    federation: Optional[str] = FederationOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, identity_key: Optional[Path] = IdentityKeyOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register an institution's certificate on the ledger, as that institution's org."""
    with _one_line_errors():
        target, cfg = _target(config, ledger, backend, federation)
        entry = next((p for p in cfg.participants if p.id == participant), None) if cfg else None
        msp = msp_id or (entry.msp_id if entry else None)
        if msp is None:
            raise ConfigError(f"--msp-id is required ({participant} is not in the federation file)")
        org_dir = cfg.workdir / "pki" / msp if cfg else None
        cert_path = cert or (org_dir / f"{participant}.crt" if org_dir else None)
        if cert_path is None:
            raise ConfigError("--cert is required without a federation file")
        if ca_cert is None and org_dir is not None and (org_dir / "ca" / "ca.crt").exists():
            ca_cert = org_dir / "ca" / "ca.crt"
        if cfg is not None and (cfg.ledger == "fabric" or identity_cert is not None):
            identity = member_credentials(cfg, msp, participant, cert=identity_cert, key=identity_key)
        else:
            identity = Credentials.from_files(msp, identity_cert or cert_path, identity_key)
        receipt = onboarding.register(target, identity, participant, cert_path, ca_cert_path=ca_cert,
                                      key_path=key, meta={"org": msp, **_parse_meta(meta)})
    payload = {"participant": participant, "federation": target.federation, "msp_id": msp,
               "status": "pending", **receipt.model_dump()}
    _emit(as_json, payload, lambda: f"{participant} registered (pending) tx {receipt.tx_id} block {receipt.block_number}")


@participant_app.command("admit")
def admit_cmd(
    participant: str = typer.Argument(..., help="Participant id."),
    config: Path = ConfigOpt, ledger: Optional[Path] = LedgerOpt, backend: Optional[str] = BackendOpt,
    federation: Optional[str] = FederationOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, as_json: bool = JsonOpt,
) -> None:
    """Coordinator: admit a registered participant (status active)."""
    with _one_line_errors():
        target, cfg = _target(config, ledger, backend, federation)
        receipt = onboarding.admit(target, _coordinator_identity(cfg, msp_id, identity_cert), participant)
    payload = {"participant": participant, "federation": target.federation, "status": "active",
               **receipt.model_dump()}
    _emit(as_json, payload, lambda: f"{participant} admitted tx {receipt.tx_id} block {receipt.block_number}")


@participant_app.command("revoke")
def revoke_cmd(
    participant: str = typer.Argument(..., help="Participant id."),
    reason: str = typer.Option("revoked by the coordinator", "--reason", help="Why (recorded)."),
    config: Path = ConfigOpt, ledger: Optional[Path] = LedgerOpt, backend: Optional[str] = BackendOpt,
    federation: Optional[str] = FederationOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, as_json: bool = JsonOpt,
) -> None:
    """Coordinator: revoke a participant (refused from the next round on)."""
    with _one_line_errors():
        target, cfg = _target(config, ledger, backend, federation)
        receipt = onboarding.revoke(target, _coordinator_identity(cfg, msp_id, identity_cert), participant, reason)
    payload = {"participant": participant, "federation": target.federation, "status": "revoked",
               "reason": reason, **receipt.model_dump()}
    _emit(as_json, payload, lambda: f"{participant} revoked tx {receipt.tx_id} block {receipt.block_number}")


@participant_app.command("list")
def list_cmd(
    config: Path = ConfigOpt, ledger: Optional[Path] = LedgerOpt, backend: Optional[str] = BackendOpt,
    federation: Optional[str] = FederationOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, as_json: bool = JsonOpt,
) -> None:
    """List the federation's participants with status, org and key fingerprint."""
    with _one_line_errors():
        target, cfg = _target(config, ledger, backend, federation)
        rows = [onboarding.participant_summary(p)
                for p in onboarding.list_participants(target, _coordinator_identity(cfg, msp_id, identity_cert))]

    def table() -> str:
        if not rows:
            return f"no participants in {target.federation}"
        lines = [f"{'participant':<20} {'status':<8} {'msp':<16} key sha256"]
        lines += [f"{r['id']:<20} {r['status']:<8} {r['msp_id']:<16} {r.get('key_sha256', '?')[:16]}" for r in rows]
        return "\n".join(lines)

    _emit(as_json, {"federation": target.federation, "participants": rows}, table)
