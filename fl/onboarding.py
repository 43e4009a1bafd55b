"""Onboarding services behind ``fedledger participant …`` (the CLI only parses and prints).

* An institution creates its key and CSR (:func:`keygen`), has its org CA sign it
  (:func:`ca_init` / :func:`ca_sign` — a demo CA; a real institution uses its own), and
  registers the certificate on the ledger **as its own organisation** (:func:`register`).
* The coordinator admits or revokes it (:func:`admit`, :func:`revoke`); anyone lists.

Every ledger call goes through :func:`ledger.factory.open_ledger` with the caller's
:class:`~ledger.records.Identity`. Local checks (curve, validity, issuer, key match) run
before the ledger is touched, so the common mistakes fail with a clear local message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fl.config import ConfigError, FederationConfig
from ledger import pki
from ledger.factory import LedgerConfig, open_ledger
from fl.identities import member_credentials
from ledger.identity import Credentials
from ledger.protocol import Ledger
from ledger.records import Identity, Participant, TxReceipt

__all__ = [
    "LedgerTarget",
    "CaFiles",
    "keygen",
    "ca_init",
    "ca_sign",
    "identity_from_cert",
    "Registrant",
    "registrant",
    "coordinator_credentials",
    "register",
    "admit",
    "revoke",
    "list_participants",
    "participant_summary",
    "open_target",
]


@dataclass(frozen=True)
class LedgerTarget:
    """Which ledger and federation a command talks to."""

    ledger: LedgerConfig
    federation: str

    @classmethod
    def from_config(cls, cfg: FederationConfig) -> LedgerTarget:
        """The federation file's ledger and id."""
        return cls(cfg.ledger_config, cfg.id)


def coordinator_credentials(cfg: FederationConfig, msp_id: str | None = None, cert: Path | None = None,
                            key: Path | None = None) -> Credentials:
    """The coordinator's ledger credentials: the file's ``coordinator_msp`` (or ``msp_id``)
    and its identity in the workspace (or the explicit ``cert``/``key``)."""
    return member_credentials(cfg, msp_id or cfg.coordinator_msp, "coordinator", cert=cert, key=key)


@dataclass(frozen=True)
class Registrant:
    """An institution about to register: its org, certificate, CA and ledger identity."""

    msp_id: str
    cert: Path
    ca_cert: Path | None
    identity: Credentials


def registrant(cfg: FederationConfig, participant: str, *, msp_id: str | None = None, cert: Path | None = None,
               ca_cert: Path | None = None, identity_cert: Path | None = None,
               identity_key: Path | None = None) -> Registrant:
    """Fill in what ``participant register`` was not told from the federation file.

    The org is ``msp_id`` or the participant's ``msp_id`` in the file; the certificate
    and org CA default to the workspace's. The participant calls the ledger as its own
    org: on Fabric (or with ``identity_cert``) with the org's ledger identity, on the
    embedded ledger with its own certificate.
    """
    entry = next((p for p in cfg.participants if p.id == participant), None)
    msp = msp_id or (entry.msp_id if entry else None)
    if msp is None:
        raise ConfigError(f"--msp-id is required ({participant} is not in federation {cfg.id})")
    cert_path = cert or cfg.workspace.cert(msp, participant)
    if ca_cert is None and cfg.workspace.ca_cert(msp).exists():
        ca_cert = cfg.workspace.ca_cert(msp)
    if cfg.ledger == "fabric" or identity_cert is not None:
        identity = member_credentials(cfg, msp, participant, cert=identity_cert, key=identity_key)
    else:
        identity = Credentials.from_files(msp, cert_path, identity_key)
    return Registrant(msp, cert_path, ca_cert, identity)


def identity_from_cert(msp_id: str, cert_path: Path) -> Identity:
    """The ledger identity of an org member: its MSP id and certificate file."""
    cert = pki.load_certificate(cert_path)
    return Identity(msp_id=msp_id, cert_pem=pki.certificate_pem(cert))


@contextmanager
def open_target(target: LedgerTarget, identity: Credentials | Identity) -> Iterator[Ledger]:
    """Open the ledger as ``identity`` and close it afterwards."""
    ledger = open_ledger(target.ledger, identity)
    try:
        yield ledger
    finally:
        ledger.close()


# --- keys and the demo CA ------------------------------------------------------------


def keygen(out_dir: Path, participant: str, org: str | None, *, overwrite: bool = False) -> pki.KeygenResult:
    """A participant's P-256 key (PEM + OpenSSH, 0600) and CSR under ``out_dir``."""
    return pki.keygen(out_dir, participant, org, overwrite=overwrite)


@dataclass(frozen=True)
class CaFiles:
    """A demo org CA on disk."""

    key: Path
    cert: Path
    subject: str
    not_after: str


