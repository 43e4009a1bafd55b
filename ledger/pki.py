"""The institutions' PKI: P-256 keys, a small org CA, participant certificates, TLS.

Auditors and operators use it without Flower, hence its place under ``ledger/``.

* Keys are ECDSA P-256 only. One institution key signs its model updates (DESIGN §3)
  *and* authenticates its Flower SuperNode, which wants the same key in OpenSSH format:
  :func:`keygen` writes both encodings of the one key.
* Private key files are created atomically with mode ``0600``. Loading a private key
  whose file is readable by group or others is **refused** (as ``ssh`` does): a key
  that others could read must be treated as leaked, and a warning is easy to miss in
  a service log.
* :class:`CertificateAuthority` is a demo/test org CA (``ca init`` / ``ca sign``). A real
  institution uses its own CA; :func:`validate_participant_cert` is what matters then.

Errors are one line, name the file when there is one, and say what is wrong::

    ValueError
    ├── KeyFileError       a key / certificate / CSR file cannot be used
    └── CertificateError   a certificate is refused (curve, validity, issuer, key)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger.formats import FormatError, validate_id

__all__ = [
    "KeyFileError",
    "CertificateError",
    "CertificateAuthority",
    "KeygenResult",
    "TlsFiles",
    "generate_key",
    "private_key_pem",
    "openssh_private_key",
    "openssh_public_key",
    "spki_pem",
    "write_private_key",
    "write_public_file",
    "load_private_key",
    "load_certificate",
    "load_csr",
    "certificate_from_pem",
    "certificate_pem",
    "make_csr",
    "keygen",
    "init_ca",
    "sign_csr",
    "validate_participant_cert",
    "make_tls_server_cert",
    "make_tls_client_cert",
    "write_tls_files",
    "demo_identity",
]

DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 365
# Backdate new certificates a little so that a peer whose clock lags still accepts them.
_BACKDATE = dt.timedelta(minutes=5)


class KeyFileError(ValueError):
    """A key, certificate or CSR file cannot be used (missing, malformed, wrong kind)."""


class CertificateError(ValueError):
    """A certificate is refused: wrong curve, outside its validity, wrong issuer or key."""


# --- keys ---------------------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key`` (what openssl, Fabric and this project read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def openssh_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` in OpenSSH private key format, as ``flower-supernode
    --auth-supernode-private-key`` loads it (``load_ssh_private_key``: OpenSSH only)."""
    _require_p256_private(key, "key")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def openssh_public_key(
    key_or_cert: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey | x509.Certificate,
    comment: str | None = None,
) -> str:
    """One-line OpenSSH public key (``ecdsa-sha2-nistp256 AAAA… [comment]``).

    This is what ``flwr supernode register`` reads: the coordinator derives it from the
    participant's certificate on the ledger, so the node key and the signing key are one.
    """
    public = _p256_public(key_or_cert)
    line = public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    return f"{line} {comment}" if comment else line


