"""int8-compressed updates: what is signed is what is decoded, the same way by everybody."""

from __future__ import annotations

import numpy as np
import pytest

from ledger.compression import CompressionError, compress, decompress, wire_bytes
from ledger.formats import update_digest


def model(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = {"hidden.weight": rng.normal(size=(64, 32)).astype(np.float32),
            "hidden.bias": rng.normal(size=64).astype(np.float32),
            "out.weight": rng.normal(size=(1, 64)).astype(np.float32),
            "out.bias": np.zeros(1, np.float32)}
    update = {n: (t + rng.normal(scale=0.05, size=t.shape)).astype(np.float32) for n, t in base.items()}
    update["out.bias"] = base["out.bias"].copy()  # a tensor that did not change
    return base, update


def test_int8_form_is_int8_tensors_and_float32_scalar_scales():
    base, update = model()
    sent = compress(update, base, "int8")
    assert sorted(sent) == sorted([*base, *(n + "#scale" for n in base)])
    for name, tensor in base.items():
        assert sent[name].dtype == np.int8 and sent[name].shape == tensor.shape
        assert sent[name + "#scale"].dtype == np.float32 and sent[name + "#scale"].shape == ()
        assert np.abs(sent[name].astype(np.int16)).max() <= 127
    assert float(sent["out.bias#scale"]) == 0.0 and not sent["out.bias"].any()
    # The largest change maps to ±127: the scale is max|delta| / 127.
    delta = update["hidden.weight"].astype(np.float64) - base["hidden.weight"]
    assert np.isclose(float(sent["hidden.weight#scale"]), np.abs(delta).max() / 127, rtol=1e-7)
    assert np.abs(sent["hidden.weight"].astype(np.int16)).max() == 127


def test_round_trip_error_is_at_most_half_a_step_per_element():
    base, update = model()
    sent = compress(update, base, "int8")
    dense = decompress(sent, base, "int8")
    for name, tensor in base.items():
        assert dense[name].dtype == tensor.dtype and dense[name].shape == tensor.shape
        scale = float(sent[name + "#scale"])
        error = np.abs(dense[name].astype(np.float64) - update[name].astype(np.float64))
        # Half a quantisation step, plus the float32 rounding of the decoded value.
        assert error.max() <= scale / 2 + np.abs(update[name]).max() * 2**-23


def test_decoding_is_the_documented_float64_formula():
    base, update = model(1)
    sent = compress(update, base, "int8")
    dense = decompress(sent, base, "int8")
    name = "hidden.weight"
    expected = (base[name].astype(np.float64)
                + sent[name].astype(np.float64) * np.float64(sent[name + "#scale"])).astype(np.float32)
    np.testing.assert_array_equal(dense[name], expected)


def test_digest_of_the_compressed_form_is_stable():
    base, update = model(2)
    first, second = compress(update, base, "int8"), compress(dict(reversed(update.items())), base, "int8")
    assert update_digest(first) == update_digest(second)
    assert update_digest(first) != update_digest(update)
    assert update_digest(decompress(first, base, "int8")) == update_digest(decompress(second, base, "int8"))


def test_compressed_bytes_are_about_a_quarter_of_float32():
    base, update = model()
    ratio = wire_bytes(compress(update, base, "int8")) / wire_bytes(update)
    assert 0.24 < ratio < 0.26


def test_scheme_none_passes_the_update_through():
    base, update = model()
    assert compress(update, base, "none") == update
    assert decompress(update, base, "none") == update
    with pytest.raises(CompressionError, match="unknown compression 'zip'"):
        decompress(update, base, "zip")


def sent_form() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    base, update = model()
    return base, compress(update, base, "int8")


@pytest.mark.parametrize(("change", "detail"), [
    (lambda s: s.pop("out.weight"), "lacks 'out.weight'"),
    (lambda s: s.pop("out.weight#scale"), "lacks 'out.weight#scale'"),
    (lambda s: s.update({"extra": np.zeros(1, np.int8)}), "has tensors the base model has not: 'extra'"),
    (lambda s: s.update({"out.weight": s["out.weight"].astype(np.int16)}), "tensor 'out.weight': int16[1, 64], expected int8"),
    (lambda s: s.update({"out.weight": s["out.weight"].reshape(64)}), "tensor 'out.weight': shape (64,)"),
    (lambda s: s.update({"out.weight": np.full((1, 64), -128, np.int8)}), "tensor 'out.weight': holds -128"),
    (lambda s: s.update({"out.weight#scale": np.float64(0.1)}), "tensor 'out.weight': scale is a numpy float64 scalar"),
    (lambda s: s.update({"out.weight#scale": np.array([0.1], np.float32)}), "scale is float32[1]"),
    (lambda s: s.update({"out.weight#scale": np.array(0.1, np.float64)}), "scale is float64[]"),
    (lambda s: s.update({"out.weight#scale": 0.1}), "scale is float, expected"),
    (lambda s: s.update({"out.weight#scale": np.array(np.nan, np.float32)}), "tensor 'out.weight': scale is nan"),
    (lambda s: s.update({"out.weight#scale": np.array(np.inf, np.float32)}), "tensor 'out.weight': scale is inf"),
    (lambda s: s.update({"out.weight#scale": np.array(-0.5, np.float32)}), "scale is -0.5 (negative)"),
])
def test_every_malformed_int8_update_is_refused_with_a_precise_detail(change, detail):
    base, sent = sent_form()
    change(sent)
    with pytest.raises(CompressionError) as caught:
        decompress(sent, base, "int8")
    assert detail in caught.value.detail and str(caught.value) == caught.value.detail
    assert isinstance(caught.value, ValueError)


def test_compress_refuses_what_it_cannot_encode():
    base, update = model()
    with pytest.raises(CompressionError, match="missing \\['out.bias'\\]"):
        compress({n: t for n, t in update.items() if n != "out.bias"}, base, "int8")
    bad = dict(update, **{"out.weight": np.full((1, 64), np.nan, np.float32)})
    with pytest.raises(CompressionError, match="tensor 'out.weight': the change has NaN"):
        compress(bad, base, "int8")
