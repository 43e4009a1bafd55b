"""Ask the institution's signer for signatures over its Unix socket (what the node uses).

The ClientApp and the SuperNode never hold the key: they send a request line and read
one reply line. A refusal raises :class:`SignerRefused` with the signer's stable reason;
a signer that cannot be reached raises :class:`SignerUnavailable`. Nothing here imports
Flower, the ledger or a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["MAX_LINE", "SignerError", "SignerUnavailable", "SignerRefused", "SignerClient"]

MAX_LINE = 8192  # bytes of one request or reply line


class SignerError(RuntimeError):
    """Base of the signer client's errors."""


class SignerUnavailable(SignerError):
    """The signer's socket cannot be reached or answered out of protocol."""


class SignerRefused(SignerError):
    """The signer refused the request; ``reason`` is its stable reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"signer refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class SignerClient:
    """One request per connection to the signer at ``socket_path``."""

    def __init__(self, socket_path: str | Path, timeout: float = 30.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the reply (``{"ok": true, …}``) or :class:`SignerRefused`."""
        line = json.dumps(request, separators=(",", ":")).encode("utf-8") + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(line)
                data = b""
                while not data.endswith(b"\n") and len(data) <= MAX_LINE:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise SignerUnavailable(f"signer at {self.socket_path} cannot be reached: {exc}") from None
        try:
            reply = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SignerUnavailable(f"signer at {self.socket_path} sent no valid reply") from None
        if not isinstance(reply, dict):
            raise SignerUnavailable(f"signer at {self.socket_path} sent no valid reply")
        if reply.get("ok") is not True:
            raise SignerRefused(str(reply.get("reason", "unknown")), str(reply.get("detail", "")))
        return reply

    def sign_manifest(self, manifest: str, update: str) -> str:
        """The base64 low-S DER signature of ``manifest`` (canonical JSON), if the policy allows."""
        reply = self.call({"op": "sign_manifest", "manifest": manifest, "update": update})
        signature = reply.get("signature")
        if not isinstance(signature, str):
            raise SignerUnavailable("signer reply has no signature")
        return signature

    def sign_evaluation(self, manifest: str) -> str:
        """The signature of an evaluation manifest (canonical JSON), if the policy allows."""
        reply = self.call({"op": "sign_evaluation", "manifest": manifest})
        signature = reply.get("signature")
        if not isinstance(signature, str):
            raise SignerUnavailable("signer reply has no signature")
        return signature

    def node_auth(self, message: bytes) -> bytes:
        """DER signature of a Flower node-authentication timestamp."""
        reply = self.call({"op": "node_auth", "message": message.decode("ascii")})
        try:
            return base64.b64decode(str(reply.get("signature", "")), validate=True)
        except (binascii.Error, ValueError):
            raise SignerUnavailable("signer reply has no valid signature") from None

    def record_receipt(self, receipt: dict[str, Any]) -> None:
        """Hand the coordinator's signed receipt to the signer, which checks and journals it;
        :class:`SignerRefused` if its signature or subject does not hold."""
        self.call({"op": "record_receipt", "receipt": receipt})

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public key the signer signs with."""
        reply = self.call({"op": "public_key"})
        try:
            key = serialization.load_pem_public_key(str(reply.get("public_key", "")).encode("ascii"))
        except ValueError:
            raise SignerUnavailable("signer reply has no valid public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SignerUnavailable("signer key is not ECDSA P-256")
        return key

    def status(self) -> dict[str, Any]:
        """Who the signer signs for, its last signed round and journal head."""
        return self.call({"op": "status"})
