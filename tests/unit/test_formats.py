"""Canonical formats (DESIGN §3): test vectors another language can re-implement."""

from __future__ import annotations

import base64
import hashlib
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ledger.formats import (
    P256_ORDER,
    EvaluationManifest,
    FormatError,
    Manifest,
    PrivacyClaim,
    SignatureError,
    TrainingClaim,
    canonical_json,
    sign,
    update_digest,
    verify,
)

# Frozen test vectors: if one of these changes, every auditor's re-implementation breaks.
VECTOR_1 = {"w": np.arange(6, dtype="<f4").reshape(2, 3), "b": np.array([1.5, -2.0], dtype="<f4")}
VECTOR_1_DIGEST = "a6b01506b5447f73e6746b6b4976f90e4c3cc3837b75968d03c18d1ba9d5fbb7"
EMPTY_DIGEST = "f4202cee66c2482edde3c194ee77ab07529a364db70e3a0adfcac1aed2038705"
MANIFEST_TEXT = (
    '{"base_model":"' + "0" * 64 + '","federation":"demo-fed","num_examples":1234,'
    '"participant":"bank-a","round":7,"update":"' + "f" * 64 + '","v":1}'
)
MANIFEST_HASH = "c5ea0d6e9604ade4c24647bc02f2f8836a9ad5549861550e158fa4d0d4bcf083"
# Version 2: the same fields plus the signed training claim (FedProx, int8, DP-SGD).
MANIFEST_V2_TEXT = (
    '{"base_model":"' + "0" * 64 + '","federation":"demo-fed","num_examples":1234,'
    '"participant":"bank-a","round":7,"training":{"algorithm":"fedprox","compression":"int8",'
    '"dp":{"delta_ppb":10000,"epsilon_ppm":990600,"max_grad_norm_ppm":1000000,"noise_multiplier_ppm":1234567,'
    '"sample_rate_ppm":76923,"steps":26},"mu_ppm":10000},"update":"' + "f" * 64 + '","v":2}'
)
MANIFEST_V2_HASH = "d4e8984a5ef7bf13dc4dac96f0c001d577f016145e602c4e30756b0f48fcb8f2"
MANIFEST_V2_PLAIN_TEXT = (
    '{"base_model":"' + "0" * 64 + '","federation":"demo-fed","num_examples":1234,'
    '"participant":"bank-a","round":7,"training":{"algorithm":"fedavg","compression":"none","dp":null,'
    '"mu_ppm":0},"update":"' + "f" * 64 + '","v":2}'
)
MANIFEST_V2_PLAIN_HASH = "4eaa490cb8cadc81e394ce33be3f8d28995e3a5986540d1841c5f4708a1b54be"


def reference_digest(arrays: dict[str, np.ndarray]) -> str:
    """An independent, deliberately naive implementation: one concatenated buffer."""
    out = b"FLU1" + struct.pack("<I", len(arrays))
    for name in sorted(arrays, key=lambda n: n.encode("utf-8")):
        a = np.asarray(arrays[name])
        a = np.array(a, dtype=a.dtype.newbyteorder("<"), order="C")
        nb, dt = name.encode("utf-8"), a.dtype.str.encode()
        out += struct.pack("<I", len(nb)) + nb + struct.pack("<I", len(dt)) + dt
        out += struct.pack("<I", a.ndim) + b"".join(struct.pack("<Q", d) for d in a.shape)
        out += struct.pack("<Q", a.nbytes) + a.tobytes()
    return hashlib.sha256(out).hexdigest()


def test_digest_matches_the_frozen_test_vectors():
    assert update_digest(VECTOR_1) == VECTOR_1_DIGEST
    assert update_digest({}) == EMPTY_DIGEST


def test_digest_matches_a_naive_reimplementation_on_awkward_tensors():
    arrays = {
        "é-utf8": np.array([1, 2, 3], dtype="<i8"),
        "a": np.zeros((0, 2), dtype="<f8"),
        "scalar": np.array(3.25, dtype="<f4"),
        "big-endian": np.arange(4, dtype=">f4"),
        "strided": np.arange(12, dtype="<f4").reshape(3, 4)[:, ::2],
    }
    assert update_digest(arrays) == reference_digest(arrays)


