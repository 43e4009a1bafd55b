"""Canonical formats shared by participants, the coordinator and auditors (DESIGN §3).

Everything that is hashed or signed goes through this module, so that an auditor
re-implementing the formats in another language only has to match these functions:

* :func:`canonical_json` — keys sorted, ``,``/``:`` separators, UTF-8 as-is, no NaN.
* :func:`update_digest` — the ``FLU1`` digest of a named set of tensors.
* :class:`Manifest` — what a participant signs; :meth:`Manifest.to_bytes` is the signed text.
* :class:`EvaluationManifest` — what a participant signs about the global model it
  evaluated on its hold-out; ``"kind":"evaluation"`` keeps it from ever parsing (or
  verifying) as an update manifest, and an update manifest from parsing as one of these.
* :func:`sign` / :func:`verify` — ECDSA P-256 SHA-256, DER, low-S, base64.

This module depends on numpy and cryptography only (no Flower, no torch).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "ID_PATTERN",
    "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURE_B64",
    "P256_ORDER",
    "FormatError",
    "SignatureError",
    "MANIFEST_VERSIONS",
    "Manifest",
    "TrainingClaim",
    "PrivacyClaim",
    "PLAIN_TRAINING",
    "EvaluationManifest",
    "EVALUATION_KIND",
    "MAX_LOG_LOSS_PPM",
    "PPM",
    "canonical_json",
    "sha256_hex",
    "update_digest",
    "validate_id",
    "sign",
    "verify",
    "normalize_low_s",
    "public_key_of",
]

ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
MANIFEST_VERSION = 1
# Update manifests: version 2 adds the signed training claim; version 1 still verifies.
MANIFEST_VERSIONS = (1, 2)
# Metrics and claims are integers in millionths: signed and chaincode data hold no floats.
PPM = 1_000_000
DIGEST_MAGIC = b"FLU1"
# A canonical manifest is about 300 bytes; anything much longer is refused unparsed.
MAX_MANIFEST_BYTES = 1024
# The longest base64 DER encoding of a P-256 ECDSA signature (72 bytes of DER).
MAX_SIGNATURE_B64 = 96
# Order of the P-256 group; signatures with s > n/2 are malleable twins and are refused.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HALF_ORDER = P256_ORDER // 2
_HEX64 = re.compile(r"[0-9a-f]{64}")


class FormatError(ValueError):
    """A value does not follow the canonical format (the message says which rule)."""


class SignatureError(ValueError):
    """A signature does not verify.

    ``reason`` is the stable reason code recorded on the ledger: ``bad_signature`` or
    ``high_s``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` to canonical JSON bytes (DESIGN §3).

    Floats must be finite; ``bool`` stays a JSON boolean; keys must be strings.
    """
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError as exc:
        raise FormatError(f"not canonical JSON: {exc}") from exc
    return text.encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid federation/participant id, else raise FormatError."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise FormatError(f"{what} {value!r} must match [a-z0-9][a-z0-9-]{{0,63}}")
    return value


def _le_bytes(array: np.ndarray) -> memoryview:
    """A C-order little-endian view of ``array``'s buffer, copying only when needed."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not _LITTLE):
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return memoryview(array).cast("B") if array.size else memoryview(b"")


_LITTLE = np.little_endian


def _dtype_str(dtype: np.dtype) -> str:
    # dtype.str of a single-byte or native type, written little-endian ("<f4", "|u1").
    text = dtype.str
    if text[0] == ">":
        text = "<" + text[1:]
    return text


def update_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """The ``FLU1`` digest of a named set of tensors, sorted by UTF-8 name (DESIGN §3).

    Buffers are hashed in place: no concatenated copy of the model is made.
    """
    h = hashlib.sha256()
    h.update(DIGEST_MAGIC)
    names = sorted(arrays, key=lambda n: n.encode("utf-8"))
    h.update(struct.pack("<I", len(names)))
    for name in names:
        array = np.asarray(arrays[name])
        if array.dtype.hasobject:
            raise FormatError(f"tensor {name!r} has object dtype")
        name_b = name.encode("utf-8")
        dtype_b = _dtype_str(array.dtype).encode("ascii")
        h.update(struct.pack("<I", len(name_b)))
        h.update(name_b)
        h.update(struct.pack("<I", len(dtype_b)))
        h.update(dtype_b)
        h.update(struct.pack("<I", array.ndim))
        for dim in array.shape:
            h.update(struct.pack("<Q", dim))
        h.update(struct.pack("<Q", array.nbytes))
        h.update(_le_bytes(array))
    return h.hexdigest()


_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_PRIVACY_FIELDS = ("delta_ppb", "epsilon_ppm", "max_grad_norm_ppm", "noise_multiplier_ppm", "sample_rate_ppm",
                   "steps")
_TRAINING_FIELDS = {"algorithm", "compression", "dp", "mu_ppm"}


def _int_field(obj: str, field: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """An integer field of a signed claim (``true`` is not an integer), within ``lo..hi``."""
    if type(value) is not int:
        raise FormatError(f"{obj} {field} must be an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise FormatError(f"{obj} {field} must be from {lo} to {hi}")
    return value


@dataclass(frozen=True)
class PrivacyClaim:
    """The DP-SGD parameters a participant trained with in one round, and the ε its own
    accountant computed for that round (integers: millionths, δ in billionths).

    Parsing checks types and ranges only; whether ε follows from the other parameters,
    and whether it fits the federation's budget, is decided by the coordinator and the
    auditor (a negative ε parses, and is rejected there as ``bad_privacy_claim``).
    """

    noise_multiplier_ppm: int
    max_grad_norm_ppm: int
    sample_rate_ppm: int
    steps: int
    delta_ppb: int
    epsilon_ppm: int

    def __post_init__(self) -> None:
        # σ above 1000 is no training at all; the bound also keeps the accountant's work per claim small.
        _int_field("dp", "noise_multiplier_ppm", self.noise_multiplier_ppm, 0, 1000 * PPM)
        _int_field("dp", "max_grad_norm_ppm", self.max_grad_norm_ppm, 1, 10**12)
        _int_field("dp", "sample_rate_ppm", self.sample_rate_ppm, 1, PPM)
        _int_field("dp", "steps", self.steps, 1, 10**9)
        _int_field("dp", "delta_ppb", self.delta_ppb, 1, 10**9 - 1)
        _int_field("dp", "epsilon_ppm", self.epsilon_ppm, -(10**15), 10**15)

    def to_dict(self) -> dict[str, int]:
        """The claim as signed."""
        return {field: getattr(self, field) for field in _PRIVACY_FIELDS}

    @classmethod
    def from_dict(cls, obj: object) -> PrivacyClaim:
        """Parse the ``dp`` object of a training claim (exactly its fields)."""
        if not isinstance(obj, dict) or set(obj) != set(_PRIVACY_FIELDS):
            raise FormatError(f"training dp must be an object with exactly the fields {list(_PRIVACY_FIELDS)}")
        return cls(**obj)


@dataclass(frozen=True)
class TrainingClaim:
    """How a participant says it trained its update (manifest version 2): the algorithm
    and its parameter (FedProx μ in millionths, 0 for plain FedAvg), the compression of
    what it sent, and its DP-SGD parameters and ε when differential privacy is on."""

    algorithm: str = "fedavg"
    mu_ppm: int = 0
    compression: str = "none"
    dp: PrivacyClaim | None = None

    def __post_init__(self) -> None:
        for field in ("algorithm", "compression"):
            value = getattr(self, field)
            if not isinstance(value, str) or _NAME.fullmatch(value) is None:
                raise FormatError(f"training {field} must match {_NAME.pattern}")
        _int_field("training", "mu_ppm", self.mu_ppm, 0, 10**12)
        if self.dp is not None and not isinstance(self.dp, PrivacyClaim):
            raise FormatError("training dp must be a privacy claim or null")

    def to_dict(self) -> dict[str, Any]:
        """The claim as signed."""
        return {"algorithm": self.algorithm, "compression": self.compression,
                "dp": None if self.dp is None else self.dp.to_dict(), "mu_ppm": self.mu_ppm}

    @classmethod
    def from_dict(cls, obj: object) -> TrainingClaim:
        """Parse a manifest's ``training`` object (exactly its fields)."""
        if not isinstance(obj, dict) or set(obj) != _TRAINING_FIELDS:
            raise FormatError(f"training must be an object with exactly the fields {sorted(_TRAINING_FIELDS)}")
        dp = obj["dp"]
        return cls(algorithm=obj["algorithm"], mu_ppm=obj["mu_ppm"], compression=obj["compression"],
                   dp=None if dp is None else PrivacyClaim.from_dict(dp))


PLAIN_TRAINING = TrainingClaim()
"""What a version 1 manifest (no ``training`` object) means: FedAvg, sent uncompressed, no DP."""
_V1_FIELDS = {"base_model", "federation", "num_examples", "participant", "round", "update", "v"}


@dataclass(frozen=True)
class Manifest:
    """What a participant signs: its update bound to a federation, round and base model.

    Version 2 adds ``training``, the participant's signed claim of how it trained
    (:class:`TrainingClaim`); version 1, without it, still verifies and means
    :data:`PLAIN_TRAINING`.
    """

    federation: str
    participant: str
    round: int
    base_model: str
    update: str
    num_examples: int
    v: int = MANIFEST_VERSION
    training: TrainingClaim | None = None

    def __post_init__(self) -> None:
        validate_id(self.federation, "federation")
        validate_id(self.participant, "participant")
        for field, value in (("round", self.round), ("num_examples", self.num_examples)):
            if type(value) is not int or value < 0:
                raise FormatError(f"{field} must be a non-negative integer")
        for field, value in (("base_model", self.base_model), ("update", self.update)):
            if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
                raise FormatError(f"{field} must be 64 lowercase hex characters")
        if type(self.v) is not int or self.v not in MANIFEST_VERSIONS:
            raise FormatError(f"manifest version {self.v!r} is not supported")
        if (self.v == 1) != (self.training is None):
            raise FormatError("a version 2 manifest carries a training claim, a version 1 manifest none")
        if self.training is not None and not isinstance(self.training, TrainingClaim):
            raise FormatError("manifest training must be a training claim")

    def claim(self) -> TrainingClaim:
        """The signed training claim (plain FedAvg for a version 1 manifest)."""
        return self.training if self.training is not None else PLAIN_TRAINING

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a plain dict (the signed fields, nothing else)."""
        fields = {
            "base_model": self.base_model,
            "federation": self.federation,
            "num_examples": self.num_examples,
            "participant": self.participant,
            "round": self.round,
            "update": self.update,
            "v": self.v,
        }
        if self.training is not None:
            fields["training"] = self.training.to_dict()
        return fields

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes that are signed and hashed."""
        return canonical_json(self.to_dict())

    def hash(self) -> str:
        """``manifest_hash``: SHA-256 hex of the canonical bytes."""
        return sha256_hex(self.to_bytes())

    @classmethod
    def parse(cls, data: str | bytes) -> Manifest:
        """Parse and validate a manifest; it must already be in canonical form.

        A manifest whose bytes differ from their canonical re-serialisation is refused,
        so that the signed bytes and the recorded fields can never disagree.
        """
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise FormatError(f"manifest is longer than {MAX_MANIFEST_BYTES} bytes")
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"manifest is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise FormatError("manifest must be a JSON object")
        expected = _V1_FIELDS | {"training"} if obj.get("v") == 2 else _V1_FIELDS
        if set(obj) != expected:
            missing = sorted(expected - set(obj))
            extra = sorted(set(obj) - expected)
            raise FormatError(f"manifest fields differ (missing {missing}, unexpected {extra})")
        if "training" in obj:
            obj["training"] = TrainingClaim.from_dict(obj["training"])
        manifest = cls(**obj)
        if manifest.to_bytes() != raw:
            raise FormatError("manifest is not in canonical form")
        return manifest


EVALUATION_KIND = "evaluation"
# Log-loss above 100 nats per example is a broken model, not a measurement.
MAX_LOG_LOSS_PPM = 100 * PPM
_EVALUATION_FIELDS = {"federation", "participant", "round", "model", "num_examples", "metrics", "kind", "v"}
_METRIC_FIELDS = {"accuracy_ppm", "auc_ppm", "log_loss_ppm"}


@dataclass(frozen=True)
class EvaluationManifest:
    """What a participant signs about a global model it evaluated on its local hold-out.

    ``model`` is the digest of the global model committed in ``round`` (G_{r+1}); the
    metrics are integers in millionths. ``auc_ppm`` is ``None`` when the hold-out holds a
    single class (AUC is undefined then, and a made-up 0.5 would be signed as a measurement).
    """

    federation: str
    participant: str
    round: int
    model: str
    num_examples: int
    accuracy_ppm: int
    auc_ppm: int | None
    log_loss_ppm: int
    v: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        validate_id(self.federation, "federation")
        validate_id(self.participant, "participant")
        if type(self.round) is not int or self.round < 1:
            raise FormatError("evaluation round must be a positive integer")
        if type(self.num_examples) is not int or self.num_examples < 1:
            raise FormatError("evaluation num_examples must be a positive integer")
        if not isinstance(self.model, str) or _HEX64.fullmatch(self.model) is None:
            raise FormatError("evaluation model must be 64 lowercase hex characters")
        bounds = (("accuracy_ppm", self.accuracy_ppm, PPM), ("auc_ppm", self.auc_ppm, PPM),
                  ("log_loss_ppm", self.log_loss_ppm, MAX_LOG_LOSS_PPM))
        for field, value, hi in bounds:
            if field == "auc_ppm" and value is None:
                continue
            if type(value) is not int or not 0 <= value <= hi:
                raise FormatError(f"evaluation {field} must be an integer from 0 to {hi}")
        if type(self.v) is not int or self.v != MANIFEST_VERSION:
            raise FormatError(f"evaluation manifest version {self.v!r} is not supported")

    def metrics(self) -> dict[str, int | None]:
        """The signed metrics (integers in millionths)."""
        return {"accuracy_ppm": self.accuracy_ppm, "auc_ppm": self.auc_ppm, "log_loss_ppm": self.log_loss_ppm}

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a plain dict (the signed fields, nothing else)."""
        return {
            "federation": self.federation,
            "kind": EVALUATION_KIND,
            "metrics": self.metrics(),
            "model": self.model,
            "num_examples": self.num_examples,
            "participant": self.participant,
            "round": self.round,
            "v": self.v,
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes that are signed and hashed."""
        return canonical_json(self.to_dict())

    def hash(self) -> str:
        """SHA-256 hex of the canonical bytes."""
        return sha256_hex(self.to_bytes())

    @classmethod
    def parse(cls, data: str | bytes) -> EvaluationManifest:
        """Parse and validate an evaluation manifest; it must already be canonical."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise FormatError(f"evaluation manifest is longer than {MAX_MANIFEST_BYTES} bytes")
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"evaluation manifest is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise FormatError("evaluation manifest must be a JSON object")
        if set(obj) != _EVALUATION_FIELDS:
            missing = sorted(_EVALUATION_FIELDS - set(obj))
            extra = sorted(set(obj) - _EVALUATION_FIELDS)
            raise FormatError(f"evaluation manifest fields differ (missing {missing}, unexpected {extra})")
        if obj["kind"] != EVALUATION_KIND:
            raise FormatError(f"manifest kind {obj['kind']!r} is not {EVALUATION_KIND!r}")
        metrics = obj["metrics"]
        if not isinstance(metrics, dict) or set(metrics) != _METRIC_FIELDS:
            raise FormatError(f"evaluation metrics must have exactly the fields {sorted(_METRIC_FIELDS)}")
        fields = {k: v for k, v in obj.items() if k not in ("kind", "metrics")}
        manifest = cls(**fields, **metrics)
        if manifest.to_bytes() != raw:
            raise FormatError("evaluation manifest is not in canonical form")
        return manifest


def _refuse_constant(name: str) -> Any:
    raise FormatError(f"manifest contains {name}")


def normalize_low_s(der: bytes) -> bytes:
    """Return the low-S form of a DER ECDSA P-256 signature."""
    r, s = decode_dss_signature(der)
    if s > _HALF_ORDER:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def sign(data: bytes, private_key: ec.EllipticCurvePrivateKey) -> str:
    """ECDSA-P256-SHA256 over ``data``: DER, low-S, base64 (DESIGN §3)."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP256R1
    ):
        raise FormatError("signing key must be an ECDSA P-256 private key")
    der = private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(normalize_low_s(der)).decode("ascii")


def public_key_of(
    key_or_cert: ec.EllipticCurvePublicKey | x509.Certificate | str | bytes,
) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a key, a certificate, or a PEM certificate."""
    if isinstance(key_or_cert, (str, bytes)):
        pem = key_or_cert.encode("ascii") if isinstance(key_or_cert, str) else key_or_cert
        try:
            key_or_cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise FormatError(f"not a PEM certificate: {exc}") from exc
    key = key_or_cert.public_key() if isinstance(key_or_cert, x509.Certificate) else key_or_cert
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise FormatError("key is not an ECDSA P-256 public key")
    return key


def verify(
    data: bytes,
    signature_b64: str,
    key_or_cert: ec.EllipticCurvePublicKey | x509.Certificate | str | bytes,
) -> None:
    """Verify a DESIGN §3 signature; raise :class:`SignatureError` with a reason code.

    High-S signatures are refused (``high_s``) even though ECDSA would accept them.
    """
    key = public_key_of(key_or_cert)
    if not isinstance(signature_b64, str) or len(signature_b64) > MAX_SIGNATURE_B64:
        raise SignatureError("bad_signature", "signature is not a base64 string of at most 96 characters")
    try:
        der = base64.b64decode(signature_b64.encode("ascii"), validate=True)
        r, s = decode_dss_signature(der)
    except (binascii.Error, ValueError, UnicodeEncodeError, AttributeError) as exc:
        raise SignatureError("bad_signature", f"signature is not base64 DER: {exc}") from exc
    # One signature, one spelling: base64 that decodes but is not how the bytes encode
    # (padding bits set, padding missing) would let the recorded string vary for one
    # signature, and so would re-encoded DER.
    if base64.b64encode(der).decode("ascii") != signature_b64:
        raise SignatureError("bad_signature", "signature is not canonical base64")
    if encode_dss_signature(r, s) != der:
        raise SignatureError("bad_signature", "signature is not canonical DER")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise SignatureError("bad_signature", "signature values out of range")
    if s > _HALF_ORDER:
        raise SignatureError("high_s", "signature is not in low-S form")
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError("bad_signature", "signature does not verify") from exc
