"""Where the signer's key lives: a 0600 PEM file, or a PKCS#11 token.

Either way the signer sees a :class:`SigningKey`: the public key (to check it against
the institution's certificate and to answer who it signs as) and a
:data:`ledger.identity.Signer` that turns a SHA-256 digest into a low-S DER signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from ledger.identity import Signer, signer_from_key
from ledger.pki import load_private_key

__all__ = ["SigningKey", "pem_key", "pkcs11_key"]


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class SigningKey:
    """A P-256 key the signer uses without ever handing it out."""

    public_key: ec.EllipticCurvePublicKey
    sign_digest: Signer
    describe: str
    close: Callable[[], None] = field(default=_nothing)


def pem_key(path: Path) -> SigningKey:
    """The key in a PEM/OpenSSH file (refused if group or others may read it)."""
    key = load_private_key(path)
    return SigningKey(key.public_key(), signer_from_key(key), f"file:{path}")


def pkcs11_key(module: Path, token_label: str, key_label: str, pin: str) -> SigningKey:
    """The key labelled ``key_label`` in a PKCS#11 token (never extracted)."""
    from ledger.keys_pkcs11 import Pkcs11Config, Pkcs11Key

    token = Pkcs11Key(Pkcs11Config(module, token_label, key_label, pin))
    return SigningKey(token.public_key(), token.sign_digest, token.config.describe(), token.close)