def test_digest_ignores_insertion_order_but_not_names_values_dtypes_or_shapes():
    base = update_digest(VECTOR_1)
    assert update_digest(dict(reversed(list(VECTOR_1.items())))) == base
    assert update_digest({"w2": VECTOR_1["w"], "b": VECTOR_1["b"]}) != base
    changed = {k: v.copy() for k, v in VECTOR_1.items()}
    changed["b"][0] += 1e-6
    assert update_digest(changed) != base
    assert update_digest({"w": VECTOR_1["w"].astype("<f8"), "b": VECTOR_1["b"]}) != base
    assert update_digest({"w": VECTOR_1["w"].reshape(3, 2), "b": VECTOR_1["b"]}) != base


def test_big_endian_tensors_hash_like_their_little_endian_twins():
    assert update_digest({"x": np.arange(4, dtype=">f4")}) == update_digest({"x": np.arange(4, dtype="<f4")})


def test_manifest_bytes_and_hash_match_the_frozen_vector():
    m = Manifest(federation="demo-fed", participant="bank-a", round=7, base_model="0" * 64,
                 update="f" * 64, num_examples=1234)
    assert m.to_bytes().decode() == MANIFEST_TEXT
    assert m.hash() == MANIFEST_HASH
    assert Manifest.parse(MANIFEST_TEXT) == m


def test_version_2_manifests_match_their_frozen_vectors_and_version_1_still_parses():
    claim = TrainingClaim(algorithm="fedprox", mu_ppm=10_000, compression="int8",
                          dp=PrivacyClaim(noise_multiplier_ppm=1_234_567, max_grad_norm_ppm=1_000_000,
                                          sample_rate_ppm=76_923, steps=26, delta_ppb=10_000, epsilon_ppm=990_600))
    m = Manifest(federation="demo-fed", participant="bank-a", round=7, base_model="0" * 64,
                 update="f" * 64, num_examples=1234, v=2, training=claim)
    assert m.to_bytes().decode() == MANIFEST_V2_TEXT
    assert hashlib.sha256(MANIFEST_V2_TEXT.encode()).hexdigest() == m.hash() == MANIFEST_V2_HASH
    assert Manifest.parse(MANIFEST_V2_TEXT) == m
    plain = Manifest.parse(MANIFEST_V2_PLAIN_TEXT)
    assert plain.hash() == MANIFEST_V2_PLAIN_HASH and plain.claim() == TrainingClaim()
    assert Manifest.parse(MANIFEST_TEXT).claim() == TrainingClaim()  # v1 means plain FedAvg


@pytest.mark.parametrize(
    "text",
    [
        MANIFEST_V2_TEXT.replace('"v":2', '"v":1'),  # a v1 manifest with a claim
        MANIFEST_V2_TEXT.replace('"mu_ppm":10000', '"mu_ppm":-1'),
        MANIFEST_V2_TEXT.replace('"mu_ppm":10000', '"mu_ppm":0.01'),
        MANIFEST_V2_TEXT.replace('"steps":26', '"steps":26,"extra":1'),
        MANIFEST_V2_TEXT.replace('"epsilon_ppm":990600', '"epsilon_ppm":"0.99"'),
        MANIFEST_V2_TEXT.replace('"epsilon_ppm":990600', '"epsilon_ppm":NaN'),
        MANIFEST_V2_TEXT.replace('"sample_rate_ppm":76923', '"sample_rate_ppm":0'),
        MANIFEST_V2_TEXT.replace('"algorithm":"fedprox"', '"algorithm":"FedProx"'),
        MANIFEST_V2_TEXT.replace('"noise_multiplier_ppm":1234567', '"noise_multiplier_ppm":1000000001'),
    ],
)
def test_malformed_training_claims_are_refused(text):
    with pytest.raises(FormatError):
        Manifest.parse(text)


