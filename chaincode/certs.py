"""X.509 checks the contract makes on org CAs and participants' signing certificates.

Each organisation registers its CA certificate once per federation
(:func:`check_org_ca`): a CA certificate whose signature really issued the caller's own
certificate. A participant's certificate must then be an ECDSA P-256 end-entity
certificate, valid at the transaction's timestamp, and *signed* by that registered CA —
a certificate that copies the CA's name and authority key identifier but was signed by
another key is refused — and the caller's own certificate must be signed by it too.
Everything here is deterministic: time is the transaction timestamp passed in, never the
local clock.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from chaincode.errors import AccessDenied, Invalid

__all__ = [
    "MAX_CERT_PEM",
    "P256_ORDER",
    "load_pem_certificate",
    "check_org_ca",
    "check_participant_cert",
    "issued_by",
    "p256_public_key",
    "valid_at",
    "verify_p256_signature",
]

MAX_CERT_PEM = 16 * 1024
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
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


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert``: its subject is the issuer name and its key made the signature."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _valid(cert: x509.Certificate, at_ms: int) -> bool:
    at = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _window(cert: x509.Certificate) -> str:
    return f"valid {cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()}"


def _caller_certificate(caller_cert: bytes, caller_msp: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(bytes(caller_cert))
    except ValueError as exc:
        raise AccessDenied(f"the caller's identity of {caller_msp} has no readable X.509 certificate") from exc


def check_org_ca(ca_pem: str, caller_cert: bytes, caller_msp: str, at_ms: int) -> str:
    """Check an org CA certificate its org registers; return it re-encoded as PEM.

    It must be a CA certificate (basic constraints ``CA:TRUE``; key usage, if present,
    allowing certificate signing) with an EC key, valid at ``at_ms``, and its key must
    have signed the caller's own certificate: an org can only register the CA that
    vouches for its own identity. Shape problems are ``INVALID``; a CA that did not issue
    the caller's certificate is ``ACCESS_DENIED``.
    """
    ca = load_pem_certificate(ca_pem, "org CA certificate")
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise Invalid("org CA certificate is not a CA certificate (basic constraints CA:TRUE)")
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise Invalid("org CA certificate does not allow keyCertSign")
    try:
        key = ca.public_key()
    except ValueError as exc:
        raise Invalid(f"org CA certificate has an unreadable key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Invalid("org CA certificate key must be ECDSA")
    if not _valid(ca, at_ms):
        raise Invalid(f"org CA certificate is not valid at the transaction time ({_window(ca)})")
    if not issued_by(_caller_certificate(caller_cert, caller_msp), ca):
        raise AccessDenied(
            f"the caller's certificate of {caller_msp} was not issued (signed) by this org CA certificate"
        )
    return ca.public_bytes(serialization.Encoding.PEM).decode("ascii")


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


def check_participant_cert(cert_pem: str, caller_cert: bytes, caller_msp: str, at_ms: int, ca_pem: str) -> str:
    """Check a participant certificate against the rules above; return it re-encoded as PEM.

    ``caller_cert`` is the X.509 of the identity registering it (bytes from the client
    identity), ``ca_pem`` the CA its org registered. Wrong curve, expiry or a CA
    certificate are ``INVALID``; a certificate the org CA did not sign, or a caller whose
    own certificate it did not sign, is ``ACCESS_DENIED``.
    """
    cert = load_pem_certificate(cert_pem, "participant certificate")
    if p256_public_key(cert) is None:
        raise Invalid("participant certificate key must be ECDSA P-256 (secp256r1)")
    if not _valid(cert, at_ms):
        raise Invalid(f"participant certificate is not valid at the transaction time ({_window(cert)})")
    _check_end_entity(cert)
    ca = load_pem_certificate(ca_pem, "registered org CA certificate")
    if not issued_by(_caller_certificate(caller_cert, caller_msp), ca):
        raise AccessDenied(
            f"the caller's certificate was not issued by the registered CA of its organisation {caller_msp}"
        )
    if not issued_by(cert, ca):
        raise AccessDenied(
            f"participant certificate was not issued by the CA of the caller's organisation {caller_msp}"
        )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def valid_at(cert_pem: str, at_ms: int) -> bool:
    """Whether the (registered) certificate is within its validity window at ``at_ms``."""
    return _valid(load_pem_certificate(cert_pem, "participant certificate"), at_ms)


def verify_p256_signature(data: bytes, signature_b64: str, cert_pem: str) -> str | None:
    """``None`` if ``signature_b64`` (DER, low-S, canonical base64) verifies ``data`` with
    the certificate's P-256 key, else a short reason."""
    if not isinstance(signature_b64, str) or not 0 < len(signature_b64) <= 96:
        return "signature is not a base64 string of at most 96 characters"
    try:
        der = base64.b64decode(signature_b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return "signature is not base64"
    # One signature, one spelling: padding bits or other variants that decode the same are refused.
    if base64.b64encode(der).decode("ascii") != signature_b64:
        return "signature is not canonical base64"
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        return "signature is not DER"
    if encode_dss_signature(r, s) != der:
        return "signature is not canonical DER"
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        return "signature values are out of range"
    if s > P256_ORDER // 2:
        return "signature is not in low-S form"
    key = p256_public_key(load_pem_certificate(cert_pem, "registered certificate"))
    if key is None:
        return "registered certificate is not P-256"
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "signature does not verify with the registered certificate"
    return None
