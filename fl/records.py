"""Conversions between Flower records and the named numpy tensors the formats hash."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["to_arrays", "to_record"]


def to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of an ArrayRecord.

    Raises TypeError when the record, or anything it decodes to, is not plain arrays
    (an ``.npz`` archive inside an Array decodes to something else); decoding errors of
    the bytes themselves propagate as numpy raises them.
    """
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"expected an ArrayRecord, got {type(record).__name__}")
    out = {}
    for name, array in record.items():
        value = array.numpy()
        if not isinstance(value, np.ndarray):
            raise TypeError(f"array {name!r} does not decode to an ndarray")
        out[name] = value
    return out


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding ``arrays`` under their names, in name order.

    0-d arrays (an int8 update's scales) stay 0-d: ``np.ascontiguousarray`` would make them 1-d.
    """
    return ArrayRecord(
        {name: Array(np.require(arrays[name], requirements="C")) for name in sorted(arrays)}
    )