def ca_init(directory: Path, org: str, *, common_name: str | None = None, days: int = pki.DEFAULT_CA_DAYS,
            overwrite: bool = False) -> CaFiles:
    """Create ``ca.key`` (0600) + ``ca.crt`` under ``directory``; refuses to replace an
    existing CA unless ``overwrite`` (certificates it issued would stop validating)."""
    if (directory / "ca.key").exists() and not overwrite:
        raise pki.KeyFileError(f"{directory / 'ca.key'}: a CA exists already (not overwritten)")
    ca = pki.init_ca(org, common_name=common_name, days=days)
    key_path, cert_path = ca.save(directory)
    return CaFiles(key_path, cert_path, ca.cert.subject.rfc4514_string(),
                   ca.cert.not_valid_after_utc.isoformat())


def ca_sign(ca_dir: Path, csr_path: Path, out: Path, *, days: int = pki.DEFAULT_LEAF_DAYS) -> x509.Certificate:
    """Sign ``csr_path`` with the CA in ``ca_dir`` into ``out``; the new certificate."""
    ca = pki.CertificateAuthority.load(ca_dir)
    cert = pki.sign_csr(ca, pki.load_csr(csr_path), days=days)
    pki.validate_participant_cert(cert, ca.cert)
    pki.write_public_file(out, pki.certificate_pem(cert))
    return cert


# --- ledger ---------------------------------------------------------------------------


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def register(
    target: LedgerTarget,
    identity: Identity,
    participant: str,
    cert_path: Path,
    *,
    ca_cert_path: Path | None = None,
    key_path: Path | None = None,
    meta: Mapping[str, Any] | None = None,
) -> TxReceipt:
    """Register ``participant``'s certificate, called as its own organisation.

    Checked locally first: the certificate names ``participant`` (CN), is P-256 and valid
    now; with ``ca_cert_path`` it must be issued by that CA; with ``key_path`` the key must
    be the certificate's. The contract then checks that the caller's org CA issued it.
    """
    cert = pki.load_certificate(cert_path)
    cn = _common_name(cert)
    if cn != participant:
        raise pki.CertificateError(f"{cert_path}: certificate CN is {cn!r}, not participant {participant!r}")
    key = pki.load_private_key(key_path) if key_path is not None else None
    if ca_cert_path is not None:
        pki.validate_participant_cert(cert, pki.load_certificate(ca_cert_path), key)
    else:
        _check_standalone(cert, key)
    with open_target(target, identity) as ledger:
        return ledger.register_participant(target.federation, participant, pki.certificate_pem(cert),
                                           dict(meta or {}))


def _check_standalone(cert: x509.Certificate, key: Any) -> None:
    """Curve, validity and key match, when no CA certificate is at hand."""
    pki.spki_pem(cert)  # refuses a key that is not P-256
    now = dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise pki.CertificateError(f"certificate expired on {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        raise pki.CertificateError(f"certificate is not valid before {cert.not_valid_before_utc.isoformat()}")
    if key is not None and pki.spki_pem(key) != pki.spki_pem(cert):
        raise pki.CertificateError("private key does not match the certificate")


def admit(target: LedgerTarget, identity: Identity, participant: str) -> TxReceipt:
    """Coordinator: make ``participant`` active (its node key is then accepted)."""
    with open_target(target, identity) as ledger:
        return ledger.admit_participant(target.federation, participant)


def revoke(target: LedgerTarget, identity: Identity, participant: str, reason: str) -> TxReceipt:
    """Coordinator: revoke ``participant`` (its updates are rejected and its node key
    unregistered by a running coordinator within one sync interval)."""
    with open_target(target, identity) as ledger:
        return ledger.revoke_participant(target.federation, participant, reason)


def list_participants(target: LedgerTarget, identity: Identity) -> list[Participant]:
    """Every participant of the federation, sorted by id."""
    with open_target(target, identity) as ledger:
        return ledger.participants(target.federation)


def participant_summary(participant: Participant) -> dict[str, Any]:
    """What ``list`` shows: status, org, and the key's fingerprint and certificate expiry."""
    summary: dict[str, Any] = {
        "id": participant.id,
        "status": participant.status,
        "msp_id": participant.msp_id,
        "updated_tx": participant.updated_tx,
        "meta": participant.meta,
    }
    try:
        cert = pki.certificate_from_pem(participant.cert_pem)
        der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        summary["key_sha256"] = hashlib.sha256(der).hexdigest()
        summary["cert_not_after"] = cert.not_valid_after_utc.isoformat()
    except pki.CertificateError as exc:
        summary["cert_problem"] = str(exc)
    return summary
