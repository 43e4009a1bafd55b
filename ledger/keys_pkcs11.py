"""Institution keys that never leave a PKCS#11 token (an HSM, or SoftHSM2 for tests).

* :func:`generate_key` creates an ECDSA P-256 key pair *in* the token: the private key
  is ``SENSITIVE`` and not ``EXTRACTABLE``, so no API call can read it out.
* :class:`Pkcs11Key` signs SHA-256 digests in the token (``CKM_ECDSA``). Tokens return
  the raw ``r || s``; it is DER-encoded and normalised to low-S (DESIGN §3), so it is a
  :data:`ledger.identity.Signer` like a key file's.
* :func:`make_csr` builds the participant's CSR (CN = participant, O = org) and has the
  token sign it: the certificate request proves possession without the key leaving.

The token is named by :class:`Pkcs11Config`: the module (``libsofthsm2.so`` or the HSM
vendor's library), the token label, the key label and the user PIN. The PIN is a
secret: read it from a 0600 file at the edge, never from a command line.

python-pkcs11 is imported only here, so nothing else needs it installed.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ledger.formats import normalize_low_s, validate_id
from ledger.pki import KeyFileError

__all__ = ["Pkcs11Config", "Pkcs11Error", "Pkcs11Key", "generate_key", "make_csr", "read_pin"]


class Pkcs11Error(KeyFileError):
    """The token, its key or the PKCS#11 module cannot be used (one line, says which)."""


@dataclass(frozen=True)
class Pkcs11Config:
    """Where the key is: module path, token label, key label, and the user PIN."""

    module: Path
    token_label: str
    key_label: str
    pin: str

    def describe(self) -> str:
        """For logs and messages (never the PIN)."""
        return f"pkcs11:{self.module.name}/token={self.token_label}/key={self.key_label}"


def read_pin(path: Path) -> str:
    """The PIN in ``path`` (first line); refused if group or others may read the file."""
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Pkcs11Error(f"{path}: PIN file cannot be read ({exc.strerror})") from None
    if mode & 0o077:
        raise Pkcs11Error(f"{path}: PIN file permissions {mode:04o} are too open (chmod 600 {path})")
    pin = text.splitlines()[0].strip() if text.strip() else ""
    if not pin:
        raise Pkcs11Error(f"{path}: PIN file is empty")
    return pin


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as exc:  # an optional dependency
        raise Pkcs11Error("PKCS#11 keys need python-pkcs11 (pip install python-pkcs11)") from exc
    return pkcs11


_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _token(config: Pkcs11Config) -> Any:
    pkcs11 = _pkcs11()
    with _LIBS_LOCK:  # a PKCS#11 module is initialised once per process
        lib = _LIBS.get(str(config.module))
        if lib is None:
            try:
                lib = pkcs11.lib(str(config.module))
            except (RuntimeError, OSError, pkcs11.PKCS11Error) as exc:
                raise Pkcs11Error(f"{config.module}: cannot load the PKCS#11 module ({exc})") from None
            _LIBS[str(config.module)] = lib
    try:
        return lib.get_token(token_label=config.token_label)
    except pkcs11.NoSuchToken:
        raise Pkcs11Error(f"{config.describe()}: no token with this label") from None
    except pkcs11.MultipleTokensReturned:
        raise Pkcs11Error(f"{config.describe()}: several tokens have this label") from None


def _session(config: Pkcs11Config, rw: bool = False) -> Any:
    pkcs11 = _pkcs11()
    token = _token(config)
    try:
        return token.open(rw=rw, user_pin=config.pin)
    except pkcs11.UserAlreadyLoggedIn:
        # PKCS#11 logs in per application: another session of this process already did.
        return token.open(rw=rw)
    except pkcs11.PinIncorrect:
        raise Pkcs11Error(f"{config.describe()}: the PIN is not correct") from None
    except pkcs11.PKCS11Error as exc:
        raise Pkcs11Error(f"{config.describe()}: cannot open a session ({type(exc).__name__})") from None


def _public_from_token(session: Any, label: str) -> ec.EllipticCurvePublicKey:
    pkcs11 = _pkcs11()
    from pkcs11.util.ec import encode_ec_public_key

    try:
        public = session.get_key(object_class=pkcs11.ObjectClass.PUBLIC_KEY, key_type=pkcs11.KeyType.EC,
                                 label=label)
    except pkcs11.NoSuchKey:
        raise Pkcs11Error(f"no EC public key labelled {label!r} in the token") from None
    except pkcs11.MultipleObjectsReturned:
        raise Pkcs11Error(f"several EC public keys are labelled {label!r} in the token") from None
    key = serialization.load_der_public_key(encode_ec_public_key(public))
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise Pkcs11Error(f"the token key {label!r} is not ECDSA P-256")
    return key