def test_canonical_json_sorts_keys_keeps_utf8_and_refuses_nan():
    assert canonical_json({"b": "é", "a": [1, 2.5, True, None]}) == '{"a":[1,2.5,true,null],"b":"é"}'.encode()
    with pytest.raises(FormatError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    "text",
    [
        MANIFEST_TEXT.replace(',"v":1', ""),  # field missing
        MANIFEST_TEXT.replace('"v":1', '"v":1,"x":2'),  # extra field
        MANIFEST_TEXT.replace('"round":7', '"round":7.0'),  # float round
        MANIFEST_TEXT.replace('"round":7', '"round":-1'),
        MANIFEST_TEXT.replace("bank-a", "Bank_A"),  # id pattern
        MANIFEST_TEXT.replace('"v":1', '"v":2'),
        MANIFEST_TEXT.replace(":", ": "),  # not canonical whitespace
        "[1,2]",
        "not json",
    ],
)
def test_malformed_manifests_are_refused(text):
    with pytest.raises(FormatError):
        Manifest.parse(text)


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


def test_signatures_are_low_s_der_and_verify(key):
    data = MANIFEST_TEXT.encode()
    for _ in range(20):
        sig = sign(data, key)
        _, s = decode_dss_signature(base64.b64decode(sig))
        assert s <= P256_ORDER // 2
        verify(data, sig, key.public_key())


def test_high_s_twin_of_a_valid_signature_is_rejected_as_high_s(key):
    data = MANIFEST_TEXT.encode()
    r, s = decode_dss_signature(base64.b64decode(sign(data, key)))
    twin = base64.b64encode(encode_dss_signature(r, P256_ORDER - s)).decode()
    with pytest.raises(SignatureError) as err:
        verify(data, twin, key.public_key())
    assert err.value.reason == "high_s"


def test_signature_over_other_bytes_or_by_other_key_is_bad(key):
    data = MANIFEST_TEXT.encode()
    sig = sign(data, key)
    with pytest.raises(SignatureError) as err:
        verify(data + b" ", sig, key.public_key())
    assert err.value.reason == "bad_signature"
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureError):
        verify(data, sig, other.public_key())
    with pytest.raises(SignatureError):
        verify(data, "%%%not-base64", key.public_key())


def test_keys_on_other_curves_are_refused():
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(FormatError):
        sign(b"x", p384)
    with pytest.raises(FormatError):
        verify(b"x", "AAAA", p384.public_key())


# --- evaluation manifests ----------------------------------------------------------------

EVALUATION_TEXT = (
    '{"federation":"demo-fed","kind":"evaluation","metrics":{"accuracy_ppm":812345,"auc_ppm":767890,'
    '"log_loss_ppm":431002},"model":"' + "a" * 64 + '","num_examples":211,"participant":"bank-a",'
    '"round":7,"v":1}'
)


def _evaluation(**changes) -> EvaluationManifest:
    fields = dict(federation="demo-fed", participant="bank-a", round=7, model="a" * 64, num_examples=211,
                  accuracy_ppm=812_345, auc_ppm=767_890, log_loss_ppm=431_002)
    return EvaluationManifest(**{**fields, **changes})


def test_evaluation_manifest_canonical_bytes_and_hash_are_the_frozen_vector():
    manifest = _evaluation()

    assert manifest.to_bytes().decode() == EVALUATION_TEXT
    assert manifest.hash() == hashlib.sha256(EVALUATION_TEXT.encode()).hexdigest()
    assert EvaluationManifest.parse(EVALUATION_TEXT) == manifest


def test_an_evaluation_manifest_without_auc_round_trips_with_null():
    manifest = _evaluation(auc_ppm=None)

    assert b'"auc_ppm":null' in manifest.to_bytes()
    assert EvaluationManifest.parse(manifest.to_bytes()) == manifest


def test_an_evaluation_manifest_never_parses_as_an_update_manifest_and_vice_versa():
    with pytest.raises(FormatError, match="manifest fields differ"):
        Manifest.parse(EVALUATION_TEXT)
    with pytest.raises(FormatError, match="evaluation manifest fields differ"):
        EvaluationManifest.parse(MANIFEST_TEXT)
    # An update manifest given a kind is still not an evaluation manifest.
    with pytest.raises(FormatError):
        EvaluationManifest.parse(MANIFEST_TEXT[:-1] + ',"kind":"evaluation"}')


