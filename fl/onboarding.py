"""Onboarding services behind ``fedledger participant …`` (the CLI only parses and prints).

* An institution creates its key and CSR (:func:`keygen`), has its org CA sign it
  (:func:`ca_init` / :func:`ca_sign` — a demo CA; a real institution uses its own), and
  registers the certificate on the ledger **as its own organisation** (:func:`register`),
  with the size of its dataset in a declaration signed with its key. The org's CA
  certificate is registered first, once per federation (:func:`register_org_ca`;
  :func:`register` does it when the org has none yet): the contract checks every
  participant certificate's signature against it.
* The coordinator admits or revokes it (:func:`admit`, :func:`revoke`); anyone lists.

Every ledger call goes through :func:`ledger.factory.open_ledger` with the caller's
:class:`~ledger.records.Identity`. Local checks (curve, validity, issuer, key match) run
before the ledger is touched, so the common mistakes fail with a clear local message.
"""

from __future__ import annotations

import csv
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
from ledger.declarations import SignedDeclaration, declare_examples
from ledger.errors import DuplicateRecord, RecordNotFound
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
    "register_org_ca",
    "count_rows",
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
    key: Path | None = None
    data: Path | None = None


def registrant(cfg: FederationConfig, participant: str, *, msp_id: str | None = None, cert: Path | None = None,
               ca_cert: Path | None = None, identity_cert: Path | None = None,
               identity_key: Path | None = None) -> Registrant:
    """Fill in what ``participant register`` was not told from the federation file.

    The org is ``msp_id`` or the participant's ``msp_id`` in the file; the certificate,
    org CA and signing key default to the workspace's, the data file to the participant's
    ``data`` in the file (its rows are the default declared size). The participant calls the ledger as its own
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
    key = cfg.workspace.key(msp, participant)
    return Registrant(msp, cert_path, ca_cert, identity, key if key.exists() else None,
                      entry.data if entry else None)


def count_rows(path: Path) -> int:
    """Data rows of a CSV file (its header excluded): the most examples it can train on."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = sum(1 for row in csv.reader(handle) if row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot count the rows of the data file: {exc}") from exc
    if rows < 2:
        raise ConfigError(f"{path}: the data file has no data rows below its header")
    return rows - 1


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


def register_org_ca(target: LedgerTarget, identity: Credentials | Identity, ca_cert_path: Path) -> TxReceipt:
    """Register the org's CA certificate (once per federation), called as the org: the
    CA must have issued the caller's own certificate."""
    ca = pki.load_certificate(ca_cert_path)
    with open_target(target, identity) as ledger:
        return ledger.register_org_ca(target.federation, pki.certificate_pem(ca))


def register(
    target: LedgerTarget,
    identity: Credentials | Identity,
    participant: str,
    cert_path: Path,
    *,
    examples: int,
    key_path: Path | None,
    ca_cert_path: Path | None = None,
    meta: Mapping[str, Any] | None = None,
    declaration: SignedDeclaration | None = None,
) -> TxReceipt:
    """Register ``participant``'s certificate and dataset size, called as its own organisation.

    ``declaration``: the size declaration already signed elsewhere (by a key in a token,
    say); then ``key_path`` may be ``None`` and ``examples`` is not used.

    Checked locally first: the certificate names ``participant`` (CN), is P-256 and valid
    now; with ``ca_cert_path`` it must be issued by that CA; the key at ``key_path`` must
    be the certificate's, since it signs the declaration of ``examples``. When the org has
    registered no CA in the federation yet, ``ca_cert_path`` is registered first. The
    contract then checks the certificate's and the caller's signatures against that CA.
    """
    if key_path is None and declaration is None:
        raise pki.KeyFileError(
            f"registering {participant} needs its private key (--key), to sign the declaration of its dataset size"
        )
    if type(examples) is not int or examples < 1:
        raise ConfigError(f"the declared number of examples must be a positive integer, not {examples!r}")
    cert = pki.load_certificate(cert_path)
    cn = _common_name(cert)
    if cn != participant:
        raise pki.CertificateError(f"{cert_path}: certificate CN is {cn!r}, not participant {participant!r}")
    key = pki.load_private_key(key_path) if key_path is not None else None
    ca_cert = pki.load_certificate(ca_cert_path) if ca_cert_path is not None else None
    if ca_cert is not None:
        pki.validate_participant_cert(cert, ca_cert, key)
    else:
        _check_standalone(cert, key)
    if declaration is None:
        assert key is not None
        declaration = declare_examples(target.federation, participant, examples, key)
    with open_target(target, identity) as ledger:
        try:
            ledger.org_ca(target.federation, identity.msp_id)
        except RecordNotFound:
            if ca_cert is None:
                raise pki.CertificateError(
                    f"{identity.msp_id} has registered no CA certificate in federation {target.federation}: "
                    "give the org CA certificate (--ca-cert) to register it first"
                ) from None
            try:
                ledger.register_org_ca(target.federation, pki.certificate_pem(ca_cert))
            except DuplicateRecord:
                pass  # another registration of the org registered it meanwhile
        return ledger.register_participant(target.federation, participant, pki.certificate_pem(cert),
                                           dict(meta or {}), declaration)


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