def spki_pem(
    key_or_cert: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey | x509.Certificate,
) -> bytes:
    """SubjectPublicKeyInfo PEM of a P-256 key: how Flower stores a SuperNode's key
    (``NodeInfo.public_key``), so a node can be matched to a ledger certificate."""
    public = _p256_public(key_or_cert)
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _atomic_write(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` via a temp file created with ``mode`` then renamed.

    The file never exists with wider permissions than ``mode``, not even briefly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp already uses 0600; fchmod states the intent
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_private_key(
    path: str | os.PathLike[str],
    key: ec.EllipticCurvePrivateKey,
    *,
    fmt: str = "pem",
) -> Path:
    """Write ``key`` (``fmt`` ``pem`` = PKCS#8, or ``openssh``) with mode 0600, atomically."""
    _require_p256_private(key, "key")
    if fmt == "pem":
        data = private_key_pem(key)
    elif fmt == "openssh":
        data = openssh_private_key(key)
    else:
        raise ValueError(f"unknown key format {fmt!r} (pem or openssh)")
    return _atomic_write(Path(path), data, 0o600)


def write_public_file(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write a certificate, CSR or public key (mode 0644), atomically."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    return _atomic_write(Path(path), raw, 0o644)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {what} file does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a {what} file") from None
    except PermissionError:
        raise KeyFileError(f"{path}: {what} file is not readable by this user") from None


def load_private_key(
    path: str | os.PathLike[str], *, password: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Load an ECDSA P-256 private key from PEM (PKCS#8 or SEC1) or OpenSSH format.

    Refused with :class:`KeyFileError`: a missing file, a file readable by group or
    others (``chmod 600`` it), data that is not a key, an encrypted key without
    ``password``, and any key that is not ECDSA P-256 (RSA, P-384, Ed25519…).
    """
    path = Path(path)
    data = _read(path, "private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: private key permissions {mode:04o} are too open "
            f"(readable by others; run chmod 600 {path})"
        )
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"{path}: not a PEM or OpenSSH private key")
    if b"ENCRYPTED" in data and password is None:
        raise KeyFileError(f"{path}: private key is encrypted (no password given)")
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except TypeError as exc:  # password missing, or given for an unencrypted key
        if password is None:
            raise KeyFileError(f"{path}: private key is encrypted (no password given)") from None
        raise KeyFileError(f"{path}: {_first_line(exc)}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a readable private key ({_first_line(exc)})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise KeyFileError(
            f"{path}: private key is {_describe_key(key)}, an ECDSA P-256 key is required"
        )
    return key


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load one PEM X.509 certificate; :class:`KeyFileError` names the file and problem."""
    path = Path(path)
    data = _read(path, "certificate")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise KeyFileError(f"{path}: not a PEM certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: malformed certificate ({_first_line(exc)})") from None


def load_csr(path: str | os.PathLike[str]) -> x509.CertificateSigningRequest:
    """Load a PEM certificate signing request and check its self-signature."""
    path = Path(path)
    data = _read(path, "CSR")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise KeyFileError(f"{path}: not a PEM certificate signing request")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: malformed CSR ({_first_line(exc)})") from None
    if not csr.is_signature_valid:
        raise KeyFileError(f"{path}: CSR signature does not verify")
    return csr


def certificate_from_pem(pem: str | bytes, what: str = "certificate") -> x509.Certificate:
    """Parse a PEM certificate held in memory (e.g. read from the ledger)."""
    raw = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(raw)
    except ValueError as exc:
        raise CertificateError(f"{what} is not a PEM certificate ({_first_line(exc)})") from None


def certificate_pem(cert: x509.Certificate) -> str:
    """PEM text of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --- CSR, CA ------------------------------------------------------------------------


def _name(common_name: str, org: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_csr(
    key: ec.EllipticCurvePrivateKey, participant: str, org: str | None = None
) -> x509.CertificateSigningRequest:
    """A CSR with CN = ``participant`` (a valid participant id) and O = ``org``."""
    _require_p256_private(key, "key")
    validate_id(participant, "participant id")
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(participant, org))
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class KeygenResult:
    """Files written by :func:`keygen` (one key in two encodings, its CSR and SSH pubkey)."""

    participant: str
    key: Path
    openssh_key: Path
    openssh_public: Path
    csr: Path


def keygen(
    out_dir: str | os.PathLike[str],
    participant: str,
    org: str | None = None,
    *,
    overwrite: bool = False,
) -> KeygenResult:
    """Create a participant's P-256 key and CSR under ``out_dir``.

    Writes ``<id>.key`` (PKCS#8, 0600), ``<id>.ssh`` (the same key, OpenSSH, 0600, for the
    SuperNode), ``<id>.ssh.pub`` and ``<id>.csr``. Refuses to overwrite an existing key
    unless ``overwrite``: a replaced key would orphan a registered certificate.
    """
    validate_id(participant, "participant id")
    out = Path(out_dir)
    paths = KeygenResult(
        participant=participant,
        key=out / f"{participant}.key",
        openssh_key=out / f"{participant}.ssh",
        openssh_public=out / f"{participant}.ssh.pub",
        csr=out / f"{participant}.csr",
    )
    if not overwrite:
        for existing in (paths.key, paths.openssh_key):
            if existing.exists():
                raise KeyFileError(f"{existing}: key file exists already (not overwritten)")
    key = generate_key()
    write_private_key(paths.key, key, fmt="pem")
    write_private_key(paths.openssh_key, key, fmt="openssh")
    write_public_file(paths.openssh_public, openssh_public_key(key, participant) + "\n")
    csr = make_csr(key, participant, org)
    write_public_file(paths.csr, csr.public_bytes(serialization.Encoding.PEM))
    return paths


@dataclass(frozen=True)
class CertificateAuthority:
    """A demo / test org CA: its key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def org(self) -> str | None:
        """The CA's organisation (O) attribute, copied into the leaves it signs."""
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(attrs[0].value) if attrs else None

    def save(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``ca.key`` (0600) and ``ca.crt`` under ``directory``."""
        out = Path(directory)
        key_path = write_private_key(out / "ca.key", self.key)
        cert_path = write_public_file(out / "ca.crt", certificate_pem(self.cert))
        return key_path, cert_path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Load a CA written by :meth:`save`; the key must match the certificate."""
        out = Path(directory)
        key = load_private_key(out / "ca.key")
        cert = load_certificate(out / "ca.crt")
        if not _same_public_key(key.public_key(), cert.public_key()):
            raise KeyFileError(f"{out / 'ca.key'}: key does not match {out / 'ca.crt'}")
        return cls(key=key, cert=cert)


def _ski(public: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public)


def init_ca(
    org: str,
    *,
    common_name: str | None = None,
    days: int = DEFAULT_CA_DAYS,
    key: ec.EllipticCurvePrivateKey | None = None,
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """A self-signed P-256 org CA (SKI, basicConstraints CA, keyCertSign + cRLSign)."""
    key = key or generate_key()
    _require_p256_private(key, "CA key")
    start = (now or _utcnow()) - _BACKDATE
    name = _name(common_name or f"ca.{org}", org)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key=key, cert=cert)


def _leaf_builder(
    ca: CertificateAuthority,
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey,
    start: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    ca_ski = _ca_key_identifier(ca.cert)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_ski(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(
                key_identifier=ca_ski,
                authority_cert_issuer=None,
                authority_cert_serial_number=None,
            ),
            critical=False,
        )
    )


def _key_usage(*, digital_signature: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    *,
    days: int = DEFAULT_LEAF_DAYS,
    now: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign ``csr`` into a participant certificate.

    The CSR must be self-signed by a P-256 key and carry CN = a valid participant id.
    The leaf gets O = the CA's organisation (the MSP), AKI = the CA's SKI,
    digitalSignature + clientAuth, and is valid from ``not_before`` (default: now minus
    a few minutes) for ``days`` days.
    """
    if not csr.is_signature_valid:
        raise CertificateError("CSR signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise CertificateError(f"CSR key is {_describe_key(public)}, ECDSA P-256 is required")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise CertificateError("CSR subject must have exactly one CN (the participant id)")
    participant = _participant_id(str(cns[0].value), CertificateError)
    if days <= 0:
        raise CertificateError("validity must be at least one day")
    start = not_before or ((now or _utcnow()) - _BACKDATE)
    cert = (
        _leaf_builder(ca, _name(participant, ca.org), public, start, days)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert


# --- validation ---------------------------------------------------------------------


def validate_participant_cert(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Refuse a participant certificate that this federation must not accept.

    Checks, each failing with its own :class:`CertificateError` message: the key is
    ECDSA P-256; ``cert`` and ``ca_cert`` are valid at ``at`` (default now); ``ca_cert``
    is a CA; ``cert`` names ``ca_cert`` as issuer, its authority key id is the CA's
    subject key id, and its signature verifies with the CA key; a keyUsage, when
    present, allows digitalSignature; and ``key``, when given, is the cert's key.
    """
    at = _aware(at or _utcnow())
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise CertificateError(
            f"certificate key is {_describe_key(public)}, ECDSA P-256 is required"
        )
    _check_validity(cert, at, "certificate")
    _check_validity(ca_cert, at, "CA certificate")
    try:
        ca_bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        ca_bc = None
    if ca_bc is None or not ca_bc.ca:
        raise CertificateError("CA certificate is not a CA (basicConstraints CA:TRUE missing)")
    if cert.issuer != ca_cert.subject:
        raise CertificateError(
            f"certificate issuer '{cert.issuer.rfc4514_string()}' is not the CA "
            f"'{ca_cert.subject.rfc4514_string()}'"
        )
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise CertificateError("certificate has no authority key identifier") from None
    if aki.key_identifier != _ca_key_identifier(ca_cert):
        raise CertificateError(
            "certificate authority key identifier does not match the CA's subject key id"
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except InvalidSignature:
        raise CertificateError("certificate signature does not verify with the CA key") from None
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"certificate is not issued by the CA ({_first_line(exc)})") from None
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise CertificateError("certificate key usage does not allow digitalSignature")
    if key is not None and not _same_public_key(key.public_key(), public):
        raise CertificateError("private key does not match the certificate")


def _check_validity(cert: x509.Certificate, at: dt.datetime, what: str) -> None:
    if at < cert.not_valid_before_utc:
        raise CertificateError(
            f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if at > cert.not_valid_after_utc:
        raise CertificateError(f"{what} expired on {cert.not_valid_after_utc.isoformat()}")


def _ca_key_identifier(ca_cert: x509.Certificate) -> bytes:
    """The CA's SKI extension, or the RFC 5280 method-1 id of its key when absent."""
    try:
        return ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key()).digest  # type: ignore[arg-type]


# --- TLS for the coordinator's SuperLink --------------------------------------------


def make_tls_server_cert(
    ca: CertificateAuthority,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    *,
    days: int = DEFAULT_LEAF_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server key + certificate signed by ``ca`` with SANs for ``hosts``
    (IP addresses as iPAddress entries, names as dNSName), serverAuth."""
    if not hosts:
        raise ValueError("a TLS server certificate needs at least one host")
    key = generate_key()
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        _leaf_builder(ca, _name(hosts[0], ca.org), key.public_key(), _utcnow() - _BACKDATE, days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=True), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


def make_tls_client_cert(
    ca: CertificateAuthority,
    name: str,
    *,
    days: int = DEFAULT_LEAF_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS client key + certificate signed by ``ca`` (CN ``name``, clientAuth), for
    mutual TLS between services the project runs."""
    key = generate_key()
    cert = (
        _leaf_builder(ca, _name(name, ca.org), key.public_key(), _utcnow() - _BACKDATE, days)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a SuperLink's TLS material (the Flower flags they feed)."""

    ca_cert: Path  # --ssl-ca-certfile, and --root-certificates on nodes and the CLI
    server_cert: Path  # --ssl-certfile
    server_key: Path  # --ssl-keyfile


def write_tls_files(
    directory: str | os.PathLike[str],
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    *,
    org: str = "fedledger-tls",
) -> TlsFiles:
    """Create (or reuse, when all three files exist) a TLS CA + server cert under
    ``directory``: ``ca.crt``, ``server.pem``, ``server.key`` (0600)."""
    out = Path(directory)
    files = TlsFiles(out / "ca.crt", out / "server.pem", out / "server.key")
    if files.ca_cert.exists() and files.server_cert.exists() and files.server_key.exists():
        _check_tls_reuse(files, hosts)
        return files
    ca = init_ca(org, common_name=f"tls-ca.{org}")
    key, cert = make_tls_server_cert(ca, hosts)
    write_public_file(files.ca_cert, certificate_pem(ca.cert))
    write_private_key(files.server_key, key)
    write_public_file(files.server_cert, certificate_pem(cert))
    return files


def _check_tls_reuse(files: TlsFiles, hosts: tuple[str, ...]) -> None:
    """Existing TLS files must still serve: key matches, valid now, SANs cover ``hosts``."""
    key = load_private_key(files.server_key)  # refuses a key with open permissions
    cert = load_certificate(files.server_cert)
    if not _same_public_key(key.public_key(), cert.public_key()):
        raise CertificateError(f"{files.server_cert}: does not match {files.server_key}")
    now = _utcnow()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateError(f"{files.server_cert}: expired or not yet valid (until "
                               f"{cert.not_valid_after_utc.isoformat()}); remove {files.server_cert.parent}")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    names = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    names |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    missing = [h for h in hosts if h not in names]
    if missing:
        raise CertificateError(f"{files.server_cert}: does not cover {', '.join(missing)}; "
                               f"remove {files.server_cert.parent} to issue a new one")


# --- demo convenience ---------------------------------------------------------------


def demo_identity(
    workdir: str | os.PathLike[str], participant: str, msp_id: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    """``(key, cert, ca_cert)`` for ``participant`` of org ``msp_id``, made on the fly.

    Creates (or reuses) a per-org demo CA under ``workdir/<msp_id>/ca`` and the
    participant's key + certificate under ``workdir/<msp_id>/<participant>.*``. Demo
    material only: it lives in a work directory and is never committed.
    """
    org_dir = Path(workdir) / msp_id
    if (org_dir / "ca" / "ca.key").exists():
        ca = CertificateAuthority.load(org_dir / "ca")
    else:
        ca = init_ca(msp_id)
        ca.save(org_dir / "ca")
    key_path = org_dir / f"{participant}.key"
    cert_path = org_dir / f"{participant}.crt"
    if key_path.exists() and cert_path.exists():
        key, cert = load_private_key(key_path), load_certificate(cert_path)
        validate_participant_cert(cert, ca.cert, key)
        return key, cert, ca.cert
    result = keygen(org_dir, participant, msp_id, overwrite=True)
    key = load_private_key(result.key)
    cert = sign_csr(ca, load_csr(result.csr))
    write_public_file(cert_path, certificate_pem(cert))
    return key, cert, ca.cert


# --- helpers ------------------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (cryptography's run long)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    text = text.splitlines()[0]
    return text.split(". ")[0].rstrip(".")


def _describe_key(key: object) -> str:
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {key.curve.name}"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}"
    return type(key).__name__.lstrip("_")


def _require_p256_private(key: object, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise KeyFileError(f"{what} is {_describe_key(key)}, an ECDSA P-256 key is required")


def _p256_public(key_or_cert: object) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a key, public key or certificate; CertificateError else."""
    if isinstance(key_or_cert, (x509.Certificate, ec.EllipticCurvePrivateKey)):
        public = key_or_cert.public_key()
    else:
        public = key_or_cert
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise CertificateError(f"key is not ECDSA P-256 ({_describe_key(public)})")
    return public


def _same_public_key(a: ec.EllipticCurvePublicKey, b: object) -> bool:
    if not isinstance(b, ec.EllipticCurvePublicKey):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _participant_id(value: str, error: type[ValueError]) -> str:
    try:
        return validate_id(value, "participant id")
    except FormatError as exc:
        raise error(str(exc)) from None
