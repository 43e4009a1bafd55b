"""``flower-supernode`` authenticated through the signer: the node never holds the key.

Flower 1.42 takes the SuperNode's authentication key only as a file
(``--auth-supernode-private-key``, read with ``load_ssh_private_key`` in
``flwr.supernode.cli.flower_supernode._try_setup_client_authentication``), and then
only calls ``private_key.sign(timestamp, ECDSA(SHA256))`` on it for every Fleet request
(``NodeAuthHttpInterceptor``). This entry point runs Flower's own ``flower_supernode``
with that one function replaced: the key it hands Flower is a :class:`SignerBackedKey`
whose ``sign`` asks the signer's ``node_auth`` operation, which signs ISO-8601
timestamps within a few minutes of now and nothing else (a manifest, being JSON, can
never pass for one). The SuperNode process — and the ClientApps it spawns — so get
neither the key file nor the key.

Usage (what :mod:`fl.deploy.client` runs)::

    python -m fl.signer.supernode --signer-socket SOCKET <flower-supernode arguments>

This relies on a private function of the pinned Flower release; a Flower upgrade that
renames it makes this entry point fail at start-up (``AttributeError``), not silently.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fl.signer.client import SignerClient, SignerError

__all__ = ["SignerBackedKey", "main"]


class SignerBackedKey(ec.EllipticCurvePrivateKey):
    """A P-256 "private key" that signs through the signer and cannot be exported."""

    def __init__(self, client: SignerClient) -> None:
        self._client = client
        self._public = client.public_key()

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """Sign ``data`` (a node-auth timestamp) with ECDSA-SHA256 in the signer."""
        algorithm = getattr(signature_algorithm, "algorithm", None)
        if not isinstance(signature_algorithm, ec.ECDSA) or not isinstance(algorithm, hashes.SHA256):
            raise ValueError("the signer signs ECDSA with SHA-256 only")
        return self._client.node_auth(bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The institution's public key."""
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        """P-256."""
        return self._public.curve

    @property
    def key_size(self) -> int:
        """256."""
        return self._public.key_size

    def _refuse(self, *_: Any, **__: Any) -> NoReturn:
        raise TypeError("the institution's key stays in its signer: it cannot be exported or used here")

    exchange = _refuse  # type: ignore[assignment]
    private_numbers = _refuse  # type: ignore[assignment]
    private_bytes = _refuse  # type: ignore[assignment]

    def __copy__(self) -> SignerBackedKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SignerBackedKey:
        return self


def _split(argv: list[str]) -> tuple[str, list[str]]:
    if len(argv) < 2 or argv[0] != "--signer-socket":
        raise SystemExit("usage: python -m fl.signer.supernode --signer-socket SOCKET <flower-supernode args>")
    if any(a.startswith("--auth-supernode-private-key") for a in argv[2:]):
        raise SystemExit("--auth-supernode-private-key is not accepted: the key stays in the signer")
    return argv[1], argv[2:]


def main(argv: list[str] | None = None) -> None:
    """Run Flower's SuperNode with its node-auth key served by the signer."""
    socket_path, flower_args = _split(list(sys.argv[1:] if argv is None else argv))
    # The package re-exports a function of the same name: fetch the module itself.
    module = importlib.import_module("flwr.supernode.cli.flower_supernode")
    try:
        key = SignerBackedKey(SignerClient(socket_path))
    except SignerError as exc:
        raise SystemExit(f"error: {exc}") from None

    def authentication(_args: Any) -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
        return key, key.public_key()

    if not hasattr(module, "_try_setup_client_authentication"):
        raise SystemExit("this Flower release has no _try_setup_client_authentication: update fl.signer.supernode")
    module._try_setup_client_authentication = authentication
    sys.argv = ["flower-supernode", *flower_args]
    module.flower_supernode()


if __name__ == "__main__":  # pragma: no cover
    main()