def test_a_signature_over_an_update_manifest_does_not_verify_an_evaluation_manifest(key):
    update_sig = sign(MANIFEST_TEXT.encode(), key)
    eval_sig = sign(EVALUATION_TEXT.encode(), key)

    with pytest.raises(SignatureError):
        verify(EVALUATION_TEXT.encode(), update_sig, key.public_key())
    with pytest.raises(SignatureError):
        verify(MANIFEST_TEXT.encode(), eval_sig, key.public_key())


def test_the_high_s_twin_of_an_evaluation_signature_is_refused(key):
    data = EVALUATION_TEXT.encode()
    r, s = decode_dss_signature(base64.b64decode(sign(data, key)))
    twin = base64.b64encode(encode_dss_signature(r, P256_ORDER - s)).decode()

    with pytest.raises(SignatureError) as err:
        verify(data, twin, key.public_key())
    assert err.value.reason == "high_s"


@pytest.mark.parametrize(
    "text",
    [
        EVALUATION_TEXT.replace('"kind":"evaluation"', '"kind":"update"'),
        EVALUATION_TEXT.replace("812345", "0.812345"),
        EVALUATION_TEXT.replace("812345", "1000001"),
        EVALUATION_TEXT.replace("431002", "-1"),
        EVALUATION_TEXT.replace("431002", "100000001"),
        EVALUATION_TEXT.replace("431002", "true"),
        EVALUATION_TEXT.replace('"num_examples":211', '"num_examples":0'),
        EVALUATION_TEXT.replace('"round":7', '"round":0'),
        EVALUATION_TEXT.replace(',"log_loss_ppm":431002', ''),
        EVALUATION_TEXT.replace('"auc_ppm":767890,', '"auc_ppm":767890,"f1_ppm":1,'),
        EVALUATION_TEXT.replace(",", ", "),
        EVALUATION_TEXT.replace("812345", "NaN"),
        EVALUATION_TEXT[:-1] + " " * 1100 + "}",
    ],
)
def test_malformed_or_out_of_bounds_evaluation_manifests_are_refused(text):
    with pytest.raises(FormatError):
        EvaluationManifest.parse(text)


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _padded_signature(data: bytes, key: ec.EllipticCurvePrivateKey) -> str:
    """A valid signature whose base64 ends in padding (DER of 70 or 71 bytes)."""
    while True:
        sig = sign(data, key)
        if sig.endswith("="):
            return sig


def _spellings(sig: str) -> dict[str, str]:
    """Other spellings of the same signature bytes, and near misses."""
    body = sig.rstrip("=")
    last = _B64_ALPHABET.index(body[-1])
    padding_bits = _B64_ALPHABET[last + 1]  # the unused low bits of the last character set
    garbled = body[:-1] + padding_bits + sig[len(body):]
    assert base64.b64decode(garbled) == base64.b64decode(sig)  # same bytes: this is the attack
    return {"padding bits set": garbled, "missing padding": body, "trailing newline": sig + "\n",
            "inner space": sig[:10] + " " + sig[10:]}


def test_a_signature_spelled_in_non_canonical_base64_is_refused(key):
    data = MANIFEST_TEXT.encode()
    sig = _padded_signature(data, key)
    verify(data, sig, key.public_key())
    for name, other in _spellings(sig).items():
        with pytest.raises(SignatureError) as err:
            verify(data, other, key.public_key())
        assert err.value.reason == "bad_signature", name


def test_the_contract_refuses_non_canonical_base64_signatures_too(tmp_path):
    from chaincode.certs import verify_p256_signature as _verify_signature
    from ledger.pki import certificate_pem, demo_identity

    private, cert, _ = demo_identity(tmp_path, "bank-a", "BankAMSP")
    pem = certificate_pem(cert)
    data = MANIFEST_TEXT.encode()
    sig = _padded_signature(data, private)
    assert _verify_signature(data, sig, pem) is None
    for name, other in _spellings(sig).items():
        assert _verify_signature(data, other, pem) is not None, name
