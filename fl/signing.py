"""Client-side signing: the outermost ClientApp mod signs what actually leaves the client.

The mod hashes the global model the client received (``base_model``) and the tensors in
the reply (``update``), builds the DESIGN §3 manifest, signs it with the institution's
P-256 key, and attaches ``{"manifest", "signature"}`` as the reply's ``"audit"``
ConfigRecord. Mods inside it (local DP, clipping) may change the arrays freely: the
signature covers the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message

from fl.records import to_arrays
from ledger.formats import Manifest, sign, update_digest

__all__ = ["SignerSpec", "make_signing_mod", "AUDIT_KEY"]

AUDIT_KEY = "audit"
log = structlog.get_logger("fedledger.client")
CallNext = Callable[[Message, Context], Message]


@dataclass(frozen=True)
class SignerSpec:
    """Who signs: the participant id and its private key."""

    participant: str
    key: ec.EllipticCurvePrivateKey


def make_signing_mod(
    resolve: Callable[[Context], SignerSpec],
) -> Callable[[Message, Context, CallNext], Message]:
    """A mod that signs train replies as the participant ``resolve(context)`` names."""

    def signing_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train":
            return call_next(msg, context)
        config = msg.content["config"]
        base_model = update_digest(to_arrays(msg.content["arrays"]))
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        signer = resolve(context)
        arrays = to_arrays(reply.content["arrays"])
        manifest = Manifest(
            federation=str(config["federation"]),
            participant=signer.participant,
            round=int(config["round"]),
            base_model=base_model,
            update=update_digest(arrays),
            num_examples=int(reply.content["metrics"]["num-examples"]),
        )
        data = manifest.to_bytes()
        reply.content[AUDIT_KEY] = ConfigRecord(
            {"manifest": data.decode("utf-8"), "signature": sign(data, signer.key)}
        )
        log.info("update_signed", round=manifest.round, participant=manifest.participant,
                 update=manifest.update, manifest_hash=manifest.hash(), num_examples=manifest.num_examples)
        return reply

    return signing_mod
