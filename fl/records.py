"""Conversions between Flower records and the named numpy tensors the formats hash."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["to_arrays", "to_record"]


def to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of an ArrayRecord (raises ValueError/TypeError if undecodable)."""
    return {name: array.numpy() for name, array in record.items()}


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding ``arrays`` under their names, in name order."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(arrays[name])) for name in sorted(arrays)}
    )