def generate_key(config: Pkcs11Config, *, overwrite: bool = False) -> ec.EllipticCurvePublicKey:
    """Create a P-256 key pair in the token (private half non-extractable); its public key."""
    pkcs11 = _pkcs11()
    from pkcs11.util.ec import encode_named_curve_parameters

    with _session(config, rw=True) as session:
        existing = list(session.get_objects({pkcs11.Attribute.LABEL: config.key_label}))
        if existing and not overwrite:
            raise Pkcs11Error(f"{config.describe()}: a key with this label exists already (not overwritten)")
        for obj in existing:
            obj.destroy()
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC,
            {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        key_id = hashlib.sha256(config.key_label.encode("utf-8")).digest()[:16]
        params.generate_keypair(
            store=True,
            label=config.key_label,
            id=key_id,
            public_template={pkcs11.Attribute.VERIFY: True},
            private_template={
                pkcs11.Attribute.SIGN: True,
                pkcs11.Attribute.SENSITIVE: True,
                pkcs11.Attribute.EXTRACTABLE: False,
                pkcs11.Attribute.PRIVATE: True,
            },
        )
        return _public_from_token(session, config.key_label)


class Pkcs11Key:
    """A P-256 key in a token: its public key, and low-S DER signatures of digests.

    One session is kept open (logged in) for the signer's lifetime; calls are serialised
    because a PKCS#11 session is not safe for concurrent use.
    """

    def __init__(self, config: Pkcs11Config) -> None:
        pkcs11 = _pkcs11()
        self.config = config
        self._session = _session(config)
        try:
            self._public = _public_from_token(self._session, config.key_label)
            self._private = self._session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY,
                                                  key_type=pkcs11.KeyType.EC, label=config.key_label)
        except pkcs11.NoSuchKey:
            self._session.close()
            raise Pkcs11Error(f"{config.describe()}: no EC private key with this label") from None
        except Pkcs11Error:
            self._session.close()
            raise
        if self._private[pkcs11.Attribute.EXTRACTABLE] or not self._private[pkcs11.Attribute.SENSITIVE]:
            self._session.close()
            raise Pkcs11Error(f"{config.describe()}: the private key is extractable (refused: it could leave "
                              "the token)")
        self._lock = threading.Lock()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key's public half."""
        return self._public

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA over a SHA-256 ``digest`` in the token: DER, low-S."""
        pkcs11 = _pkcs11()
        if len(digest) != 32:
            raise ValueError(f"a SHA-256 digest is 32 bytes, got {len(digest)}")
        with self._lock:
            try:
                raw = self._private.sign(digest, mechanism=pkcs11.Mechanism.ECDSA)
            except pkcs11.PKCS11Error as exc:
                raise Pkcs11Error(f"{self.config.describe()}: signing failed ({type(exc).__name__})") from None
        if len(raw) != 64:
            raise Pkcs11Error(f"{self.config.describe()}: token returned a {len(raw)}-byte signature, not r||s")
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        return normalize_low_s(encode_dss_signature(r, s))

    def close(self) -> None:
        """Log out and close the session."""
        self._session.close()


def make_csr(key: Pkcs11Key, participant: str, org: str | None = None) -> x509.CertificateSigningRequest:
    """A CSR with CN = ``participant`` and O = ``org``, signed in the token.

    cryptography signs CSRs only with keys it holds, so the request is assembled with
    asn1crypto (a python-pkcs11 dependency), signed by the token, then parsed back and
    its self-signature checked.
    """
    from asn1crypto import csr as asn1_csr
    from asn1crypto import keys as asn1_keys

    validate_id(participant, "participant id")
    subject: dict[str, str] = {}
    if org:
        subject["organization_name"] = org
    subject["common_name"] = participant
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    info = asn1_csr.CertificationRequestInfo({
        "version": "v1",
        "subject": _asn1_name(subject),
        "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki),
        "attributes": [],
    })
    signature = key.sign_digest(hashlib.sha256(info.dump()).digest())
    request = asn1_csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": signature,
    })
    parsed = x509.load_der_x509_csr(request.dump())
    if not parsed.is_signature_valid:
        raise Pkcs11Error("the CSR signed by the token does not verify")
    return parsed


def _asn1_name(attrs: dict[str, str]) -> Any:
    """An X.501 name in the given attribute order (O before CN, as :mod:`ledger.pki` writes it)."""
    from asn1crypto import x509 as asn1_x509

    rdns = [[asn1_x509.NameTypeAndValue({"type": kind,
                                         "value": asn1_x509.DirectoryString(name="utf8_string", value=value)})]
            for kind, value in attrs.items()]
    return asn1_x509.Name(name="", value=asn1_x509.RDNSequence(rdns))
