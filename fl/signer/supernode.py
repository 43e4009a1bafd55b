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

    python -m fl.signer.supernode --signer-socket SOCKET [--approve-app SHA256]...
        [--approved-apps FILE] <flower-supernode arguments>

With ``--approve-app``/``--approved-apps`` the node runs only ClientApps whose FAB hash
the institution approved (:mod:`fl.signer.pinning`); without them it runs whatever app
the coordinator's run ships, as Flower does.

This relies on a private function of the pinned Flower release; a Flower upgrade that
renames it makes this entry point fail at start-up (``AttributeError``), not silently.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import structlog

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fl.runtime import configure_logging
from fl.signer.client import SignerClient, SignerError
from fl.signer.pinning import AppPin, PinError, install, load_approved

__all__ = ["SignerBackedKey", "WrapperArgs", "main", "parse_args"]

log = structlog.get_logger("fedledger.supernode")


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


@dataclass(frozen=True)
class WrapperArgs:
    """This wrapper's own options, and the rest for ``flower-supernode``."""

    signer_socket: str
    approved: tuple[str, ...] = ()
    approved_file: Path | None = None
    flower: tuple[str, ...] = ()

    @property
    def pinned(self) -> bool:
        """Whether the node runs only approved apps."""
        return bool(self.approved) or self.approved_file is not None


_USAGE = ("usage: python -m fl.signer.supernode --signer-socket SOCKET [--approve-app SHA256]... "
          "[--approved-apps FILE] <flower-supernode args>")


def parse_args(argv: list[str]) -> WrapperArgs:
    """Split ``argv``: the wrapper's leading options, then Flower's arguments."""
    if len(argv) < 2 or argv[0] != "--signer-socket":
        raise SystemExit(_USAGE)
    socket_path, rest = argv[1], list(argv[2:])
    approved: list[str] = []
    approved_file: Path | None = None
    while rest and rest[0] in ("--approve-app", "--approved-apps"):
        if len(rest) < 2:
            raise SystemExit(f"{rest[0]} needs a value\n{_USAGE}")
        if rest[0] == "--approve-app":
            approved.append(rest[1])
        else:
            approved_file = Path(rest[1])
        del rest[:2]
    if any(a.startswith("--auth-supernode-private-key") for a in rest):
        raise SystemExit("--auth-supernode-private-key is not accepted: the key stays in the signer")
    return WrapperArgs(socket_path, tuple(approved), approved_file, tuple(rest))


def main(argv: list[str] | None = None) -> None:
    """Run Flower's SuperNode with its node-auth key served by the signer."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.pinned:
        try:
            approved = load_approved(args.approved, args.approved_file)
        except PinError as exc:
            raise SystemExit(f"error: {exc}") from None
        configure_logging(json_logs=True)  # the refusal events: JSON lines in the node's log
        try:
            install(AppPin(approved))
        except RuntimeError as exc:
            raise SystemExit(f"error: {exc}") from None
        log.info("app_pinning_enabled", approved=sorted(approved))
    # The package re-exports a function of the same name: fetch the module itself.
    module = importlib.import_module("flwr.supernode.cli.flower_supernode")
    socket_path = args.signer_socket
    try:
        key = SignerBackedKey(SignerClient(socket_path))
    except SignerError as exc:
        raise SystemExit(f"error: {exc}") from None

    def authentication(_args: Any) -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
        return key, key.public_key()

    if not hasattr(module, "_try_setup_client_authentication"):
        raise SystemExit("this Flower release has no _try_setup_client_authentication: update fl.signer.supernode")
    module._try_setup_client_authentication = authentication
    sys.argv = ["flower-supernode", *args.flower]
    module.flower_supernode()


if __name__ == "__main__":  # pragma: no cover
    main()
