"""``fedledger participant …``: keys, the demo org CA, and registration on the ledger.

Thin commands: parse → :mod:`fl.onboarding` → print (see :mod:`fl.cli_output` for the
convention: ``--config``, ``-p/--participant``, ``--json``, exit codes).

``keygen`` and ``ca`` work on local files only. The ledger commands take the ledger,
the federation and the default identities from the federation file; ``--msp-id``,
``--identity-cert`` and ``--identity-key`` name another caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fl import onboarding
from fl.config import ConfigError
from fl.cli_output import ConfigOpt, JsonOpt, ParticipantOpt, emit, failures, load
from ledger.formats import FormatError

__all__ = ["participant_app"]

participant_app = typer.Typer(
    help="Onboard institutions: keys, demo org CA, register / admit / revoke / list.",
    no_args_is_help=True,
)
ca_app = typer.Typer(help="A small org CA for demos and tests (use your own CA in production).",
                     no_args_is_help=True)
participant_app.add_typer(ca_app, name="ca")

MspOpt: Any = typer.Option(None, "--msp-id", help="The caller's MSP id (default: from the federation file).")
IdentityOpt: Any = typer.Option(None, "--identity-cert", help="The caller's X.509 certificate (PEM; default: "
                                                            "the workspace's or the Fabric network's).")
IdentityKeyOpt: Any = typer.Option(None, "--identity-key",
                                   help="The caller's private key (PEM; Fabric signs every call with it).")


# Keys and CA -------------------------------------------------------------------------
@participant_app.command("keygen")
def keygen_cmd(
    participant: str = typer.Option(..., "--participant", "-p", help="Participant id (the CN of the CSR)."),
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
    with failures(as_json):
        files = onboarding.keygen(out, participant, org, overwrite=force)
    payload = {"participant": participant, "key": str(files.key), "openssh_key": str(files.openssh_key),
               "openssh_public": str(files.openssh_public), "csr": str(files.csr)}
    emit(as_json, payload, lambda: f"key {files.key} (0600), node key {files.openssh_key}, CSR {files.csr}")


# --- keygen --pkcs11: the key is created in a token and never leaves it ----------------
def _keygen_pkcs11(participant: str, org: Optional[str], out: Path, force: bool, module: Path,
                   token_label: Optional[str], key_label: Optional[str], pin_file: Optional[Path],
                   as_json: bool) -> None:
    """Create the key in the token and write only public files: the CSR and OpenSSH public key."""
    from cryptography.hazmat.primitives import serialization

    from ledger import pki
    from ledger.keys_pkcs11 import Pkcs11Config, Pkcs11Key, generate_key, make_csr, read_pin

    with failures(as_json):
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
    emit(as_json, payload, lambda: f"key {config.describe()} (in the token), CSR {csr_path}")


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
    with failures(as_json):
        files = onboarding.ca_init(directory, org, common_name=name, days=days, overwrite=force)
    payload = {"key": str(files.key), "cert": str(files.cert), "subject": files.subject,
               "not_after": files.not_after}
    emit(as_json, payload, lambda: f"CA {files.subject}: {files.cert} (key {files.key}, 0600)")


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
    with failures(as_json):
        cert = onboarding.ca_sign(ca_dir, csr, target, days=days)
    payload = {"cert": str(target), "subject": cert.subject.rfc4514_string(),
               "issuer": cert.issuer.rfc4514_string(), "not_after": cert.not_valid_after_utc.isoformat()}
    emit(as_json, payload, lambda: f"certificate {target}: {payload['subject']} until {payload['not_after']}")


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
    participant: str = ParticipantOpt,
    cert: Optional[Path] = typer.Option(None, "--cert", help="The participant's certificate "
                                        "(default: the workspace's pki/<msp>/<participant>.crt)."),
    ca_cert: Optional[Path] = typer.Option(None, "--ca-cert", help="Org CA certificate to check against "
                                           "(default: the workspace's, when present)."),
    key: Optional[Path] = typer.Option(None, "--key", help="The participant's private key: it signs the declared "
                                       "dataset size (default: the workspace's pki/<msp>/<participant>.key)."),
    examples: Optional[int] = typer.Option(None, "--examples", min=1, help="The dataset size to declare: no "
                                           "update may claim more examples (default: the rows of the "
                                           "participant's data file in the federation file)."),
    meta: list[str] = typer.Option([], "--meta", help="KEY=VALUE stored with the registration; repeatable."),
    config: Path = ConfigOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, identity_key: Optional[Path] = IdentityKeyOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register an institution's certificate and declared dataset size on the ledger, as that
    institution's org (status pending); registers the org CA first if the org has none yet."""
    with failures(as_json):
        cfg = load(config)
        who = onboarding.registrant(cfg, participant, msp_id=msp_id, cert=cert, ca_cert=ca_cert,
                                    identity_cert=identity_cert, identity_key=identity_key)
        if examples is None:
            if who.data is None:
                raise ConfigError(f"--examples is required: the federation file names no data file of {participant}")
            examples = onboarding.count_rows(who.data)
        receipt = onboarding.register(onboarding.LedgerTarget.from_config(cfg), who.identity, participant, who.cert,
                                      examples=examples, ca_cert_path=who.ca_cert, key_path=key or who.key,
                                      meta={"org": who.msp_id, **_parse_meta(meta)})
    payload = {"participant": participant, "federation": cfg.id, "msp_id": who.msp_id,
               "status": "pending", "declared_examples": examples, **receipt.model_dump()}
    emit(as_json, payload, lambda: f"{participant} registered (pending) tx {receipt.tx_id} block {receipt.block_number}")


