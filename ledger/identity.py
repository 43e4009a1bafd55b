"""Who calls the ledger, and how they sign: the seam between a caller and any backend.

An :class:`~ledger.records.Identity` is data (MSP id + certificate); a :data:`Signer` is a
function from a SHA-256 *digest* to a DER ECDSA signature, so a key may live in a file,
an HSM or a signing service. :class:`Credentials` pairs the two. The embedded backend
needs only the identity (it cannot prove key holdership: its trust boundary); the
Fabric backend signs every proposal and fails closed without a signer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ledger.formats import normalize_low_s
from ledger.pki import certificate_pem, load_certificate, load_private_key
from ledger.records import Identity

__all__ = ["Signer", "Credentials", "signer_from_key", "load_signer"]

Signer = Callable[[bytes], bytes]
"""Signs a SHA-256 digest; returns a DER-encoded ECDSA signature."""


def signer_from_key(private_key: ec.EllipticCurvePrivateKey) -> Signer:
    """A :data:`Signer` for an ECDSA P-256 key whose signatures are always low-S."""
    curve = getattr(private_key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        raise ValueError("a ledger signing key must be an ECDSA P-256 private key")

    def sign(digest: bytes) -> bytes:
        if len(digest) != 32:
            raise ValueError(f"a SHA-256 digest is 32 bytes, got {len(digest)}")
        der = private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        # Fabric refuses s > n/2 (both (r, s) and (r, n - s) verify; it accepts one).
        return normalize_low_s(der)

    return sign


def load_signer(key_path: str | os.PathLike[str]) -> Signer:
    """A low-S :data:`Signer` for the P-256 key at ``key_path`` (refused if others may read it)."""
    return signer_from_key(load_private_key(Path(key_path)))


@dataclass(frozen=True)
class Credentials:
    """An identity and, where this process holds it, the function that signs as it."""

    identity: Identity
    signer: Signer | None = None

    @classmethod
    def from_files(
        cls, msp_id: str, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None = None
    ) -> Credentials:
        """Credentials from a certificate file and (optionally) its private key file.

        Errors name the file and the problem (:class:`ledger.pki.KeyFileError`).
        """
        cert = load_certificate(cert_path)
        signer = None if key_path is None else load_signer(key_path)
        return cls(Identity(msp_id=msp_id, cert_pem=certificate_pem(cert)), signer)

    @property
    def msp_id(self) -> str:
        """The caller's MSP id."""
        return self.identity.msp_id
