"""X.509 checks the contract makes on a participant's signing certificate.

A participant's certificate must be an ECDSA P-256 end-entity certificate, valid at the
transaction's timestamp, and issued by the same CA as the certificate of the caller who
registers it — same issuer name *and* same authority key identifier, so a foreign CA
that copies the org CA's name is still refused. Everything here is deterministic: time
is the transaction timestamp passed in, never the local clock.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chaincode.errors import AccessDenied, Invalid

__all__ = ["MAX_CERT_PEM", "load_pem_certificate", "check_participant_cert", "p256_public_key", "valid_at"]

MAX_CERT_PEM = 16 * 1024
_BEGIN = "-----BEGIN CERTIFICATE-----"


def load_pem_certificate(pem: str | bytes, what: str) -> x509.Certificate:
    """Exactly one PEM certificate, or ``INVALID``."""
    if isinstance(pem, bytes):
        pem = pem.decode("ascii", errors="replace")
    if not isinstance(pem, str) or len(pem) > MAX_CERT_PEM:
        raise Invalid(f"{what} must be a PEM certificate of at most {MAX_CERT_PEM} bytes")
    if pem.count(_BEGIN) != 1:
        raise Invalid(f"{what} must hold exactly one PEM certificate")
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise Invalid(f"{what} is not a PEM X.509 certificate: {exc}") from exc


def p256_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    """The certificate's key if it is ECDSA P-256, else ``None``."""
    try:
        key = cert.public_key()
    except ValueError:
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ext.value.key_identifier


def _check_end_entity(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise Invalid("participant certificate is a CA certificate, not a signing certificate")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise Invalid("participant certificate does not allow digitalSignature")


def check_participant_cert(
    cert_pem: str, caller_cert: bytes, caller_msp: str, at_ms: int
) -> str:
    """Check a participant certificate against the rules above; return it re-encoded as PEM.

    ``caller_cert`` is the X.509 of the identity registering it (bytes from the client
    identity). Wrong curve, expiry or a CA certificate are ``INVALID``; a certificate from
    another CA than the caller's is ``ACCESS_DENIED``.
    """
    cert = load_pem_certificate(cert_pem, "participant certificate")
    if p256_public_key(cert) is None:
        raise Invalid("participant certificate key must be ECDSA P-256 (secp256r1)")
    at = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise Invalid(
            "participant certificate is not valid at the transaction time "
            f"(valid {cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})"
        )
    _check_end_entity(cert)
    try:
        own = x509.load_pem_x509_certificate(bytes(caller_cert))
    except ValueError as exc:
        raise AccessDenied(f"the caller's identity of {caller_msp} has no readable X.509 certificate") from exc
    own_aki, cert_aki = _authority_key_id(own), _authority_key_id(cert)
    if own_aki is None or cert_aki is None:
        raise AccessDenied(
            "participant certificate and the caller's certificate must both carry an authority "
            "key identifier, to prove they come from the same CA"
        )
    if cert.issuer != own.issuer or cert_aki != own_aki:
        raise AccessDenied(
            f"participant certificate was not issued by the CA of the caller's organisation {caller_msp}"
        )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def valid_at(cert_pem: str, at_ms: int) -> bool:
    """Whether the (registered) certificate is within its validity window at ``at_ms``."""
    cert = load_pem_certificate(cert_pem, "participant certificate")
    at = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc
