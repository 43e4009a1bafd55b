"""The wire form of an update under the policy's compression (DESIGN §4.5).

Under ``"int8"`` a participant sends, for every tensor ``n`` of the base model,

* ``n`` — an int8 array of the base tensor's shape, ``q = clip(rint(delta / scale), −127, 127)``
  with ``delta = update − base`` in float64 (``rint`` rounds half to even), and
* ``n + "#scale"`` — a 0-d float32 array, ``scale = max|delta| / 127`` (0 when the
  tensor did not change).

That dict is what is signed and hashed (:func:`ledger.formats.update_digest`) and what
the artifact store keeps: the digest covers exactly the bytes that travelled. The
coordinator and the auditor both expand it with :func:`decompress`, one fixed formula in
float64, so they aggregate the same dense tensors. About a quarter of float32's bytes.

Under ``"none"`` the update travels as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["SCALE_SUFFIX", "SCHEMES", "CompressionError", "compress", "decompress", "wire_bytes"]

SCHEMES = ("none", "int8")
SCALE_SUFFIX = "#scale"
_QMAX = 127


class CompressionError(ValueError):
    """What was sent is not a valid compressed update of the base model (``detail`` says why)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _names(arrays: Mapping[str, object]) -> list[str]:
    return sorted(arrays, key=lambda n: n.encode("utf-8"))


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise CompressionError(f"unknown compression {scheme!r} (known: {', '.join(SCHEMES)})")


def _check_base(base: Mapping[str, np.ndarray]) -> None:
    for name in _names(base):
        if name.endswith(SCALE_SUFFIX):
            # Its scale would be called name + "#scale#scale" and the wire names could collide.
            raise CompressionError(f"tensor {name!r}: a base tensor name cannot end in {SCALE_SUFFIX!r}")


def compress(update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], scheme: str) -> dict[str, np.ndarray]:
    """The wire form of ``update`` (tensors of the base model's names) under ``scheme``.

    ``"none"`` returns ``update`` unchanged; ``"int8"`` quantises each tensor's change from
    ``base`` as the module docstring says. Refuses missing or extra tensors and changes
    that are not finite or too large for a float32 scale.
    """
    _check_scheme(scheme)
    if scheme == "none":
        return dict(update)
    _check_base(base)
    missing = [n for n in _names(base) if n not in update]
    extra = [n for n in _names(update) if n not in base]
    if missing or extra:
        raise CompressionError(f"update tensors differ from the base model (missing {missing}, extra {extra})")
    sent: dict[str, np.ndarray] = {}
    for name in _names(base):
        ref = np.asarray(base[name])
        tensor = np.asarray(update[name])
        if tensor.shape != ref.shape:
            raise CompressionError(f"tensor {name!r}: shape {tensor.shape}, the base model's is {ref.shape}")
        delta = tensor.astype(np.float64) - ref.astype(np.float64)
        if not np.all(np.isfinite(delta)):
            raise CompressionError(f"tensor {name!r}: the change has NaN or infinite values")
        largest = float(np.max(np.abs(delta))) if delta.size else 0.0
        scale = np.float32(largest / _QMAX)
        if not np.isfinite(scale):
            raise CompressionError(f"tensor {name!r}: a change of {largest:.3g} does not fit a float32 scale")
        if scale > 0:
            # Quantise by the float32 scale that is sent, so decoding undoes exactly this division.
            q = np.clip(np.rint(delta / np.float64(scale)), -_QMAX, _QMAX).astype(np.int8)
        else:
            q = np.zeros(ref.shape, np.int8)
        sent[name] = np.ascontiguousarray(q)
        sent[name + SCALE_SUFFIX] = np.asarray(scale, dtype=np.float32).reshape(())
    return sent


def decompress(sent: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], scheme: str) -> dict[str, np.ndarray]:
    """The dense update that ``sent`` encodes under ``scheme``, in the base model's dtypes.

    ``"int8"``: ``(base + q · scale).astype(base.dtype)``, computed in float64. Raises
    :class:`CompressionError` naming the tensor for missing or extra names, a ``q`` that
    is not int8 of the base tensor's shape or holds −128, and a scale that is not a 0-d
    float32 array or is NaN, infinite or negative. ``"none"`` returns ``sent`` unchanged
    (its names and shapes are the coordinator's checks).
    """
    _check_scheme(scheme)
    if scheme == "none":
        return dict(sent)
    _check_base(base)
    expected = {n for n in base} | {n + SCALE_SUFFIX for n in base}
    missing = [n for n in _names({n: None for n in expected}) if n not in sent]
    if missing:
        raise CompressionError(f"int8 update lacks {', '.join(repr(n) for n in missing)}")
    extra = [n for n in _names(sent) if n not in expected]
    if extra:
        raise CompressionError(f"int8 update has tensors the base model has not: {', '.join(repr(n) for n in extra)}")
    dense: dict[str, np.ndarray] = {}
    for name in _names(base):
        ref = np.asarray(base[name])
        q = sent[name]
        if not isinstance(q, np.ndarray) or q.dtype != np.int8:
            raise CompressionError(f"tensor {name!r}: {_what(q)}, expected int8")
        if q.shape != ref.shape:
            raise CompressionError(f"tensor {name!r}: shape {q.shape}, the base model's is {ref.shape}")
        if q.size and int(q.min()) < -_QMAX:
            raise CompressionError(f"tensor {name!r}: holds -128, outside -127..127")
        scale = sent[name + SCALE_SUFFIX]
        if not isinstance(scale, np.ndarray) or scale.dtype != np.float32 or scale.shape != ():
            raise CompressionError(f"tensor {name!r}: scale is {_what(scale)}, expected a 0-d float32 array")
        value = float(scale)
        if not np.isfinite(value):
            raise CompressionError(f"tensor {name!r}: scale is {value}")
        if value < 0:
            raise CompressionError(f"tensor {name!r}: scale is {value:g} (negative)")
        restored = ref.astype(np.float64) + q.astype(np.float64) * np.float64(scale)
        dense[name] = np.ascontiguousarray(restored.astype(ref.dtype))
    return dense


def _what(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, np.generic):
        return f"a numpy {value.dtype} scalar"
    return type(value).__name__


def wire_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """The bytes of tensor data in ``arrays`` (the sum of ``nbytes``), for the benchmark."""
    return sum(int(np.asarray(a).nbytes) for a in arrays.values())
