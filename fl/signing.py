"""Client-side signing: the outermost ClientApp mod signs what actually leaves the client.

The mod hashes the global model the client received (``base_model``) and the tensors in
the reply (``update``), builds the DESIGN §3 manifest, has it signed, and attaches
``{"manifest", "signature"}`` as the reply's ``"audit"`` ConfigRecord. Mods inside it
(local DP, clipping) may change the arrays freely: the signature covers the result.

When the train handler states how it trained — a ``"training"`` ConfigRecord holding
``{"claim": <canonical JSON of a TrainingClaim>}`` (algorithm and FedProx μ, the
compression of the arrays sent, the DP-SGD parameters and ε) — the manifest is version
2 and signs that claim with the update; without it, version 1 as before.

Who signs is a :data:`ManifestSigner`. In deployment it is the institution's signer
(:func:`socket_signer`): the ClientApp sends the manifest over a Unix socket and gets a
signature back — or a refusal, which fails the reply (Flower sends an error reply, the
coordinator records ``reply_error``), so nothing leaves unsigned or signed off-policy.
The demo's in-process simulation and unit tests sign with a key object
(:func:`key_signer`): there is no institution boundary to keep there.

Evaluate replies are signed the same way, by the same signer: the mod hashes the global
model the client evaluated (``model``), takes the hold-out metrics from the reply's
MetricRecord (integers in millionths, :mod:`fl.evaluation`) and attaches a signed
:class:`~ledger.formats.EvaluationManifest` as the reply's ``"audit"`` record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message

from fl.records import to_arrays
from fl.signer.client import SignerClient, SignerRefused
from ledger.formats import EvaluationManifest, FormatError, Manifest, TrainingClaim, sign, update_digest

__all__ = ["AUDIT_KEY", "TRAINING_KEY", "ManifestSigner", "SignerSpec", "NoSigner", "key_signer", "socket_signer",
           "make_signing_mod", "training_claim"]

AUDIT_KEY = "audit"
TRAINING_KEY = "training"  # the train reply's ConfigRecord {"claim": canonical JSON of a TrainingClaim}
log = structlog.get_logger("fedledger.client")
CallNext = Callable[[Message, Context], Message]
ManifestSigner = Callable[[Manifest | EvaluationManifest], str]
"""Signs an update or evaluation manifest; returns the base64 low-S DER signature (DESIGN §3)."""


class NoSigner(RuntimeError):
    """The node has no way to sign: the reply is failed, never sent unsigned."""


@dataclass(frozen=True)
class SignerSpec:
    """Who signs: the participant id and the function that signs as it."""

    participant: str
    sign: ManifestSigner


def key_signer(key: ec.EllipticCurvePrivateKey) -> ManifestSigner:
    """Sign with a key held in this process (demo simulation and tests only)."""
    return lambda manifest: sign(manifest.to_bytes(), key)


def socket_signer(path: str | Path) -> ManifestSigner:
    """Ask the institution's signer at ``path``; a refusal raises :class:`SignerRefused`."""
    client = SignerClient(path)

    def ask(manifest: Manifest | EvaluationManifest) -> str:
        text = manifest.to_bytes().decode("utf-8")
        if isinstance(manifest, EvaluationManifest):
            return client.sign_evaluation(text)
        return client.sign_manifest(text, manifest.update)

    return ask


def training_claim(reply: Message) -> TrainingClaim | None:
    """The training claim the train handler put in ``reply`` (its ``"training"`` record), if any.

    Raises ``ValueError`` when the record is there but does not hold a valid claim: the
    reply then fails rather than being signed as version 1 without the claim.
    """
    if TRAINING_KEY not in reply.content.config_records:
        return None
    record = reply.content.config_records[TRAINING_KEY]
    text = record.get("claim")
    if not isinstance(text, str):
        raise ValueError(f"the reply's {TRAINING_KEY!r} record has no 'claim' text")
    try:
        return TrainingClaim.from_dict(json.loads(text))
    except (json.JSONDecodeError, FormatError) as exc:
        raise ValueError(f"the reply's training claim is not valid: {exc}") from None


def make_signing_mod(
    resolve: Callable[[Context], SignerSpec],
) -> Callable[[Message, Context, CallNext], Message]:
    """A mod that signs train and evaluate replies as the participant ``resolve(context)`` names."""

    def signing_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
        kind = msg.metadata.message_type.split(".")[0]
        if kind == "evaluate":
            return _sign_evaluation(msg, context, call_next, resolve)
        if kind != "train":
            return call_next(msg, context)
        config = msg.content["config"]
        base_model = update_digest(to_arrays(msg.content["arrays"]))
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        signer = resolve(context)
        arrays = to_arrays(reply.content["arrays"])
        training = training_claim(reply)
        manifest = Manifest(
            federation=str(config["federation"]),
            participant=signer.participant,
            round=int(config["round"]),
            base_model=base_model,
            update=update_digest(arrays),
            num_examples=int(reply.content["metrics"]["num-examples"]),
            v=1 if training is None else 2,
            training=training,
        )
        data = manifest.to_bytes()
        try:
            signature = signer.sign(manifest)
        except SignerRefused as exc:
            log.warning("update_refused_by_signer", round=manifest.round, participant=manifest.participant,
                        reason=exc.reason, detail=exc.detail)
            raise
        reply.content[AUDIT_KEY] = ConfigRecord({"manifest": data.decode("utf-8"), "signature": signature})
        log.info("update_signed", round=manifest.round, participant=manifest.participant, v=manifest.v,
                 update=manifest.update, manifest_hash=manifest.hash(), num_examples=manifest.num_examples)
        return reply

    return signing_mod


def _sign_evaluation(
    msg: Message, context: Context, call_next: CallNext, resolve: Callable[[Context], SignerSpec]
) -> Message:
    """Sign an evaluate reply: the model actually received, the metrics actually returned."""
    config = msg.content["config"]
    model = update_digest(to_arrays(msg.content["arrays"]))
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    signer = resolve(context)
    metrics = reply.content["metrics"]
    auc = metrics.get("auc-ppm")
    manifest = EvaluationManifest(
        federation=str(config["federation"]),
        participant=signer.participant,
        round=int(config["round"]),
        model=model,
        num_examples=int(metrics["num-examples"]),
        accuracy_ppm=int(metrics["accuracy-ppm"]),
        auc_ppm=None if auc is None else int(auc),
        log_loss_ppm=int(metrics["log-loss-ppm"]),
    )
    try:
        signature = signer.sign(manifest)
    except SignerRefused as exc:
        log.warning("evaluation_refused_by_signer", round=manifest.round, participant=manifest.participant,
                    reason=exc.reason, detail=exc.detail)
        raise
    reply.content[AUDIT_KEY] = ConfigRecord({"manifest": manifest.to_bytes().decode("utf-8"),
                                             "signature": signature})
    log.info("evaluation_signed", round=manifest.round, participant=manifest.participant, model=model,
             manifest_hash=manifest.hash(), num_examples=manifest.num_examples)
    return reply