@participant_app.command("admit")
def admit_cmd(
    participant: str = ParticipantOpt, config: Path = ConfigOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, identity_key: Optional[Path] = IdentityKeyOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Coordinator: admit a registered participant (status active; its node key is then accepted)."""
    with failures(as_json):
        cfg = load(config)
        identity = onboarding.coordinator_credentials(cfg, msp_id, identity_cert, identity_key)
        receipt = onboarding.admit(onboarding.LedgerTarget.from_config(cfg), identity, participant)
    payload = {"participant": participant, "federation": cfg.id, "status": "active", **receipt.model_dump()}
    emit(as_json, payload, lambda: f"{participant} admitted tx {receipt.tx_id} block {receipt.block_number}")


@participant_app.command("revoke")
def revoke_cmd(
    participant: str = ParticipantOpt,
    reason: str = typer.Option("revoked by the coordinator", "--reason", help="Why (recorded on the ledger)."),
    config: Path = ConfigOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, identity_key: Optional[Path] = IdentityKeyOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Coordinator: revoke a participant (refused from the next round on)."""
    with failures(as_json):
        cfg = load(config)
        identity = onboarding.coordinator_credentials(cfg, msp_id, identity_cert, identity_key)
        receipt = onboarding.revoke(onboarding.LedgerTarget.from_config(cfg), identity, participant, reason)
    payload = {"participant": participant, "federation": cfg.id, "status": "revoked",
               "reason": reason, **receipt.model_dump()}
    emit(as_json, payload, lambda: f"{participant} revoked tx {receipt.tx_id} block {receipt.block_number}")


@participant_app.command("list")
def list_cmd(
    config: Path = ConfigOpt, msp_id: Optional[str] = MspOpt,
    identity_cert: Optional[Path] = IdentityOpt, identity_key: Optional[Path] = IdentityKeyOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the federation's participants with status, org and key fingerprint."""
    with failures(as_json):
        cfg = load(config)
        identity = onboarding.coordinator_credentials(cfg, msp_id, identity_cert, identity_key)
        rows = [onboarding.participant_summary(p)
                for p in onboarding.list_participants(onboarding.LedgerTarget.from_config(cfg), identity)]

    def table() -> str:
        if not rows:
            return f"no participants in {cfg.id}"
        lines = [f"{'participant':<20} {'status':<8} {'msp':<16} key sha256"]
        lines += [f"{r['id']:<20} {r['status']:<8} {r['msp_id']:<16} {r.get('key_sha256', '?')[:16]}" for r in rows]
        return "\n".join(lines)

    emit(as_json, {"federation": cfg.id, "participants": rows}, table)
